"""Tests for vemviz.diffusion: the conditional sampler on a tiny random model, fine-tuning,
the shipped weights and diffusion filling through vemviz.restore."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from vemviz import diffusion  # noqa: E402
from vemviz.damage import simulate_damage  # noqa: E402
from vemviz.errors import VemvizError  # noqa: E402
from vemviz.restore import DiffusionOptions, fill_damage  # noqa: E402

TINY = {"block_out_channels": (8, 8, 8), "norm_num_groups": 4}


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = diffusion.build_model(**TINY)
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)  # non-zero: not just the flow base
    return model.eval()


def _cond(shape: tuple[int, int] = (30, 44)) -> np.ndarray:
    rng = np.random.default_rng(0)
    known = rng.uniform(-1, 1, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[10:20, 5:30] = True
    below = known + rng.normal(0, 0.1, shape).astype(np.float32)
    above = known + rng.normal(0, 0.1, shape).astype(np.float32)
    return diffusion.condition(known, mask, below, above, 0.5)


def test_sampler_shapes_known_pixels_and_seed() -> None:
    torch.set_num_threads(1)
    model, cond = _tiny_model(), _cond()
    first = diffusion.sample(model, cond, steps=4, samples=2, seed=3)
    again = diffusion.sample(model, cond, steps=4, samples=2, seed=3)
    other = diffusion.sample(model, cond, steps=4, samples=2, seed=4)
    mask = cond[1] > 0
    assert first.shape == cond.shape[1:] and first.dtype == np.float32  # 30x44: padded inside
    np.testing.assert_array_equal(first[~mask], cond[0][~mask])  # known pixels kept exactly
    np.testing.assert_array_equal(first, again)  # deterministic for a seed
    assert not np.allclose(first[mask], other[mask])  # and random across seeds
    assert np.isfinite(first).all()


def test_untrained_model_reproduces_the_flow_blend() -> None:
    model, cond = diffusion.build_model(**TINY).eval(), _cond()
    out = diffusion.sample(model, cond, steps=3)
    mask = cond[1] > 0
    blend = 0.5 * cond[2] + 0.5 * cond[3]
    np.testing.assert_allclose(out[mask], blend[mask], atol=1e-5)


def test_large_slices_are_sampled_in_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over TILE + 2 TILE_CONTEXT px the network runs tile by tile with context (bounded
    memory): known pixels stay exact, and the fill is nearly the whole-image one."""
    from vemviz.phantom import make_phantom

    raw = make_phantom((5, 160, 224), (40.0, 8.0, 8.0)).raw.numpy()
    stack = diffusion.normalise(raw, diffusion.intensity_range(raw))
    mask = np.zeros(stack.shape[1:], dtype=bool)
    mask[60:100, :] = True  # a band across the slice, cut by every tile column
    cond = diffusion.condition(stack[2], mask, stack[1], stack[3], 0.5)
    model = diffusion.load_model()
    whole = diffusion.sample(model, cond, steps=2)
    monkeypatch.setattr(diffusion, "TILE", 64)
    monkeypatch.setattr(diffusion, "TILE_CONTEXT", 16)
    tiled = diffusion.sample(model, cond, steps=2)
    np.testing.assert_array_equal(tiled[~mask], cond[0][~mask])
    blend = 0.5 * (cond[2] + cond[3])
    assert 0 < np.abs(tiled - whole)[mask].mean() < 0.25 * np.abs(whole - blend)[mask].mean()
    error = {name: np.abs(x - stack[2])[mask].mean() for name, x in (("w", whole), ("t", tiled))}
    assert error["t"] < 1.02 * error["w"]


def test_bad_conditioning_is_refused() -> None:
    known = np.zeros((8, 8), np.float32)
    with pytest.raises(VemvizError, match="differ in shape"):
        diffusion.condition(known, np.zeros((8, 9), bool), known, known, 0.5)
    with pytest.raises(VemvizError, match="at least 1 step"):
        diffusion.sample(_tiny_model(), _cond(), steps=0)


def test_noise_levels_favour_the_top_of_the_schedule_on_request() -> None:
    generator = torch.Generator().manual_seed(0)
    uniform = diffusion.noise_levels(20000, 1000, generator)
    high = diffusion.noise_levels(20000, 1000, generator, high_noise=0.5)
    top = 1000 * (1 - diffusion.HIGH_NOISE_BAND)
    assert int(uniform.min()) >= 0 and int(high.max()) <= 999
    assert abs(float((uniform >= top).float().mean()) - diffusion.HIGH_NOISE_BAND) < 0.01
    # half from the band, and the uniform half lands there 5 % of the time as well
    expected = 0.5 + 0.5 * diffusion.HIGH_NOISE_BAND
    assert abs(float((high >= top).float().mean()) - expected) < 0.015


def test_fine_tuning_lowers_the_loss() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    base = np.cumsum(rng.normal(0, 1, (40, 40)), axis=1)
    stack = np.stack([np.roll(base, shift, axis=1) for shift in range(8)]).astype(np.float32)
    stack = diffusion.normalise(stack, diffusion.intensity_range(stack))
    model = _tiny_model()
    triplets = diffusion.make_triplets(stack, gaps=(2,))
    clean, cond = diffusion.training_batch([triplets], [1.0], np.random.default_rng(7), 8, 32)

    def loss() -> float:
        generator = torch.Generator().manual_seed(0)
        scheduler = diffusion.training_scheduler()
        with torch.no_grad():
            value = diffusion.training_loss(
                model, scheduler, torch.from_numpy(clean), torch.from_numpy(cond), generator
            )
        return float(value)

    before = loss()
    losses = diffusion.fine_tune(model, stack, list(range(8)), 25, learning_rate=2e-3, seed=0)
    assert len(losses) == 25
    assert loss() < 0.8 * before


def test_fill_damage_with_diffusion_keeps_undamaged_voxels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    stack = rng.integers(40, 220, size=(5, 48, 56), dtype=np.uint8)
    damaged, mask = simulate_damage(stack, [(2, "blotch")], seed=3)
    diffusion.save_model(_tiny_model(), tmp_path / "tiny")
    options = DiffusionOptions(weights=tmp_path / "tiny", steps=3, device="cpu")
    out, report = fill_damage(damaged, mask, "auto", options)
    assert report["methods"] == {2: "diffusion"}
    np.testing.assert_array_equal(out[~mask], damaged[~mask])
    assert out.dtype == np.uint8
    assert (
        np.abs(out[mask].astype(int) - stack[mask]).mean()
        < np.abs(damaged[mask].astype(int) - stack[mask]).mean()
    )


def test_a_reloaded_model_saves_without_its_source_folder(tmp_path: Path) -> None:
    diffusion.save_model(_tiny_model(), tmp_path / "first")
    loaded = diffusion.load_model(tmp_path / "first")
    diffusion.save_model(loaded, tmp_path / "second")
    assert "_name_or_path" not in json.loads((tmp_path / "second" / "config.json").read_text())
    again = diffusion.load_model(tmp_path / "second")
    for before, after in zip(loaded.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(before, after)


def test_shipped_weights_load_offline() -> None:
    model = diffusion.load_model()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    size = sum(f.stat().st_size for f in diffusion.WEIGHTS.iterdir())
    assert size < 5 * 2**20


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VemvizError, match="no diffusion model"):
        diffusion.load_model(tmp_path)
