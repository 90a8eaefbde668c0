"""Tile stitching: synthetic 3x3 grids cut from real VNC sections with known truth, and the
real 3x3 mussel SEM grid.

Synthetic truth. From each chosen 1024x1024 VNC section a 3x3 grid of tiles is cut with
``--overlap`` overlap, every tile with a random offset (+-8 px), a rotation (up to 2 degrees)
about its centre, a smooth elastic warp (a random 4x4 field of displacements, upsampled
bicubically and scaled to at most ``--warp`` px) and Gaussian noise (sigma 3 grey levels): tile
pixel p shows the section at ``S_t(p) = R_t (p - c) + c + o_t + w_t(p)``. After stitching:

* seam error (the target): for section points x seen by two tiles, the stitched panorama
  positions of ``S_a^-1(x)`` and ``S_b^-1(x)`` should coincide; RMS of their distance (px);
* absolute error: RMS distance between stitched and true positions of all tile pixels on a
  16 px lattice after one best global rigid fit (it includes the tiles' own warps, which no
  stitcher can observe, so it cannot reach 0);
* PSNR (data range 255) of the panorama against the clean section, read at the stitched
  position of the tile pixel that shows each section pixel (and, for reference, after the
  global rigid fit only), over the pixels the tiles cover (3 px in from their borders).

Rows: ``elastic`` (vemviz default), ``rigid`` (same pipeline without the local correction),
and ``layout`` (tiles placed at their nominal grid positions, no registration). Real tiles:
overlap NCC of the mussel grid on the layout, after the rigid solve and after the elastic
correction, and a downsampled mosaic PNG in ``benchmarks-out/``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import cv2
import numpy as np
import tifffile

from benchmarks.common import OUT_DIR, Result, peak_rss_mib, timed
from vemviz.stitch import read_tile_grid, stitch_tiles, tile_to_panorama

GRID = (3, 3)
JITTER_PX = 8.0
MAX_ROTATION_DEG = 2.0
NOISE_SIGMA = 3.0
LATTICE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sections", type=int, default=5, help="VNC sections (synthetic)")
    parser.add_argument("--tile", type=int, default=340, help="synthetic tile size (px)")
    parser.add_argument("--overlap", type=float, default=0.12, help="synthetic overlap")
    parser.add_argument("--warp", type=float, default=3.0, help="largest elastic warp (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mussel", action="store_true", help="skip the real mussel grid")


# ------------------------------------------------------------------------ synthetic truth


class _TileTruth:
    """Known map from tile pixels to section pixels, and its inverse."""

    def __init__(self, rng: np.random.Generator, origin: np.ndarray, size: int, warp: float):
        self.size = size
        angle = np.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        self.rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        self.centre = np.full(2, (size - 1) / 2)
        self.origin = origin + rng.uniform(-JITTER_PX, JITTER_PX, 2)
        coarse = rng.normal(size=(4, 4, 2)).astype(np.float32)
        field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        self.field = field * (warp / max(float(np.abs(field).max()), 1e-6))

    def _warp_at(self, p: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        return np.column_stack(
            [map_coordinates(self.field[..., c], [p[:, 1], p[:, 0]], order=1, mode="nearest")
             for c in (0, 1)]
        )  # fmt: skip

    def forward(self, p: np.ndarray) -> np.ndarray:
        return (p - self.centre) @ self.rot.T + self.centre + self.origin + self._warp_at(p)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        p = (x - self.origin - self.centre) @ self.rot + self.centre
        for _ in range(20):
            p = (x - self.origin - self.centre - self._warp_at(p)) @ self.rot + self.centre
        return p

    def inside(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        return np.all((p >= margin) & (p <= self.size - 1 - margin), axis=1)

    def cut(self, section: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ys, xs = np.mgrid[0 : self.size, 0 : self.size]
        x = self.forward(np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64))
        maps = x.reshape(self.size, self.size, 2).astype(np.float32)
        tile = cv2.remap(section.astype(np.float32), maps[..., 0], maps[..., 1], cv2.INTER_CUBIC)
        tile += rng.normal(0, NOISE_SIGMA, tile.shape).astype(np.float32)
        return np.clip(np.rint(tile), 0, 255).astype(np.uint8)


def _make_grid(
    section: np.ndarray, size: int, overlap: float, warp: float, rng: np.random.Generator
) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], _TileTruth]]:
    step = size - round(overlap * size)
    span = size + (GRID[1] - 1) * step
    start = (section.shape[1] - span) / 2
    tiles, truth = {}, {}
    for row in range(1, GRID[0] + 1):
        for col in range(1, GRID[1] + 1):
            origin = start + np.array([(col - 1) * step, (row - 1) * step], dtype=np.float64)
            truth[(row, col)] = _TileTruth(rng, origin, size, warp)
            tiles[(row, col)] = truth[(row, col)].cut(section, rng)
    return tiles, truth


def _placement(report: dict[str, Any], size: int):
    def place(tile: tuple[int, int], p: np.ndarray) -> np.ndarray:
        entry = report["tiles"][f"{tile[0]}_{tile[1]}"]
        return tile_to_panorama(p, entry["matrix"], entry.get("mesh"), (size, size))

    return place


def _layout_report(size: int, overlap: float) -> dict[str, Any]:
    step = size - round(overlap * size)
    return {
        "tiles": {
            f"{r}_{c}": {"matrix": [[1, 0, (c - 1) * step], [0, 1, (r - 1) * step]], "mesh": None}
            for r in range(1, GRID[0] + 1)
            for c in range(1, GRID[1] + 1)
        }
    }


def _seam_errors(place, truth: dict, lattice: int) -> np.ndarray:
    """Distances between the stitched positions of truly corresponding tile pixels."""
    errors = []
    keys = sorted(truth)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if abs(a[0] - b[0]) + abs(a[1] - b[1]) != 1:
                continue
            lo = np.maximum(truth[a].origin, truth[b].origin) - JITTER_PX
            hi = np.minimum(truth[a].origin, truth[b].origin) + truth[a].size + JITTER_PX
            ys, xs = np.mgrid[lo[1] : hi[1] : lattice / 2, lo[0] : hi[0] : lattice / 2]
            x = np.column_stack([xs.ravel(), ys.ravel()])
            pa, pb = truth[a].inverse(x), truth[b].inverse(x)
            keep = truth[a].inside(pa, 2) & truth[b].inside(pb, 2)
            errors.append(np.linalg.norm(place(a, pa[keep]) - place(b, pb[keep]), axis=1))
    return np.concatenate(errors)


def _fit_rigid(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    cs, cd = src.mean(0), dst.mean(0)
    u, v = src - cs, dst - cd
    angle = np.arctan2(np.sum(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]), np.sum(u * v))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rot, (cd - rot @ cs)[:, None]])


def _absolute(place, truth: dict, lattice: int) -> tuple[float, np.ndarray]:
    """RMS position error after the best global rigid fit, and that fit (panorama -> section)."""
    size = next(iter(truth.values())).size
    ys, xs = np.mgrid[0:size:lattice, 0:size:lattice]
    p = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    stitched = np.vstack([place(t, p) for t in sorted(truth)])
    true = np.vstack([truth[t].forward(p) for t in sorted(truth)])
    fit = _fit_rigid(stitched, true)
    moved = stitched @ fit[:, :2].T + fit[:, 2]
    return float(np.sqrt(np.mean(np.sum((moved - true) ** 2, axis=1)))), fit


def _truth_lookup(shape: tuple[int, int], truth: dict) -> tuple[np.ndarray, list, np.ndarray]:
    """Section pixels some tile shows (3 px in from its border): mask, and per covered pixel
    the tile showing it deepest inside and the tile pixel that shows it."""
    h, w = shape
    keys = sorted(truth)
    depth = np.full((h, w), -1.0)
    owner = np.full((h, w), -1)
    where = np.zeros((h, w, 2))
    for i, key in enumerate(keys):
        t = truth[key]
        x0, y0 = np.maximum(np.floor(t.origin - 20).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(t.origin + t.size + 20).astype(int), [w, h])
        ys, xs = np.mgrid[y0:y1, x0:x1]
        p = t.inverse(np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64))
        inner = np.minimum(p, t.size - 1 - p).min(axis=1).reshape(ys.shape)
        better = (inner >= 3) & (inner > depth[y0:y1, x0:x1])
        depth[y0:y1, x0:x1][better] = inner[better]
        owner[y0:y1, x0:x1][better] = i
        where[y0:y1, x0:x1][better] = p.reshape(*ys.shape, 2)[better]
    return owner >= 0, keys, (owner, where)


def _psnr(values: np.ndarray, clean: np.ndarray) -> float:
    diff = values.astype(np.float64) - clean.astype(np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(diff**2)))


def _psnr_scores(
    panorama: np.ndarray, place, fit: np.ndarray, section: np.ndarray, lookup: tuple
) -> tuple[float, float]:
    """PSNR of the panorama against the clean section (a) read through the known tile maps
    (stitched position of the tile pixel that shows each section pixel) and (b) after the
    global rigid fit only."""
    covered, keys, (owner, where) = lookup
    h, w = section.shape
    image = panorama.astype(np.float32)
    q = np.zeros((h, w, 2))
    for i, key in enumerate(keys):
        mine = owner == i
        q[mine] = place(key, where[mine])
    mapped = cv2.remap(
        image, q[..., 0].astype(np.float32), q[..., 1].astype(np.float32), cv2.INTER_CUBIC
    )
    # WARP_INVERSE_MAP samples the panorama at M(x), M = section -> panorama
    back = cv2.invertAffineTransform(fit)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    rigid = cv2.warpAffine(image, back, (w, h), flags=flags)
    return _psnr(mapped[covered], section[covered]), _psnr(rigid[covered], section[covered])


# -------------------------------------------------------------------------------- runs


def _synthetic(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    volume = tifffile.imread(args.data / "vnc_sstem" / "raw.tif")
    rng = np.random.default_rng(args.seed)
    picks = np.linspace(0, volume.shape[0] - 1, args.sections).round().astype(int)
    results: dict[str, dict[str, list[float]]] = {}
    for z in picks:
        tiles, truth = _make_grid(volume[z], args.tile, args.overlap, args.warp, rng)
        lookup = _truth_lookup(volume[z].shape, truth)
        for method in ("layout", "rigid", "elastic"):
            record = results.setdefault(
                method, {"seam": [], "abs": [], "psnr": [], "psnr_rigid_fit": [], "sec": []}
            )
            start = time.perf_counter()
            if method == "layout":
                report = _layout_report(args.tile, args.overlap)
                panorama = None
            else:
                panorama, report = stitch_tiles(
                    tiles, overlap_hint=args.overlap, elastic=method == "elastic"
                )
            record["sec"].append(time.perf_counter() - start)
            place = _placement(report, args.tile)
            seam = _seam_errors(place, truth, LATTICE)
            absolute, fit = _absolute(place, truth, LATTICE)
            record["seam"].append(float(np.sqrt(np.mean(seam**2))))
            record["abs"].append(absolute)
            if panorama is not None:
                mapped, rigid = _psnr_scores(panorama, place, fit, volume[z], lookup)
                record["psnr"].append(mapped)
                record["psnr_rigid_fit"].append(rigid)
    rows = []
    n_tiles = GRID[0] * GRID[1]
    for method, record in results.items():
        rows.append(
            {
                "case": f"synthetic VNC 3x3 ({args.sections} sections)",
                "method": method,
                "seam_rms_px": float(np.sqrt(np.mean(np.square(record["seam"])))),
                "seam_rms_worst_px": float(np.max(record["seam"])),
                "abs_rms_px": float(np.sqrt(np.mean(np.square(record["abs"])))),
                "psnr_db": float(np.mean(record["psnr"])) if record["psnr"] else None,
                "psnr_rigid_fit_db": (
                    float(np.mean(record["psnr_rigid_fit"])) if record["psnr_rigid_fit"] else None
                ),
                "overlap_ncc": None,
                "s_per_tile": float(np.mean(record["sec"]) / n_tiles),
            }
        )
    notes = [
        f"synthetic: VNC sections {picks.tolist()}, {args.tile}px tiles, {args.overlap:.0%} "
        f"overlap, offsets +-{JITTER_PX:g} px, rotations up to {MAX_ROTATION_DEG:g} deg, "
        f"elastic warps up to {args.warp:g} px, noise sigma {NOISE_SIGMA:g}; seam = RMS "
        "distance of truly corresponding pixels in the panorama (target < 0.5 px); abs = RMS "
        "error after a global rigid fit (includes the unobservable warps of the tiles); psnr = "
        "panorama vs clean section read through the known tile maps (ghosting and seams lower "
        "it, noise caps it), psnr_rigid_fit = after the global rigid fit only",
    ]
    return rows, notes


def _mussel(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    tiles = read_tile_grid(args.data / "mussel_tiles", grid=GRID)
    row: dict[str, Any] = {"case": "mussel SEM 3x3 (1768x2048)", "method": "elastic"}
    with timed(row, "seconds"):
        panorama, report = stitch_tiles(tiles, overlap_hint=0.1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    figure = OUT_DIR / "stitch_mussel.png"
    small = cv2.resize(panorama, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(figure), small)
    rows = []
    for method, key in (("layout", "ncc_before"), ("rigid", "ncc_rigid"), ("elastic", "ncc_after")):
        values = [o[key] for o in report["overlaps"] if o[key] is not None]
        rows.append(
            {
                "case": row["case"],
                "method": method,
                "seam_rms_px": None,
                "seam_rms_worst_px": None,
                "abs_rms_px": None,
                "psnr_db": None,
                "psnr_rigid_fit_db": None,
                "overlap_ncc": float(np.mean(values)),
                "overlap_ncc_worst": float(np.min(values)),
                "s_per_tile": row["seconds"] / len(tiles) if method == "elastic" else None,
            }
        )
    notes = [
        f"mussel: overlap NCC per pair after elastic "
        f"{[round(o['ncc_after'], 3) for o in report['overlaps']]}; rigid residual px "
        f"{[round(o['residual_px'], 2) for o in report['overlaps'] if o['residual_px']]}; "
        f"mosaic {panorama.shape[1]}x{panorama.shape[0]} -> {figure.name} (1/4 scale)",
    ]
    if report["warnings"]:
        notes.append("mussel warnings: " + "; ".join(report["warnings"]))
    return rows, notes


def run(args: argparse.Namespace) -> Result:
    rows, notes = _synthetic(args)
    if not args.no_mussel:
        more, more_notes = _mussel(args)
        rows += more
        notes += more_notes
    notes.append(f"peak memory {peak_rss_mib():.0f} MiB")
    return Result("Tile stitching (vemviz stitch)", rows, notes)
