"""Targeted re-imaging: quality against imaging time saved, error-guided vs random tile choice.

On held-out parts of the real volumes with labels (VNC slices 10-19 with mitochondria, FlyEM
z >= 125 with neurons; the error model was fitted on the other parts) the low-resolution scan is
simulated at ``--scale`` by area downsampling. Rows: bicubic; SR only (the self-supervised learned
SR of `vemviz sr`); and per budget (fraction of tiles re-imaged) SR + error-guided and SR + random
re-imaging, both with the SR refitted on the re-imaged tiles before merging (`vemviz
merge-reimage` default, with its default training). Re-imaged tiles are cut from the truth
with a 2 px stage error and registered back. Scores: PSNR/SSIM, mitochondria IoU (VNC) or
neuron VI (FlyEM) of `vemviz segment` (learned models) on the result, and imaging time saved
(time proportional to pixels imaged). Segmentation is scored at ``--seg-budgets`` only (it
dominates the run time on a CPU); there the plan of ``plan-reimage --target`` (error weighted
by segmentation uncertainty) is added, and random choice is repeated with each of
``--random-seeds``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.common import OUT_DIR, Result, load_tiff, peak_rss_mib, timed
from vemviz import reimage, sr, stages
from vemviz.inr import Training
from vemviz.metrics import instance_scores, iou, psnr, ssim_slices
from vemviz.volume import Volume

DATASETS = {
    "vnc": ("vnc_sstem/raw.tif", "vnc_sstem/mito_mask.tif", np.s_[10:20, :512, :512], "mito"),
    "flyem": ("flyem_medulla_10nm/raw.tif", "flyem_medulla_10nm/neuron_labels.tif",
              np.s_[125:189], "cells"),
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", default="vnc,flyem")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--budgets", default="0.05,0.1,0.2,0.5")
    parser.add_argument("--seg-budgets", default="0.1", help="budgets scored by segmentation")
    parser.add_argument("--random-seeds", default="0,1,2", help="random choices at seg budgets")
    parser.add_argument("--tile", type=int, default=64, help="tile size in full-res pixels")
    parser.add_argument("--train-seconds", type=float, default=60.0, help="per SR-only training")
    parser.add_argument("--train-steps", type=int, default=600, help="per SR-only training")


def _score(volume: np.ndarray, truth: np.ndarray, labels: np.ndarray, voxel, target: str,
           segment: bool) -> dict[str, Any]:  # fmt: skip
    scores: dict[str, Any] = {"psnr": psnr(truth, volume), "ssim": ssim_slices(truth, volume)}
    if segment:
        seg = stages.segment(Volume(volume, voxel), target=target)[0].numpy()
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
    training = Training(steps=args.train_steps, time_budget=args.train_seconds, device="auto")
    assessment = reimage.assess(low, low_voxel, scale=args.scale, tile=args.tile)
    shape = assessment.sr.shape
    truth = truth_full[:, : shape[1], : shape[2]]
    labels = labels[:, : shape[1], : shape[2]]
    low_only = reimage.time_estimate(shape, args.scale, 0, 0)["time_saved"]
    seg_budgets = {float(b) for b in args.seg_budgets.split(",")}
    rows: list[dict[str, Any]] = []

    def add(method: str, budget: float, volume: np.ndarray, saved: float, **extra: Any) -> None:
        scores = _score(volume, truth, labels, voxel, target, budget in seg_budgets | {0.0})
        rows.append({"data": name, "method": method, "budget": budget, **scores,
                     "time_saved": saved, **extra})  # fmt: skip

    add("bicubic", 0.0, assessment.bicubic, low_only)
    timing: dict[str, Any] = {}
    with timed(timing):
        learned = sr.super_resolve(low, args.scale, "learned", training=training)[0]
    add("SR only (learned)", 0.0, learned, low_only, seconds=timing["seconds"])
    curve: dict[str, list] = {"error": [], "random": []}
    for budget in (float(b) for b in args.budgets.split(",")):
        for method, plan in _plans(assessment, Volume(low, low_voxel), budget, target,
                                   budget in seg_budgets, args):  # fmt: skip
            tiles = reimage.truth_tiles(truth_full, plan, stage_error_px=2.0)
            with timed(timing):  # at merge-reimage's defaults: REFIT_STEPS or 240 s
                refit = reimage.refit_sr(low, tiles, args.scale, Training(device="auto"))
                merged, _ = reimage.merge_tiles(refit, low, plan, tiles)
            saved = plan["time"]["time_saved"]
            add(method, budget, merged, saved, seconds=timing["seconds"])
            for choice in curve:
                if method == f"SR + {choice} re-imaging":
                    curve[choice].append((saved, rows[-1]["psnr"]))
    return rows, curve


def _plans(
    assessment: reimage.Assessment, low: Volume, budget: float, target: str, scored: bool,
    args: argparse.Namespace,
) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """The (method, plan) pairs compared at one budget: error-guided, at scored budgets also
    guided by the segmentation ``target``, and random choice (every seed at scored budgets)."""
    plans = [("SR + error re-imaging", reimage.make_plan(assessment, budget=budget))]
    if scored:
        plan = stages.plan_reimage(low, scale=args.scale, budget=budget, tile=args.tile,
                                   target=target)[0]  # fmt: skip
        plans.append((f"SR + error re-imaging, --target {target}", plan))
    seeds = [int(s) for s in args.random_seeds.split(",")]
    for seed in seeds if scored else seeds[:1]:
        chosen = reimage.random_tiles(assessment.priority.shape, budget, seed=seed)
        method = "SR + random re-imaging" + ("" if seed == seeds[0] else f" (seed {seed})")
        plans.append((method, reimage.make_plan(assessment, budget=budget, chosen=chosen)))
    return plans


def run(args: argparse.Namespace) -> Result:
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for name in args.datasets.split(","):
        dataset_rows, curves[name] = _run_dataset(name, args)
        rows += dataset_rows
    _plot(curves, args)
    notes = [f"scale {args.scale}, tile {args.tile} px + 8 px margin, stage error 2 px, "
             f"random choice seeds {args.random_seeds} (the first one alone at budgets "
             f"not scored by segmentation); SR-only training {args.train_steps} steps or "
             f"{args.train_seconds:g} s, refits at merge-reimage's defaults "
             f"({reimage.REFIT_STEPS} steps or 240 s); "
             f"peak RSS {peak_rss_mib():.0f} MiB"]  # fmt: skip
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
