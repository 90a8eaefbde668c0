"""Tests for vemviz.inr (learned iso and sr) on small phantom inputs, and its CLI options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vemviz import inr
from vemviz.cli import main
from vemviz.device import resolve_device
from vemviz.errors import VemvizError
from vemviz.io import read_volume, write_volume
from vemviz.iso import (
    interpolate_flow,
    interpolate_z,
    least_squares_weight,
    output_positions,
    reconstruct_z,
    train_inr,
)
from vemviz.metrics import psnr
from vemviz.phantom import make_phantom
from vemviz.sr import super_resolve
from vemviz.volume import Volume

SMALL = inr.Architecture(channels=16, blocks=1, hidden=16)


def _training(steps: int = 30, seed: int = 0, **kwargs) -> inr.Training:
    return inr.Training(
        steps=steps, time_budget=None, batch=8, patch=32, seed=seed, device="cpu",
        architecture=kwargs.pop("architecture", SMALL), **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    """An isotropic 8 nm phantom: the truth for decimation along z."""
    torch.set_num_threads(1)
    return make_phantom((41, 64, 64), (8.0, 8.0, 8.0), seed=3).clean.numpy()


def test_shapes_kept_slices_and_uncertainty(cube: np.ndarray) -> None:
    low = cube[::4]
    result = reconstruct_z(low, 4, "inr", training=_training(steps=5))
    assert result.data.shape == cube.shape and result.data.dtype == np.uint8
    np.testing.assert_array_equal(result.data[::4], low)
    assert result.uncertainty is not None and result.uncertainty.shape == cube.shape
    assert not result.uncertainty[::4].any() and result.uncertainty.max() > 0
    assert reconstruct_z(low, 4, "cubic").uncertainty is None


def test_non_integer_factor(cube: np.ndarray) -> None:
    low = cube[::5][:, :40, :48].astype(np.float32)
    factor = 50 / 11.0
    result = reconstruct_z(low, factor, "inr", training=_training(steps=5))
    positions = output_positions(len(low), factor)
    assert result.data.shape == (len(positions), 40, 48) and result.data.dtype == np.float32
    assert np.isfinite(result.data).all()
    whole = np.flatnonzero(positions == np.round(positions))
    np.testing.assert_array_equal(result.data[whole], low[positions[whole].astype(int)])


def test_determinism_with_a_seed(cube: np.ndarray) -> None:
    low = cube[::4]
    a = reconstruct_z(low, 4, "inr", training=_training(steps=8, seed=1))
    b = reconstruct_z(low, 4, "inr", training=_training(steps=8, seed=1))
    c = reconstruct_z(low, 4, "inr", training=_training(steps=8, seed=2))
    assert a.model.losses == b.model.losses
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)


def test_training_lowers_the_loss_and_beats_cubic(cube: np.ndarray) -> None:
    low = cube[::4]
    synthesized = np.arange(len(cube)) % 4 != 0
    arch = inr.Architecture(channels=16, blocks=2, hidden=32)
    result = reconstruct_z(low, 4, "inr", training=_training(steps=150, architecture=arch))
    losses = result.model.losses
    assert len(losses) == 150
    assert np.mean(losses[-40:]) < 0.9 * np.mean(losses[:40])
    learned = psnr(cube[synthesized], result.data[synthesized])
    cubic = psnr(cube[synthesized], interpolate_z(low, 4, "cubic")[synthesized])
    assert learned > cubic + 0.5, (learned, cubic)


def test_least_squares_weight() -> None:
    errors = np.random.default_rng(0).normal(size=500)
    # 0.3 e + 0.7 (-3/7 e) = 0: the weight that cancels the two errors exactly
    assert np.isclose(least_squares_weight(errors, -3 / 7 * errors), 0.3)
    assert least_squares_weight(errors + 2, errors + 1) == 0.0  # the better one alone, clipped
    assert least_squares_weight(errors, errors) == 0.5


def test_fusion_weight_is_estimated_saved_and_applied(cube: np.ndarray, tmp_path) -> None:
    low = cube[::4]  # 11 slices: every other one leaves 6, with 5 to predict between them
    synthesized = np.arange(len(cube)) % 4 != 0
    training = _training(steps=40, architecture=inr.Architecture(channels=16, blocks=2, hidden=32))
    model = train_inr(low, 4, training)
    assert 0 <= model.fusion_weight <= 1 and model.fusion_weight != 0.5
    # it is the least-squares weight of a network trained at x8 and flow, on slices 1, 3, ...
    proxy = inr.train_iso(low[::2], 8, training)
    positions = np.arange(5) + 0.5
    between = low[1::2].astype(np.float32)
    expected = least_squares_weight(inr.reconstruct_iso(proxy, low[::2], positions)[0] - between,
                                    interpolate_flow(low[::2], positions) - between)  # fmt: skip
    assert np.isclose(model.fusion_weight, expected)
    path = tmp_path / "iso.pt"
    inr.save_model(model, path)
    assert inr.load_model(path, "iso", "cpu").fusion_weight == model.fusion_weight
    # weight 1: the network alone; weight 0: flow alone
    network = inr.reconstruct_iso(model, low, output_positions(len(low), 4)[synthesized])[0]
    model.fusion_weight = 1.0
    alone = reconstruct_z(low, 4, "inr", model=model).data[synthesized]
    np.testing.assert_array_equal(alone, np.clip(np.rint(network), 0, 255).astype(np.uint8))
    model.fusion_weight = 0.0
    flow = reconstruct_z(low, 4, "inr", model=model).data[synthesized]
    np.testing.assert_array_equal(flow, interpolate_z(low, 4, "flow")[synthesized])
    assert train_inr(low[:6], 4, _training(steps=3)).fusion_weight == 0.5  # too few slices


def test_time_budget_stops_training(cube: np.ndarray) -> None:
    training = inr.Training(steps=100_000, time_budget=1.0, batch=4, patch=24, device="cpu",
                            architecture=SMALL)  # fmt: skip
    model = inr.train_iso(cube[::4], 4, training)
    assert 0 < len(model.losses) < 100_000 and model.seconds < 5


def test_save_load_round_trip(cube: np.ndarray, tmp_path) -> None:
    low = cube[::4]
    first = reconstruct_z(low, 4, "inr", training=_training(steps=5))
    path = tmp_path / "iso.pt"
    inr.save_model(first.model, path)
    model = inr.load_model(path, "iso", device="cpu")
    assert model.factor == 4 and model.architecture == SMALL
    np.testing.assert_array_equal(reconstruct_z(low, 4, "inr", model=model).data, first.data)
    with pytest.raises(VemvizError, match="trained for 'iso', not 'sr'"):
        inr.load_model(path, "sr")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(VemvizError, match="not a vemviz model"):
        inr.load_model(tmp_path / "junk.pt", "iso")
    with pytest.raises(VemvizError, match="not found"):
        inr.load_model(tmp_path / "missing.pt", "iso")


def test_learned_sr_shapes_and_beats_bicubic(cube: np.ndarray) -> None:
    """Self-supervised on the small slices (shapes, loss); trained on full-resolution slices
    of the same sample, as on re-imaged tiles, it must beat bicubic on the others."""
    import cv2

    truth = cube[:12]
    small = np.stack([cv2.resize(s, (32, 32), interpolation=cv2.INTER_AREA) for s in truth])
    arch = inr.Architecture(channels=16, blocks=2, hidden=32)
    out, model = super_resolve(small, 2, "learned", training=_training(100, architecture=arch))
    assert out.shape == truth.shape and out.dtype == np.uint8 and model is not None
    assert np.mean(model.losses[-20:]) < np.mean(model.losses[:10])
    odd, _ = super_resolve(small[:2, :30, :27], 1.5, "learned", model=model)
    assert odd.shape == (2, 45, 40)
    model = inr.train_sr(cube[12:], 2, _training(100, architecture=arch))
    out, _ = super_resolve(small, 2, "learned", model=model)
    bicubic = super_resolve(small, 2, "bicubic")[0]
    assert psnr(truth, out) > psnr(truth, bicubic) + 1.5


def test_sr_training_pairs_use_every_phase_of_whole_blocks() -> None:
    """Pixel value = column index: a 2x2 block mean is k + 0.5, and k's parity is the phase."""
    plane = np.tile(np.arange(40, dtype=np.float32), (36, 1))[None]
    rng = np.random.default_rng(0)
    parities = set()
    for _ in range(40):
        small, *_ = inr._sr_sample(plane, 2, 16, rng)
        assert np.allclose(small % 1, 0.5)  # whole 2 x 2 blocks, never a fractional resampling
        parities.add(float(small[0, 0, 0] % 2))
    assert parities == {0.5, 1.5}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: inr.train_iso(np.zeros((4, 8, 8)), 4, _training()), "too small"),
        (lambda: inr.train_iso(np.zeros((4, 64, 64)), 1.0, _training()), "factor > 1"),
        (lambda: inr.train_iso(np.zeros((64, 64)), 4, _training()), "3D"),
        (lambda: inr.train_iso(np.full((4, 64, 64), np.nan), 4, _training()), "NaN"),
        (lambda: inr.train_sr(np.zeros((2, 6, 6)), 2, _training()), "too small"),
        (lambda: inr.train_gap(np.zeros((4, 8, 8)), 1.0, 1, _training()), "too small"),
        (lambda: inr.train_gap(np.zeros((4, 20, 20)), 10.0, 1, _training()), "too small"),
        (lambda: inr.train_gap(np.zeros((4, 64, 64)), 1.0, 0, _training()), "run >= 1"),
        (lambda: resolve_device("tpu"), "unknown device"),
    ],
)
def test_bad_inputs(call, message: str) -> None:
    with pytest.raises(VemvizError, match=message):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_an_error() -> None:
    with pytest.raises(VemvizError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cli_inr_save_reuse_uncertainty(cube: np.ndarray, tmp_path, capsys) -> None:
    source = write_volume(Volume(cube[::4], (32.0, 8.0, 8.0)), tmp_path / "low.tif")
    out, weights, spread = tmp_path / "iso.tif", tmp_path / "w.pt", tmp_path / "unc.tif"
    common = ["iso", str(source), "--method", "inr", "--device", "cpu"]
    argv = [*common, "--out", str(out), "--out-voxel-size", "8", "--time-budget", "1",
            "--save-model", str(weights), "--uncertainty", str(spread)]  # fmt: skip
    assert main(argv) == 0
    result = read_volume(out)
    assert result.shape == cube.shape
    assert result.voxel_size_nm == pytest.approx((8.0, 8.0, 8.0))
    assert read_volume(spread).shape == cube.shape and weights.is_file()
    again = tmp_path / "again.tif"
    assert main([*common, "--out", str(again), "--factor", "4", "--model", str(weights)]) == 0
    np.testing.assert_array_equal(read_volume(again).numpy(), result.numpy())
    assert "trained for" not in capsys.readouterr().err
    other = tmp_path / "other.tif"
    assert main([*common, "--out", str(other), "--factor", "2", "--model", str(weights)]) == 0
    assert "trained for x4 and is applied at x2" in " ".join(capsys.readouterr().err.split())
    bad = tmp_path / "bad.tif"
    assert main(["iso", str(source), "--out", str(bad), "--factor", "4", "--method", "cubic",
                 "--model", str(weights)]) == 2  # fmt: skip
    assert "need --method inr" in capsys.readouterr().err
    assert main([*common, "--out", str(bad), "--factor", "4", "--out-voxel-size", "8"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main([*common, "--out", str(bad), "--out-voxel-size", "40"]) == 2
    assert "--out-voxel-size must be" in capsys.readouterr().err
    assert main(["sr", str(source), "--out", str(bad), "--scale", "2", "--model", str(weights),
                 "--method", "learned"]) == 2  # fmt: skip
    assert "trained for 'iso', not 'sr'" in capsys.readouterr().err
    assert not bad.exists()
