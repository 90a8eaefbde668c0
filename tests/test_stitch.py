"""Tests for vemviz.stitch: real mussel SEM tiles and tiles cut from a real EM image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from vemviz.errors import VemvizError
from vemviz.stitch import read_tile_grid, stitch_tiles

DATA = Path(__file__).parents[2] / "shared" / "data"
MUSSEL = DATA / "mussel_tiles"
VNC = DATA / "vnc_sstem" / "raw.tif"

TILE = 320
STEP = 272  # 48 px = 15 % overlap


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real EM data not found at {path}")


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    _need(VNC)
    return tifffile.imread(VNC, key=5)


def _cut(
    image: np.ndarray, grid: tuple[int, int], step: int, seed: int = 0
) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """Tiles cut at grid positions with +-6 px jitter; returns tiles and their (x, y) origins."""
    rng = np.random.default_rng(seed)
    tiles, origins = {}, {}
    for row in range(1, grid[0] + 1):
        for col in range(1, grid[1] + 1):
            x, y = 8 + np.array([col - 1, row - 1]) * step + rng.integers(-6, 7, size=2)
            tiles[(row, col)] = image[y : y + TILE, x : x + TILE].copy()
            origins[(row, col)] = np.array([x, y], dtype=float)
    return tiles, origins


def _position_errors(report: dict, origins: dict) -> list[float]:
    tiles = report["tiles"]
    pos = {(r, c): np.array([tiles[f"{r}_{c}"]["x"], tiles[f"{r}_{c}"]["y"]]) for r, c in origins}
    return [
        float(np.abs((pos[k] - pos[(1, 1)]) - (origins[k] - origins[(1, 1)])).max())
        for k in origins
    ]


def test_synthetic_grid_recovers_positions_and_image(source: np.ndarray) -> None:
    tiles, origins = _cut(source, (3, 3), STEP)
    panorama, report = stitch_tiles(tiles, overlap_hint=(TILE - STEP) / TILE)
    errors = _position_errors(report, origins)
    print("position errors (px):", np.round(errors, 3))
    assert max(errors) < 1.0
    assert report["unmatched_pairs"] == []
    assert all(o["method"] == "sift" and o["inliers"] >= 12 for o in report["overlaps"])
    assert all(o["residual_px"] < 0.5 for o in report["overlaps"])
    # the panorama is the source image wherever a tile covered it (2 px margin)
    first = report["tiles"]["1_1"]
    offset = origins[(1, 1)] - np.array([first["x"], first["y"]])
    assert np.allclose(offset, np.round(offset), atol=1e-3)  # tile 1_1 lands on whole pixels
    ox, oy = np.round(offset).astype(int)
    covered = np.zeros(source.shape, bool)
    for x, y in origins.values():
        covered[int(y) + 2 : int(y) + TILE - 2, int(x) + 2 : int(x) + TILE - 2] = True
    ys, xs = np.nonzero(covered)
    diff = panorama[ys - oy, xs - ox].astype(float) - source[ys, xs]
    psnr = 10 * np.log10(255**2 / np.mean(diff**2))
    print(f"PSNR panorama vs source: {psnr:.1f} dB; NCC {report['mean_ncc_after']:.4f}")
    assert psnr > 35
    assert panorama.dtype == source.dtype
    assert report["mean_ncc_after"] > 0.97


def test_failed_pair_is_placed_from_its_other_neighbours(source: np.ndarray) -> None:
    tiles, origins = _cut(source, (2, 2), STEP, seed=1)
    tiles[(1, 2)][:, :80] = 128  # no texture where 1_2 overlaps 1_1
    _, report = stitch_tiles(tiles, overlap_hint=(TILE - STEP) / TILE)
    assert report["unmatched_pairs"] == ["1_1-1_2"]
    assert report["placed_by_prior"] == []
    assert max(_position_errors(report, origins)) < 1.0


def test_non_overlapping_tiles_raise(source: np.ndarray) -> None:
    tiles, _ = _cut(source, (2, 2), TILE + 20)
    with pytest.raises(VemvizError, match="no neighbouring tiles overlap"):
        stitch_tiles(tiles, overlap_hint=0.15)


def test_mussel_tiles_stitch_better_than_grid() -> None:
    _need(MUSSEL)
    tiles = read_tile_grid(MUSSEL, grid=(3, 3))
    assert len(tiles) == 9 and tiles[(1, 1)].shape == (1768, 2048)
    half = {
        k: cv2.resize(v, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        for k, v in tiles.items()
    }
    panorama, report = stitch_tiles(half, overlap_hint=0.1)
    before, after = report["mean_ncc_before"], report["mean_ncc_after"]
    print(f"mussel overlap NCC grid {before:.3f} -> stitched {after:.3f}")
    assert report["unmatched_pairs"] == []
    assert after > 0.75 and after > before + 0.15
    assert all(o["ncc_after"] > o["ncc_before"] for o in report["overlaps"])
    # the panorama spans about three tiles less two overlaps, and is not black
    assert 2.6 * 1024 < panorama.shape[1] < 3 * 1024
    assert panorama.dtype == np.uint8 and panorama.mean() > 50


def _write_grid(folder: Path, grid: tuple[int, int], skip: tuple[int, int] | None = None) -> None:
    rng = np.random.default_rng(0)
    for row in range(1, grid[0] + 1):
        for col in range(1, grid[1] + 1):
            if (row, col) != skip:
                cv2.imwrite(
                    str(folder / f"s_{row}_{col}.png"),
                    rng.integers(0, 255, (16, 20), dtype=np.uint8),
                )


def test_read_tile_grid(tmp_path: Path) -> None:
    _write_grid(tmp_path, (2, 3))
    (tmp_path / "notes.txt").write_text("ignored")
    tiles = read_tile_grid(tmp_path, grid=(2, 3))
    assert sorted(tiles) == [(r, c) for r in (1, 2) for c in (1, 2, 3)]
    assert np.array_equal(tiles[(2, 3)], cv2.imread(str(tmp_path / "s_2_3.png"), 0))
    with pytest.raises(VemvizError, match="3x3"):
        read_tile_grid(tmp_path, grid=(3, 3))
    with pytest.raises(VemvizError, match="not the 2x2"):
        read_tile_grid(tmp_path, grid=(2, 2))


def test_read_tile_grid_rgb_is_converted_to_gray(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB order
    tifffile.imwrite(tmp_path / "a_1_1.tif", rgb, photometric="rgb")
    tile = read_tile_grid(tmp_path)[(1, 1)]
    assert tile.shape == (8, 8) and tile.dtype == np.uint8
    assert np.all(tile == round(0.299 * 200))


def test_read_tile_grid_errors(tmp_path: Path) -> None:
    with pytest.raises(VemvizError, match="no tiles"):
        read_tile_grid(tmp_path)
    _write_grid(tmp_path, (2, 2), skip=(2, 1))
    with pytest.raises(VemvizError, match="row 2 column 1 is missing"):
        read_tile_grid(tmp_path)
    (tmp_path / "s_2_1.png").write_bytes(b"not a png")
    with pytest.raises(VemvizError, match="s_2_1.png"):
        read_tile_grid(tmp_path)
    cv2.imwrite(str(tmp_path / "s_2_1.png"), np.zeros((16, 20), np.uint16))
    with pytest.raises(VemvizError, match="all tiles must match"):
        read_tile_grid(tmp_path)
