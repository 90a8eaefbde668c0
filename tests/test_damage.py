"""Tests for vemviz.damage: the seeded damage simulator."""

from __future__ import annotations

import numpy as np
import pytest

from vemviz.damage import KINDS, simulate_damage
from vemviz.errors import VemvizError


def _stack() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(60, 200, size=(6, 80, 100), dtype=np.uint8)


def test_every_kind_is_drawn_into_its_mask_only() -> None:
    stack = _stack()
    requests = list(enumerate(KINDS))
    damaged, mask = simulate_damage(stack, requests, seed=5)
    assert damaged.dtype == stack.dtype and mask.dtype == bool
    np.testing.assert_array_equal(damaged[~mask], stack[~mask])
    assert mask[0].all() and (damaged[0] == 0).all()  # missing: black
    band = mask[1]
    rows, cols = band.all(axis=1).sum(), band.all(axis=0).sum()
    assert band.mean() == pytest.approx(0.1, abs=0.01) and (rows or cols)
    assert set(np.unique(damaged[1][band])) <= {0, 255}  # black or saturated
    for z in (2, 3, 4):  # crack, blotch, fold: partial damage
        assert 0 < mask[z].mean() < 0.5
        assert damaged[z][mask[z]].mean() < stack[z][mask[z]].mean()  # darker
    assert not mask[5].any()


def test_same_seed_same_damage() -> None:
    stack = _stack()
    requests = [(1, "crack"), (3, "blotch"), (4, "band")]
    first = simulate_damage(stack, requests, seed=11)
    again = simulate_damage(stack, requests, seed=11)
    other = simulate_damage(stack, requests, seed=12)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    ("requests", "message"),
    [([(9, "band")], "outside the volume"), ([(0, "smudge")], "unknown damage kind")],
)
def test_bad_requests(requests: list[tuple[int, str]], message: str) -> None:
    with pytest.raises(VemvizError, match=message):
        simulate_damage(_stack(), requests)
