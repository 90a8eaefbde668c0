"""Shared fixtures: the phantom (cached per session) and the real data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from vemviz.phantom import Phantom, make_phantom

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real EM data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return make_phantom((24, 128, 128), (40.0, 8.0, 8.0), damaged_slices=(9,))
