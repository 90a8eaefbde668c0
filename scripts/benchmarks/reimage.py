"""Targeted re-imaging: quality against imaging time saved, error-guided vs random tile choice.

On the held-out parts of the real volumes with labels (VNC slices 10-19 with mitochondria,
FlyEM z >= 125 with neurons; the error model was fitted on the other parts), the low-resolution
scan is simulated at ``--scale`` by area downsampling. Rows: bicubic, SR only, and for each
budget (fraction of tiles re-imaged) SR + error-guided and SR + random re-imaging. Re-imaged
tiles are cut from the truth with a 2 px stage error and registered back. Scores: PSNR/SSIM of
the merged volume, mitochondria IoU (VNC) or neuron VI (FlyEM) of `vemviz segment` on it, and
the imaging time saved (time proportional to pixels imaged).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.common import OUT_DIR, Result, load_tiff, peak_rss_mib, timed
from vemviz import reimage, stages
from vemviz.metrics import instance_scores, iou, psnr, ssim_slices
from vemviz.volume import Volume

DATASETS = {
    "vnc": ("vnc_sstem/raw.tif", "vnc_sstem/mito_mask.tif", slice(10, 20), "mito"),
    "flyem": ("flyem_medulla_10nm/raw.tif", "flyem_medulla_10nm/neuron_labels.tif",
              slice(125, 250), "cells"),
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", default="vnc,flyem")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--budgets", default="0.05,0.1,0.2,0.5")
    parser.add_argument("--tile", type=int, default=64, help="tile size in full-res pixels")
    parser.add_argument("--sr-method", default="bicubic")
    parser.add_argument("--seeds", type=int, default=3, help="random-choice repetitions")


def _score(volume: np.ndarray, truth: np.ndarray, labels: np.ndarray, voxel, target: str):
    seg = stages.segment(Volume(volume, voxel), target=target)[0].numpy()
    scores: dict[str, Any] = {"psnr": psnr(truth, volume), "ssim": ssim_slices(truth, volume)}
    if target == "mito":
        scores["mito_iou"] = iou(labels, seg)
    else:
        scores["neuron_vi"] = instance_scores(labels, seg)["vi"]
    return scores


def _run_dataset(name: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    raw_path, label_path, keep, target = DATASETS[name]
    raw, voxel = load_tiff(args.data / raw_path)
    labels, _ = load_tiff(args.data / label_path)
    truth_full, labels = raw[keep], labels[keep]
    low = reimage.area_downsample(truth_full, args.scale)
    low_voxel = (voxel[0], voxel[1] * args.scale, voxel[2] * args.scale)
    timing: dict[str, Any] = {}
    with timed(timing):
        assessment = reimage.assess(
            low, low_voxel, scale=args.scale, tile=args.tile, sr_method=args.sr_method,
            segmenter=stages._segmenter(target, voxel),
        )  # fmt: skip
    sr = assessment.sr
    truth = truth_full[:, : sr.shape[1], : sr.shape[2]]
    labels = labels[:, : sr.shape[1], : sr.shape[2]]
    low_only = reimage.time_estimate(sr.shape, args.scale, 0, 0)["time_saved"]
    rows: list[dict[str, Any]] = []

    def add(method: str, budget: float, scores: dict[str, float], saved: float, **extra) -> None:
        rows.append({"data": name, "method": method, "budget": budget, **scores,
                     "time_saved": saved, **extra})  # fmt: skip

    add("bicubic", 0.0, _score(assessment.bicubic, truth, labels, voxel, target), low_only)
    add(f"SR ({args.sr_method})", 0.0, _score(sr, truth, labels, voxel, target), low_only,
        seconds=timing["seconds"])  # fmt: skip
    curve: dict[str, list] = {"error": [], "random": []}
    for budget in (float(b) for b in args.budgets.split(",")):
        for choice in ("error", "random"):
            seeds = [0] if choice == "error" else list(range(args.seeds))
            scores, plan = [], {}
            for seed in seeds:
                chosen = None
                if choice == "random":
                    chosen = reimage.random_tiles(assessment.priority.shape, budget, seed)
                plan = reimage.make_plan(assessment, budget=budget, chosen=chosen)
                tiles = reimage.truth_tiles(truth_full, plan, stage_error_px=2.0, seed=seed)
                merged, _ = reimage.merge_tiles(sr, plan, tiles)
                scores.append(_score(merged, truth, labels, voxel, target))
            mean = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
            saved = plan["time"]["time_saved"]
            add(f"SR + {choice} re-imaging", budget, mean, saved)
            curve[choice].append((saved, mean["psnr"]))
    return rows, curve


def run(args: argparse.Namespace) -> Result:
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for name in args.datasets.split(","):
        dataset_rows, curves[name] = _run_dataset(name, args)
        rows += dataset_rows
    _plot(curves, args)
    notes = [f"scale {args.scale}, tile {args.tile} px + 8 px margin, stage error 2 px; "
             f"random choice averaged over {args.seeds} seeds; peak RSS "
             f"{peak_rss_mib():.0f} MiB"]  # fmt: skip
    return Result(f"Targeted re-imaging at scale {args.scale}", rows, notes, {"curves": curves})


def _plot(curves: dict[str, Any], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (name, curve) in zip(axes[0], curves.items(), strict=True):
        for choice, style in (("error", "o-"), ("random", "s--")):
            saved, quality = zip(*curve[choice], strict=True)
            ax.plot(np.array(saved) * 100, quality, style, label=f"SR + {choice} re-imaging")
        ax.set_xlabel("imaging time saved (%)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{name}, scale {args.scale}")
        ax.invert_xaxis()
        ax.legend()
    fig.tight_layout()
    OUT_DIR.mkdir(exist_ok=True)
    fig.savefig(OUT_DIR / "reimage_quality_vs_time.png", dpi=100)
    plt.close(fig)
