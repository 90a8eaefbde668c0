"""Serial-section alignment: known random distortions of real FlyEM sections.

Truth. ``--sections`` consecutive sections of the FlyEM FIB-SEM volume (isotropic 10 nm; its
sections are registered already) are each distorted independently: a random rotation (up to
``--rotation`` degrees about the centre), translation (up to ``--shift`` px) and a smooth
elastic warp (a random 4x4 field upsampled bicubically, at most ``--warp`` px), then cropped to
``--size`` px: distorted pixel p shows the original section at ``M_z(p)``. vemviz aligns the
distorted stack; it returns per section the map ``A_z`` from output pixels to distorted
pixels, so ``M_z(A_z(o))`` is where output pixel o reads the original section. A perfect
alignment makes that one global map G for every section (the output frame is free), so:

* residual vs clean (the target, px RMS): the published stack is not motion-free at this
  level (its oblique neurites make consecutive registration drift ~0.2 px and ~0.03 degrees
  per section), so the truth for the distorted stack is "the rigid alignment of the
  undistorted sections, B_z, moved by the known distortion": distance between
  ``M_z(A_z(o))`` and ``B_z(G(o))`` with one global affine G, over all sections and output
  pixels on an 8 px lattice;
* residual (absolute, px RMS): distance between ``M_z(A_z(o))`` and the best global affine
  ``G(o)`` (whole section, interior 20 px in from the border, and the largest);
* residual modulo a linear drift (px RMS): the same with ``G_z(o) = G0(o) + z G1(o)``, a
  global affine whose six parameters change linearly along z. A reference-free aligner
  cannot tell a steady oblique drift of the tissue (FlyEM's content moves +0.24 / -0.19 px per
  section in x / y, the median of the dense flow as well as its mean) from the linear trend of
  the independent jitter, so this is the part of the error that alignment can be held to;
  ``floor`` in the notes is the absolute residual that a perfect reference-free aligner would
  still have: the linear-in-z trend of the known distortions at every lattice point, after
  one global affine (its residual modulo a linear drift is 0);
* PSNR (data range 255) of the aligned stack against the original read at ``G(o)``, over
  the interior.

Every mode runs on the same stack; ``none`` is the distorted stack itself. The ``blank`` row
sets 2 sections to 0 before aligning (they are detected and bridged; the residual is taken
over the other sections). The ``smooth`` rows keep the slow trajectory (``--smooth`` sections):
they do not follow the anatomy's drift, so their absolute residual is the one to read.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import cv2
import numpy as np
import tifffile
from scipy.ndimage import map_coordinates

from benchmarks.common import Result, peak_rss_mib
from vemviz.align import align_stack, apply_transforms

INTERIOR = 20
LATTICE = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sections", type=int, default=32)
    parser.add_argument("--size", type=int, default=200, help="output section size (px)")
    parser.add_argument("--z0", type=int, default=100, help="first FlyEM section")
    parser.add_argument("--shift", type=float, default=10.0, help="largest shift (px)")
    parser.add_argument("--rotation", type=float, default=3.0, help="largest rotation (deg)")
    parser.add_argument("--warp", type=float, default=3.0, help="largest elastic warp (px)")
    parser.add_argument("--modes", default="rigid,affine,elastic")
    parser.add_argument(
        "--smooth", type=float, default=4.0, help="extra rows with this trajectory smoothing"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--neighbours", type=int, default=2, help="previous sections each one is registered to"
    )


class _Distortion:
    """Distorted pixel p (crop) -> original pixel ``R (p + m - c) + c + t + w(p)``."""

    def __init__(self, rng: np.random.Generator, args: argparse.Namespace, full: int):
        angle = np.radians(rng.uniform(-args.rotation, args.rotation))
        self.rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        self.shift = rng.uniform(-args.shift, args.shift, 2)
        self.margin = (full - args.size) / 2
        self.centre = np.full(2, (full - 1) / 2)
        coarse = rng.normal(size=(4, 4, 2)).astype(np.float32)
        field = cv2.resize(coarse, (args.size, args.size), interpolation=cv2.INTER_CUBIC)
        self.field = field * (args.warp / max(float(np.abs(field).max()), 1e-6))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """p (..., 2) distorted (x, y) -> original (x, y)."""
        flat = p.reshape(-1, 2)
        warp = np.column_stack(
            [map_coordinates(self.field[..., c], [flat[:, 1], flat[:, 0]], order=1,
                             mode="nearest") for c in (0, 1)]
        )  # fmt: skip
        out = (flat + self.margin - self.centre) @ self.rot.T + self.centre + self.shift + warp
        return out.reshape(p.shape)


def _distort(raw: np.ndarray, args: argparse.Namespace, rng: np.random.Generator):
    size = args.size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    grid = np.dstack([xs, ys])
    stack = np.zeros((len(raw), size, size), raw.dtype)
    maps = []
    for z, section in enumerate(raw):
        m = _Distortion(rng, args, raw.shape[1])
        where = m(grid).astype(np.float32)
        stack[z] = np.clip(
            np.rint(cv2.remap(section.astype(np.float32), where[..., 0], where[..., 1],
                              cv2.INTER_CUBIC)), 0, 255
        ).astype(raw.dtype)  # fmt: skip
        maps.append(m)
    return stack, maps


def _output_maps(report: dict[str, Any] | None, n: int, size: int) -> np.ndarray:
    """(Z, h, w, 2) section pixel (x, y) read by every output pixel; NaN outside the section."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = np.stack([np.stack([xs, ys])] * n)  # (Z, 2, h, w)
    if report is None:
        return np.moveaxis(coords, 1, -1)
    transforms = report["transforms"]
    moved = np.stack([apply_transforms(coords[:, c], transforms, order=1) for c in (0, 1)], -1)
    inside = apply_transforms(np.ones((n, size, size)), transforms, order=1) > 0.999
    moved[~inside] = np.nan
    return moved


def _composite(report: dict[str, Any] | None, maps: list, size: int) -> np.ndarray:
    """(Z, n, 2) original positions ``M_z(A_z(o))`` of the lattice of output pixels; NaN where
    the output pixel reads outside its section."""
    lattice = _output_maps(report, len(maps), size)[:, ::LATTICE, ::LATTICE]
    out = []
    for z, m in enumerate(maps):
        p = lattice[z].reshape(-1, 2)
        bad = np.isnan(p).any(axis=1)
        q = m(np.nan_to_num(p))
        q[bad] = np.nan
        out.append(q)
    return np.stack(out)


def _relative(q: np.ndarray, reference: np.ndarray, margin: float, size: int) -> float:
    """RMS of ``|M_z(A_z(o)) - B_z(G(o))|`` px: B_z = the rigid alignment of the undistorted
    sections (the content-following trajectory that any mode reproduces), G one global
    affine of the output frame (fitted to first order, then the distance is taken exactly by
    interpolating B_z at G(o))."""
    ys, xs = np.mgrid[0:size:LATTICE, 0:size:LATTICE]
    o = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    ref = reference + margin  # clean crop pixel -> original pixel
    ref_lattice = ref[:, ::LATTICE, ::LATTICE].reshape(len(ref), -1, 2)
    target = np.broadcast_to(o, q.shape) + (q - ref_lattice)
    valid = ~np.isnan(target).any(axis=2)
    fit = _fit_affine(np.broadcast_to(o, q.shape)[valid], target[valid])
    g = o @ fit[:, :2].T + fit[:, 2]
    errors = []
    for z in range(len(ref)):
        at = np.column_stack(
            [map_coordinates(np.nan_to_num(ref[z, ..., c]), [g[:, 1], g[:, 0]], order=1,
                             mode="nearest") for c in (0, 1)]
        )  # fmt: skip
        errors.append(np.linalg.norm(q[z] - at, axis=1))
    error = np.stack(errors)
    return float(np.sqrt(np.nanmean(error[valid] ** 2)))


def _fit_affine(o: np.ndarray, q: np.ndarray) -> np.ndarray:
    design = np.column_stack([o, np.ones(len(o))])
    return np.linalg.lstsq(design, q, rcond=None)[0].T  # 2x3


def _drift_free_rms(q: np.ndarray, o: np.ndarray, zs: np.ndarray) -> float:
    """RMS distance of ``q`` (Z, n, 2) from the best ``G0(o) + z G1(o)`` (two affines: a
    global one and its change per section); NaN entries are left out."""
    z = np.broadcast_to(np.asarray(zs, float)[:, None, None], (*q.shape[:2], 1))
    o_all = np.broadcast_to(o, q.shape)
    affine = np.concatenate([o_all, np.ones_like(z)], axis=2)
    design = np.concatenate([affine, z * affine], axis=2)
    valid = ~np.isnan(q).any(axis=2)
    fit = np.linalg.lstsq(design[valid], q[valid], rcond=None)[0]
    error = np.linalg.norm(q - design @ fit, axis=2)
    return float(np.sqrt(np.nanmean(error[valid] ** 2)))


def _trend_floor(maps: list, size: int) -> float:
    """Absolute residual (px RMS) of an aligner that removes every distortion except its
    linear trend along z (what no reference-free aligner can tell from oblique anatomy)."""
    ys, xs = np.mgrid[0:size:LATTICE, 0:size:LATTICE]
    o = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    q = np.stack([m(o) for m in maps])  # (Z, n, 2) original positions of the lattice
    z = np.arange(len(maps), dtype=np.float64)
    design = np.column_stack([np.ones_like(z), z])
    coef = np.linalg.lstsq(design, q.reshape(len(z), -1), rcond=None)[0]
    trend = (design @ coef).reshape(q.shape)
    fit = _fit_affine(np.broadcast_to(o, q.shape).reshape(-1, 2), trend.reshape(-1, 2))
    error = np.linalg.norm(trend - (o @ fit[:, :2].T + fit[:, 2]), axis=2)
    return float(np.sqrt(np.mean(error**2)))


def _scores(
    report: dict[str, Any] | None,
    aligned: np.ndarray,
    raw: np.ndarray,
    maps: list,
    size: int,
    sections: list[int],
    reference: dict[str, Any] | None,
) -> dict[str, float]:
    q = _composite(report, maps, size)[sections]
    ref_maps = _output_maps(reference, len(maps), size)[sections]
    relative = _relative(q, ref_maps, maps[0].margin, size)
    ys, xs = np.mgrid[0:size:LATTICE, 0:size:LATTICE]
    o = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    o_all = np.broadcast_to(o, q.shape)
    valid = ~np.isnan(q).any(axis=2)
    fit = _fit_affine(o_all[valid], q[valid])
    error = np.linalg.norm(q - (o @ fit[:, :2].T + fit[:, 2]), axis=2)
    inner = np.all((o >= INTERIOR) & (o < size - INTERIOR), axis=1)
    # PSNR against the original read at G(o), interior pixels
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float64)
    g = np.dstack([gx, gy]) @ fit[:, :2].T + fit[:, 2]
    errors = []
    for z in sections:
        truth = cv2.remap(raw[z].astype(np.float32), g[..., 0].astype(np.float32),
                          g[..., 1].astype(np.float32), cv2.INTER_CUBIC)  # fmt: skip
        cut = (slice(INTERIOR, size - INTERIOR),) * 2
        errors.append((aligned[z][cut].astype(np.float64) - truth[cut]) ** 2)
    mse = max(float(np.mean(errors)), 1e-10)
    return {
        "residual_vs_clean_rms_px": relative,
        "residual_rms_px": float(np.sqrt(np.nanmean(error[valid] ** 2))),
        "residual_interior_rms_px": float(
            np.sqrt(np.nanmean(error[:, inner][valid[:, inner]] ** 2))
        ),
        "residual_max_px": float(np.nanmax(error[valid])),
        "residual_drift_free_rms_px": _drift_free_rms(q, o, np.asarray(sections)),
        "psnr_db": float(10 * np.log10(255.0**2 / mse)),
    }


def run(args: argparse.Namespace) -> Result:
    full = tifffile.imread(args.data / "flyem_medulla_10nm" / "raw.tif")
    raw = full[args.z0 : args.z0 + args.sections]
    rng = np.random.default_rng(args.seed)
    stack, maps = _distort(raw, args, rng)
    n = len(raw)
    margin = round(maps[0].margin)
    blanks = [n // 3, 2 * n // 3]
    clean = raw[:, margin : margin + args.size, margin : margin + args.size]
    reference = align_stack(clean, "rigid", neighbours=args.neighbours)[
        1
    ]  # the content-following trajectory
    rows = []
    last = args.modes.split(",")[-1]
    cases = [("none", False, 0.0)] + [(m, False, 0.0) for m in args.modes.split(",")]
    cases += [(last, True, 0.0)]
    cases += [(m, False, args.smooth) for m in ("rigid", last) if args.smooth > 0]
    for mode, blank, smooth in cases:
        data = stack.copy()
        if blank:
            data[blanks] = 0
        sections = [z for z in range(n) if not (blank and z in blanks)]
        start = time.perf_counter()
        if mode == "none":
            aligned, report = data, None
        else:
            aligned, report = align_stack(data, mode, smooth=smooth, neighbours=args.neighbours)
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {
            "mode": mode,
            "smooth": smooth,
            "blanked": ",".join(map(str, blanks)) if blank else "",
            **_scores(report, aligned, raw, maps, args.size, sections, reference),
            "s_per_section": seconds / n,
        }
        if report is not None:
            row["bridged"] = ",".join(map(str, report["bad_sections"]))
            row["ncc_after"] = report["mean_ncc_after"]
        rows.append(row)
    notes = [
        f"FlyEM sections {args.z0}..{args.z0 + n - 1}, {args.size}x{args.size} px; each with "
        f"random rotation up to {args.rotation:g} deg, shift up to {args.shift:g} px, smooth "
        f"elastic warp up to {args.warp:g} px; residual = RMS distance of M_z(A_z(o)) from "
        "one global affine over all sections; residual_vs_clean = distance from the undistorted "
        "stack's own rigid alignment moved by the distortion (target < 1 px); PSNR over the "
        "interior against the undistorted sections; smooth = trajectory smoothing (sections)",
        f"floor: a perfect reference-free aligner leaves the linear trend of the distortions "
        f"along z, {_trend_floor(maps, args.size):.2f} px RMS absolute on this stack (its "
        "residual modulo a linear drift is 0)",
        f"peak memory {peak_rss_mib():.0f} MiB",
    ]
    return Result("Serial-section alignment (vemviz align)", rows, notes)
