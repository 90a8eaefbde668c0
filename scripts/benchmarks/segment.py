"""Segmentation: learned mitochondria and cells against the classical baselines, held-out data.

Mitochondria: IoU on EPFL slices 2-3 (the shipped model trained on VNC and EPFL slices 0-1
only), next to Otsu thresholding (dark = mitochondrion).
Cells: dense neuron instances on the FlyEM half z >= 125 (the model trained on z < 125):
variation of information (split, merge, in bits) and adapted Rand error, next to the classical
seeded watershed on the smoothed intensity; and the same on VNC ssTEM slices 10-19 (the model
trained on 0-9), scored slice by slice against the regions inside the membranes of each slice.
``--cells-half train`` scores the training halves instead (used to choose the agglomeration
threshold without touching the test halves).
Seconds per megavoxel on CPU (torch threads as given) include prediction and post-processing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.filters import threshold_otsu

from benchmarks.common import VNC_CELL_TRAIN_SLICES, Result, load_tiff, timed, vnc_cells
from vemviz.metrics import instance_scores, iou
from vemviz.segment import (
    cells_from_boundaries,
    mito_instances,
    predict_probabilities,
    segment_cells,
)
from vemviz.unet import load_model, shipped_model

FLYEM_SPLIT_Z = 125
EPFL_TEST = slice(2, 4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mito-model", type=Path, help="default: the shipped mito weights")
    parser.add_argument("--cells-model", type=Path, help="default: the shipped cells weights")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--only", choices=("mito", "cells"), help="run one half of the benchmark")
    parser.add_argument("--cells-half", choices=("test", "train"), default="test")
    parser.add_argument(
        "--merge-thresholds", type=float, nargs="+", default=[0.5],
        help="agglomeration thresholds to score (the first is vemviz's default)",
    )  # fmt: skip


def _row(task: str, method: str, data: str, voxels: int, **values: Any) -> dict[str, Any]:
    row = {"task": task, "method": method, "data": data, "iou": None, "vi_split": None,
           "vi_merge": None, "vi": None, "adapted_rand_error": None, "objects": None,
           "s_per_mvox": None}  # fmt: skip
    row.update(values)
    if row.pop("seconds", None) is not None:
        row["s_per_mvox"] = round(values["seconds"] / (voxels / 1e6), 2)
    return row


def _mito(args: argparse.Namespace) -> list[dict[str, Any]]:
    raw, voxel = load_tiff(args.data / "epfl_slices" / "raw.tif")
    truth, _ = load_tiff(args.data / "epfl_slices" / "mito_mask.tif")
    raw, truth = raw[EPFL_TEST], truth[EPFL_TEST]
    data, n = "EPFL slices 2-3", raw.size
    rows = []
    timing: dict[str, Any] = {}
    with timed(timing):
        model = load_model(args.mito_model or shipped_model("mito"))
        prob = predict_probabilities(raw, voxel, model)
        labels = mito_instances(prob, voxel)
    rows.append(_row("mito", "U-Net (vemviz)", data, n, iou=iou(truth, labels),
                     objects=int(labels.max()), seconds=timing["seconds"]))  # fmt: skip
    rows.append(_row("mito", "U-Net, probability > 0.5 only", data, n, iou=iou(truth, prob > 0.5)))
    timing = {}
    with timed(timing):
        otsu = raw < threshold_otsu(raw)
    rows.append(_row("mito", "Otsu (baseline)", data, n, iou=iou(truth, otsu),
                     seconds=timing["seconds"]))  # fmt: skip
    return rows


def _cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    raw, voxel = load_tiff(args.data / "flyem_medulla_10nm" / "raw.tif")
    truth, _ = load_tiff(args.data / "flyem_medulla_10nm" / "neuron_labels.tif")
    test = args.cells_half == "test"
    half = slice(FLYEM_SPLIT_Z, None) if test else slice(0, FLYEM_SPLIT_Z)
    data = f"FlyEM z {'>= ' if test else '< '}{FLYEM_SPLIT_Z}"
    rows = _cell_rows(raw[half], voxel, truth[half], data, args)
    raw, voxel = load_tiff(args.data / "vnc_sstem" / "raw.tif")
    codes, _ = load_tiff(args.data / "vnc_sstem" / "labels.tif")
    half = slice(VNC_CELL_TRAIN_SLICES, None) if test else slice(0, VNC_CELL_TRAIN_SLICES)
    data = f"VNC slices {'>= ' if test else '< '}{VNC_CELL_TRAIN_SLICES} (per slice)"
    return rows + _cell_rows(raw[half], voxel, vnc_cells(codes[half]), data, args, per_slice=True)


def _cell_rows(
    raw: np.ndarray, voxel: tuple[float, ...], truth: np.ndarray, data: str,
    args: argparse.Namespace, per_slice: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Learned and classical cells on one volume; ``per_slice``: scored slice by slice (truth
    labelled per slice, as the VNC's), each predicted object split into its slices."""

    def scores(labels: np.ndarray) -> dict[str, float]:
        return instance_scores(truth, _split_by_slice(labels) if per_slice else labels)

    n = raw.size
    rows = []
    timing: dict[str, Any] = {}
    with timed(timing):
        model = load_model(args.cells_model or shipped_model("cells"))
        boundary = predict_probabilities(raw, voxel, model)
        labels = cells_from_boundaries(boundary, voxel, merge_threshold=args.merge_thresholds[0])
    rows.append(_row("cells", f"U-Net boundaries + watershed + agglomeration "
                     f"{args.merge_thresholds[0]}", data, n, **scores(labels),
                     objects=int(labels.max()), seconds=timing["seconds"]))  # fmt: skip
    for threshold in args.merge_thresholds[1:]:
        labels = cells_from_boundaries(boundary, voxel, merge_threshold=threshold)
        rows.append(_row("cells", f"U-Net, agglomeration {threshold}", data, n,
                         **scores(labels), objects=int(labels.max())))  # fmt: skip
    timing = {}
    with timed(timing):
        classical, _ = segment_cells(raw, voxel)
    rows.append(_row("cells", "seeded watershed on smoothed intensity (baseline)", data, n,
                     **scores(classical), objects=int(classical.max()),
                     seconds=timing["seconds"]))  # fmt: skip
    return rows


def _split_by_slice(labels: np.ndarray) -> np.ndarray:
    """Each (slice, label) pair numbered as its own object; 0 stays 0."""
    z = np.arange(labels.shape[0], dtype=np.int64)[:, None, None]
    pairs = np.where(labels > 0, z * (int(labels.max()) + 1) + labels, 0)
    return np.unique(pairs, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def run(args: argparse.Namespace) -> Result:
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VEMVIZ_PROGRESS", "off")
    rows = []
    if args.only in (None, "mito"):
        rows += _mito(args)
    if args.only in (None, "cells"):
        rows += _cells(args)
    notes = [
        "mitochondria: IoU of the foreground on EPFL slices 2-3 (never trained on); target >= 0.80",
        "cells: VI (bits, split + merge) and adapted Rand error on the FlyEM half the model never "
        "saw; target: VI at least 30 % below the classical baseline; also on the VNC ssTEM "
        "slices it never saw, scored slice by slice (cells = regions inside the membranes)",
        f"s_per_mvox: wall seconds per 1e6 voxels, {args.threads} torch thread(s), CPU, load "
        f"average {os.getloadavg()[0]:.1f} at the end (shared machine: times are inflated)",
    ]
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float | np.floating):
                row[key] = round(float(value), 4)
    return Result("Segmentation on held-out real EM (learned vs classical)", rows, notes)
