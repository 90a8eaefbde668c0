"""Tests for vemviz.stitch: real mussel SEM tiles and tiles cut from a real EM image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from scipy.ndimage import map_coordinates

from vemviz import stages
from vemviz.errors import VemvizError
from vemviz.stitch import read_tile_grid, read_tile_list, stitch_tiles, tile_to_panorama

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
    assert after > 0.9 and after > report["mean_ncc_rigid"] > before + 0.15
    assert all(o["ncc_after"] > o["ncc_rigid"] > o["ncc_before"] for o in report["overlaps"])
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


# ------------------------------------------------- rotated, warped grids with known truth


class _Truth:
    """Tile pixel p shows the source at ``R (p - c) + c + o + w(p)`` (w smooth, <= 2 px)."""

    def __init__(self, rng: np.random.Generator, origin: np.ndarray, size: int):
        angle = np.radians(rng.uniform(-1.5, 1.5))
        self.rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        self.origin, self.size, self.c = origin + rng.uniform(-5, 5, 2), size, (size - 1) / 2
        coarse = rng.normal(size=(3, 3, 2)).astype(np.float32)
        warp = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        self.warp = warp * (2.0 / np.abs(warp).max())

    def _w(self, p: np.ndarray) -> np.ndarray:
        return np.column_stack(
            [map_coordinates(self.warp[..., i], [p[:, 1], p[:, 0]], order=1, mode="nearest")
             for i in (0, 1)]
        )  # fmt: skip

    def forward(self, p: np.ndarray) -> np.ndarray:
        return (p - self.c) @ self.rot.T + self.c + self.origin + self._w(p)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        p = (x - self.origin - self.c) @ self.rot + self.c
        for _ in range(15):
            p = (x - self.origin - self.c - self._w(p)) @ self.rot + self.c
        return p


def _warped_grid(
    image: np.ndarray, grid: tuple[int, int], size: int, step: int, seed: int = 0
) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], _Truth]]:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    pixels = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    tiles, truth = {}, {}
    for row in range(1, grid[0] + 1):
        for col in range(1, grid[1] + 1):
            t = _Truth(rng, 16.0 + np.array([col - 1, row - 1]) * step, size)
            src = t.forward(pixels).reshape(size, size, 2).astype(np.float32)
            tile = cv2.remap(image.astype(np.float32), src[..., 0], src[..., 1], cv2.INTER_CUBIC)
            tiles[(row, col)] = np.clip(np.rint(tile), 0, 255).astype(np.uint8)
            truth[(row, col)] = t
    return tiles, truth


def _seam_rms(report: dict, truth: dict) -> float:
    """RMS distance in the panorama between tile pixels that truly show the same point."""
    errors = []
    for a in truth:
        for b in truth:
            if b <= a or abs(a[0] - b[0]) + abs(a[1] - b[1]) != 1:
                continue
            lo = np.maximum(truth[a].origin, truth[b].origin)
            hi = np.minimum(truth[a].origin, truth[b].origin) + truth[a].size
            x = np.column_stack([g.ravel() for g in np.mgrid[lo[0] : hi[0] : 5, lo[1] : hi[1] : 5]])
            pa, pb = truth[a].inverse(x), truth[b].inverse(x)
            size = truth[a].size
            keep = np.all((pa > 2) & (pa < size - 3) & (pb > 2) & (pb < size - 3), axis=1)
            entry = {t: report["tiles"][f"{t[0]}_{t[1]}"] for t in (a, b)}
            qa = tile_to_panorama(pa[keep], entry[a]["matrix"], entry[a]["mesh"], (size, size))
            qb = tile_to_panorama(pb[keep], entry[b]["matrix"], entry[b]["mesh"], (size, size))
            errors.append(np.linalg.norm(qa - qb, axis=1))
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


@pytest.mark.parametrize("grid", [(1, 2), (2, 2), (3, 3)])
def test_rotated_warped_grids_stitch_seamlessly(source: np.ndarray, grid: tuple[int, int]) -> None:
    size, step = 200, 172  # 14 % overlap
    tiles, truth = _warped_grid(source, grid, size, step, seed=grid[0] * 10 + grid[1])
    _, rigid = stitch_tiles(tiles, overlap_hint=0.14, elastic=False)
    panorama, report = stitch_tiles(tiles, overlap_hint=0.14)
    seam_rigid, seam = _seam_rms(rigid, truth), _seam_rms(report, truth)
    print(f"{grid}: seam error rigid {seam_rigid:.2f} px -> elastic {seam:.2f} px")
    assert report["unmatched_pairs"] == [] and report["warnings"] == []
    assert len(report["overlaps"]) == grid[0] * (grid[1] - 1) + grid[1] * (grid[0] - 1)
    assert seam < 0.5 and seam < seam_rigid
    for overlap in report["overlaps"]:
        assert overlap["ncc_after"] > overlap["ncc_rigid"] > overlap["ncc_before"] - 0.2
    assert panorama.dtype == np.uint8 and panorama.shape[0] >= size * grid[0] - 60


def test_tile_list_csv_with_approximate_positions(source: np.ndarray, tmp_path: Path) -> None:
    tiles, truth = _warped_grid(source, (2, 2), 200, 172, seed=3)
    lines = ["file,x,y"]
    for (row, col), tile in tiles.items():
        cv2.imwrite(str(tmp_path / f"tile{row}{col}.png"), tile)
        guess = truth[(row, col)].origin - truth[(1, 1)].origin + (3, -4)  # rough positions
        lines.append(f"tile{row}{col}.png,{guess[0]:.0f},{guess[1]:.0f}")
    (tmp_path / "tiles.csv").write_text("\n".join(lines) + "\n")
    volume, report = stages.stitch(tmp_path / "tiles.csv")
    assert volume.shape[0] == 1 and sorted(report["tiles"]) == ["tile11", "tile12", "tile21",
                                                                  "tile22"]  # fmt: skip
    assert "grid" not in report and report["unmatched_pairs"] == []
    by_grid = {"tiles": {f"{k[4]}_{k[5]}": v for k, v in report["tiles"].items()}}
    assert _seam_rms(by_grid, truth) < 0.5
    (tmp_path / "bad.csv").write_text("file,x,y\ntile11.png,0,zero\n")
    with pytest.raises(VemvizError, match="must be numbers"):
        read_tile_list(tmp_path / "bad.csv")
    (tmp_path / "far.csv").write_text("tile11.png,0,0\ntile12.png,900,0\n")
    with pytest.raises(VemvizError, match="no two tiles overlap"):
        stages.stitch(tmp_path / "far.csv")


def test_textureless_tile_is_named_and_placed_from_its_neighbours(source: np.ndarray) -> None:
    tiles, origins = _cut(source, (1, 3), STEP, seed=4)
    tiles[(1, 3)][:] = 90  # blank tile: nothing to match
    panorama, report = stitch_tiles(tiles, overlap_hint=(TILE - STEP) / TILE)
    assert report["unmatched_pairs"] == ["1_2-1_3"]
    assert report["placed_by_prior"] == ["1_3"]
    assert any("tile 1_3" in w for w in report["warnings"])
    pos = report["tiles"]
    step = pos["1_3"]["x"] - pos["1_2"]["x"]
    assert step == pytest.approx(STEP, abs=1e-6)  # the layout step from its neighbour
    assert abs(pos["1_3"]["y"] - pos["1_2"]["y"]) < 1e-6
    # the blank tile is rendered (not left black)
    x0, y0 = int(round(pos["1_3"]["x"])), int(round(pos["1_3"]["y"]))
    assert np.all(panorama[y0 + 5 : y0 + TILE - 5, x0 + 60 : x0 + TILE - 5] == 90)
