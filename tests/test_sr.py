"""Tests for vemviz.sr: shapes, dtype and range rules, and the FlyEM bicubic benchmark."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from vemviz.errors import VemvizError
from vemviz.metrics import psnr, ssim_slices
from vemviz.sr import sr_voxel_size, upscale_xy

FLYEM = Path(__file__).parents[2] / "shared" / "data" / "flyem_medulla_10nm" / "raw.tif"


def test_shape_dtype_and_z_untouched() -> None:
    stack = np.random.default_rng(0).integers(0, 4096, (3, 10, 14), dtype=np.uint16)
    out = upscale_xy(stack, 2.5)
    assert out.shape == (3, 25, 35)
    assert out.dtype == np.uint16
    assert not np.array_equal(out[0], out[1])  # each slice upscaled from its own input


def test_overshoot_is_clipped_to_the_input_range() -> None:
    stack = np.full((1, 16, 16), 40, dtype=np.uint8)
    stack[0, :, 8:] = 200  # a hard edge makes bicubic ring below 40 and above 200
    float_out = upscale_xy(stack.astype(np.float32), 4)
    assert float_out.min() == 40 and float_out.max() == 200
    out = upscale_xy(stack, 4)
    assert out.min() == 40 and out.max() == 200
    unclipped = cv2.resize(stack[0].astype(np.float32), (64, 64), interpolation=cv2.INTER_CUBIC)
    assert unclipped.min() < 39 and unclipped.max() > 201


def test_scale_one_is_identity() -> None:
    stack = np.random.default_rng(1).random((2, 9, 7)).astype(np.float32)
    np.testing.assert_allclose(upscale_xy(stack, 1), stack, atol=1e-6)


@pytest.mark.parametrize(
    ("stack", "scale", "method", "message"),
    [
        (np.zeros((2, 8, 8)), 2, "lanczos", "unknown sr method"),
        (np.zeros((2, 8, 8)), 0.5, "bicubic", ">= 1"),
        (np.zeros((8, 8)), 2, "bicubic", "3D"),
    ],
)
def test_errors(stack: np.ndarray, scale: float, method: str, message: str) -> None:
    with pytest.raises(VemvizError, match=message):
        upscale_xy(stack, scale, method)


def test_sr_voxel_size() -> None:
    assert sr_voxel_size((50.0, 4.6, 4.6), 2) == pytest.approx((50.0, 2.3, 2.3))


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("scale", "low", "high", "min_ssim"), [(2, 34.25, 34.5, 0.918), (4, 30.0, 30.25, 0.797)]
)
def test_flyem_bicubic_benchmark(scale: int, low: float, high: float, min_ssim: float) -> None:
    """Area-downsample FlyEM slices, upscale, compare (reference: x2 34.2 dB, x4 29.8 dB)."""
    if not FLYEM.exists():
        pytest.skip(f"real data not found at {FLYEM}")
    side = 250 // scale * scale
    original = tifffile.imread(FLYEM)[:, :side, :side]
    small = np.stack(
        [cv2.resize(s, (side // scale,) * 2, interpolation=cv2.INTER_AREA) for s in original]
    )
    restored = upscale_xy(small, scale)
    assert restored.shape == original.shape and restored.dtype == np.uint8
    # Measured: x2 34.37 dB / 0.921, x4 30.13 dB / 0.800.
    assert low < psnr(original, restored) < high
    assert ssim_slices(original, restored) > min_ssim
