"""Lateral super-resolution on FlyEM: bicubic against the self-supervised learned model.

Convention of ``../shared/data/README.md``: area-downsample every FlyEM slice by S (on the
largest crop divisible by S), upscale back, score PSNR / mean SSIM (data range 255) against the
originals over all slices. The learned model trains only on the downsampled slices (downsampled
once more by S and restored), never on the originals. Seconds include training.
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

from benchmarks.common import Result, load_tiff, peak_rss_mib, timed
from vemviz import inr
from vemviz.metrics import psnr, ssim_slices
from vemviz.sr import super_resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--time-budget", type=float, default=inr.Training().time_budget,
                        help="learned: training seconds")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> Result:
    volume, _ = load_tiff(args.data / "flyem_medulla_10nm" / "raw.tif")
    rows = []
    notes = [f"load average at start {os.getloadavg()[0]:.2f}"]
    for scale in args.scales:
        side = min(volume.shape[1:]) // scale * scale
        original = volume[:, :side, :side]
        small = np.stack(
            [cv2.resize(s, (side // scale,) * 2, interpolation=cv2.INTER_AREA) for s in original]
        )
        for method in ("bicubic", "learned"):
            row: dict = {"scale": scale, "method": method}
            training = inr.Training(time_budget=args.time_budget, seed=args.seed)
            with timed(row):
                out, model = super_resolve(small, scale, method, training=training)
            row["psnr_db"] = round(psnr(original, out), 3)
            row["ssim"] = round(ssim_slices(original, out), 4)
            row["peak_mib"] = round(peak_rss_mib())
            if model is not None:
                row["train_steps"] = len(model.losses)
            rows.append(row)
            print(row, flush=True)
    notes.append(
        f"FlyEM 250 slices, time budget {args.time_budget} s, seed {args.seed}; "
        f"load average at end {os.getloadavg()[0]:.2f}"
    )
    return Result("Lateral super-resolution (FlyEM 10 nm)", rows, notes)
