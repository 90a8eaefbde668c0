"""Isotropic reconstruction on FlyEM: linear, cubic, optical flow and the learned inr.

Convention of ``../shared/data/README.md``: keep every F-th z slice of the isotropic FlyEM
volume (10 nm), reconstruct ``(Z_in - 1) * F + 1`` slices and score PSNR / mean SSIM (data range
255) on the synthesized slices only. The inr trains on the decimated volume alone (its XY
planes), never on the held-out slices. Each row gives the wall-clock seconds of the method
(training included) and the process's peak resident memory so far. Figures (one XZ plane:
truth, cubic, inr) go to ``benchmarks-out/``; with ``--vnc`` the inr also runs on a crop of the
anisotropic VNC serial-section stack (50 x 4.6 x 4.6 nm, factor 10.87) and its XZ plane is
saved beside cubic's (no truth there: a visual check).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import OUT_DIR, ROOT, Result, load_tiff, peak_rss_mib, timed
from vemviz import inr, iso
from vemviz.iso import reconstruct_z
from vemviz.metrics import psnr, ssim_slices

METHODS = ("linear", "cubic", "flow", "inr")
FIGURES = ROOT / "docs" / "figures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--factors", type=float, nargs="+", default=[4, 8])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--time-budget", type=float, default=iso.DEFAULT_TIME_BUDGET,
                        help="inr training seconds (both networks)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=inr.DEFAULT_STEPS["iso"],
                        help="inr training steps (the time budget may stop it first)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vnc", action="store_true", help="skip the VNC stack")
    parser.add_argument("--vnc-crop", type=int, default=256, help="VNC y/x crop (px)")
    parser.add_argument("--commit-figures", action="store_true",
                        help="also copy the figures (small PNGs) to docs/figures/")  # fmt: skip


def _training(args: argparse.Namespace) -> inr.Training:
    return inr.Training(steps=args.steps, time_budget=args.time_budget, seed=args.seed)


def _xz_figure(panels: list[np.ndarray], path: Path, aspect: float = 1.0) -> Path:
    """Panels (rows = z) side by side, 4 px gaps, z stretched by ``aspect``."""
    rows = []
    for panel in panels:
        image = np.clip(np.rint(panel), 0, 255).astype(np.uint8)
        if aspect != 1.0:
            size = (image.shape[1], round(image.shape[0] * aspect))
            image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
        rows.append(image)
        rows.append(np.full((image.shape[0], 4), 255, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.hstack(rows[:-1]))
    return path


def _flyem(args: argparse.Namespace, volume: np.ndarray, factor: float) -> tuple[list, dict]:
    step = int(factor)
    if step != factor:
        raise SystemExit("FlyEM factors must be whole numbers (keep every F-th slice)")
    n = (volume.shape[0] - 1) // step * step + 1
    truth, low = volume[:n], volume[:n:step]
    synthesized = np.arange(n) % step != 0
    rows, outputs = [], {}
    for method in args.methods:
        row: dict = {"factor": step, "method": method}
        with timed(row):
            result = reconstruct_z(low, step, method, training=_training(args))
        row["psnr_db"] = round(psnr(truth[synthesized], result.data[synthesized]), 3)
        row["ssim"] = round(ssim_slices(truth[synthesized], result.data[synthesized]), 4)
        row["peak_mib"] = round(peak_rss_mib())
        if result.model is not None:
            row["train_steps"] = len(result.model.losses)
            row["train_s"] = round(result.model.seconds, 1)
            row["fusion_weight"] = round(result.model.fusion_weight, 3)
        rows.append(row)
        outputs[method] = result.data
        print(row, flush=True)
    return rows, {"truth": truth, **outputs}


def _vnc(args: argparse.Namespace) -> tuple[dict, list[str]]:
    path = args.data / "vnc_sstem" / "raw.tif"
    if not path.exists():
        return {}, [f"VNC skipped: {path} not found"]
    stack, voxel = load_tiff(path)
    crop = args.vnc_crop
    stack = stack[:, :crop, :crop]
    factor = voxel[0] / voxel[1]
    row: dict = {"factor": round(factor, 2), "shape_in": list(stack.shape)}
    with timed(row, "inr_seconds"):
        learned = reconstruct_z(stack, factor, "inr", training=_training(args))
    cubic = reconstruct_z(stack, factor, "cubic").data
    y = crop // 2
    figures = []
    for name, data in (("cubic", cubic), ("inr", learned.data)):
        figures.append(str(_xz_figure([data[:, y]], OUT_DIR / f"iso_vnc_xz_{name}.png")))
    row["figures"] = figures
    row["train_steps"] = len(learned.model.losses)
    row["fusion_weight"] = round(learned.model.fusion_weight, 3)
    row["mean_uncertainty"] = round(float(learned.uncertainty.mean()), 3)
    return row, [f"VNC {stack.shape} crop, factor {factor:.2f}: XZ figures {figures}"]


def run(args: argparse.Namespace) -> Result:
    volume, _ = load_tiff(args.data / "flyem_medulla_10nm" / "raw.tif")
    rows: list[dict] = []
    notes = [
        "FlyEM 250^3, keep every F-th slice, PSNR/SSIM on synthesized slices only; inr trained on "
        f"the decimated volume only ({args.steps} steps, time budget {args.time_budget} s, "
        f"seed {args.seed}); "
        f"load average at start {os.getloadavg()[0]:.2f}; peak_mib is the process peak so far",
    ]
    figures = []
    for factor in args.factors:
        factor_rows, outputs = _flyem(args, volume, factor)
        rows += factor_rows
        panels = [outputs[k][:, volume.shape[1] // 2] for k in ("truth", "cubic", "inr")
                  if k in outputs]  # fmt: skip
        figures.append(_xz_figure(panels, OUT_DIR / f"iso_flyem_xz_x{int(factor)}.png"))
    extra: dict = {}
    if not args.no_vnc and "inr" in args.methods:
        extra["vnc"], vnc_notes = _vnc(args)
        notes += vnc_notes
        figures += [Path(p) for p in extra["vnc"].get("figures", [])]
    if args.commit_figures:
        FIGURES.mkdir(parents=True, exist_ok=True)
        for figure in figures:
            shutil.copyfile(figure, FIGURES / figure.name)
    notes.append(f"figures: {', '.join(str(f) for f in figures)}")
    notes.append(f"load average at end {os.getloadavg()[0]:.2f}")
    return Result("Isotropic reconstruction (FlyEM 10 nm)", rows, notes, extra)
