"""The stages of the VEM chain as functions on `Volume` objects.

Each function takes a `Volume` (and the stage's options), calls the pure array algorithm of
its module (`vemviz.stitch`, `align`, `restore`, `iso`, `sr`, `segment`, `mesh`) with the voxel
size, and returns the new `Volume` with its voxel size updated, plus a JSON-serialisable report.
The CLI commands and the pipeline both call these functions, so a stage behaves identically
whether it is run by hand or from a pipeline file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vemviz import align as align_mod
from vemviz import iso as iso_mod
from vemviz import mesh as mesh_mod
from vemviz import restore as restore_mod
from vemviz import segment as segment_mod
from vemviz import sr as sr_mod
from vemviz import stitch as stitch_mod
from vemviz.errors import VemvizError
from vemviz.io import write_volume
from vemviz.volume import Volume

Report = dict[str, Any]


def stitch(tile_dir: Path, *, grid: tuple[int, int] | None = None) -> tuple[Volume, Report]:
    """Stitch a tile folder into a one-slice volume (z = 1)."""
    tiles = stitch_mod.read_tile_grid(Path(tile_dir), grid)
    image, report = stitch_mod.stitch_tiles(tiles)
    return Volume(image[np.newaxis], None, {"source": str(tile_dir), "stage": "stitch"}), report


def align(
    volume: Volume, *, mode: str = "rigid", skip: tuple[int, ...] = ()
) -> tuple[Volume, Report]:
    aligned, report = align_mod.align_stack(volume.numpy(), mode=mode, skip=skip)
    return volume.with_data(aligned, stage="align"), report


def inpaint(
    volume: Volume,
    *,
    slices: tuple[int, ...] = (),
    detect: bool = False,
    method: str = "auto",
) -> tuple[Volume, Report]:
    """Fill the given and/or detected damaged slices."""
    stack = volume.numpy()
    report: Report = {"method": method}
    targets = set(slices)
    if detect:
        detection = restore_mod.detect_damaged_slices(stack)
        report["detection"] = detection
        targets.update(int(z) for z in detection["flagged"])
    if not targets:
        if not detect:
            raise VemvizError("nothing to inpaint: pass --slices 3,17,40-42 and/or --detect")
        report["filled"] = []
        return volume.with_data(stack, stage="inpaint"), report
    filled = restore_mod.fill_slices(stack, sorted(targets), method=method)
    report["filled"] = sorted(targets)
    return volume.with_data(filled, stage="inpaint"), report


def _training(time_budget: float | None, device: str, seed: int):
    from vemviz.inr import Training

    if time_budget is not None and not time_budget > 0:
        raise VemvizError(f"--time-budget must be a positive number of seconds, got {time_budget}")
    budget = {} if time_budget is None else {"time_budget": float(time_budget)}
    return Training(device=device, seed=int(seed), **budget)


def _learned_model(path: str | Path | None, kind: str, device: str):
    from vemviz.inr import load_model

    return None if path is None else load_model(Path(path), kind, device)


def _learned_report(model: Any, save_model: str | Path | None) -> Report:
    from vemviz.inr import save_model as save

    if save_model is not None:
        save(model, Path(save_model))
    losses = model.losses
    return {
        "model_factor": model.factor,
        "training_steps": len(losses),
        "training_seconds": round(model.seconds, 2),
        "training_loss_first_last": [losses[0], losses[-1]] if losses else None,
        "saved_model": None if save_model is None else str(save_model),
    }


def iso(
    volume: Volume,
    *,
    factor: float | None = None,
    out_voxel_size: float | None = None,
    method: str = "flow",
    time_budget: float | None = None,
    device: str = "auto",
    seed: int = 0,
    model: str | Path | None = None,
    save_model: str | Path | None = None,
    uncertainty: str | Path | None = None,
) -> tuple[Volume, Report]:
    """Resample along z by ``factor`` or to ``out_voxel_size`` nm (output slice i*F sits at
    input slice i). ``inr`` trains on the volume (or uses ``model``) and can save its weights
    and write its per-voxel uncertainty volume."""
    voxel = volume.require_voxel_size("isotropic reconstruction")
    if (factor is None) == (out_voxel_size is None):
        raise VemvizError("give exactly one of --factor and --out-voxel-size")
    if out_voxel_size is not None:
        factor = iso_mod.factor_for_spacing(voxel, out_voxel_size)
    if method != "inr" and (model, save_model, uncertainty) != (None, None, None):
        raise VemvizError("--model, --save-model and --uncertainty need --method inr")
    result = iso_mod.reconstruct_z(
        volume.numpy(), factor, method=method,
        model=_learned_model(model, "iso", device), training=_training(time_budget, device, seed),
    )  # fmt: skip
    report: Report = {
        "method": method,
        "factor": factor,
        "slices_in": volume.shape[0],
        "slices_out": result.data.shape[0],
    }
    out_voxel = iso_mod.iso_voxel_size(voxel, factor)
    if result.model is not None:
        report.update(_learned_report(result.model, save_model))
    if uncertainty is not None and result.uncertainty is not None:
        write_volume(Volume(result.uncertainty, out_voxel, {"stage": "iso-uncertainty"}),
                     Path(uncertainty))  # fmt: skip
        report["uncertainty"] = str(uncertainty)
    return volume.with_data(result.data, out_voxel, stage="iso"), report


def sr(
    volume: Volume,
    *,
    scale: float,
    method: str = "bicubic",
    time_budget: float | None = None,
    device: str = "auto",
    seed: int = 0,
    model: str | Path | None = None,
    save_model: str | Path | None = None,
) -> tuple[Volume, Report]:
    """Lateral (x, y) super-resolution by ``scale``; ``learned`` trains on the volume itself
    (or uses ``model``) and can save its weights."""
    voxel = volume.require_voxel_size("super-resolution")
    if method != "learned" and (model, save_model) != (None, None):
        raise VemvizError("--model and --save-model need --method learned")
    out, trained = sr_mod.super_resolve(
        volume.numpy(), scale, method=method,
        model=_learned_model(model, "sr", device), training=_training(time_budget, device, seed),
    )  # fmt: skip
    report: Report = {"method": method, "scale": scale, "shape_out": list(out.shape)}
    if trained is not None:
        report.update(_learned_report(trained, save_model))
    return volume.with_data(out, sr_mod.sr_voxel_size(voxel, scale), stage="sr"), report


def segment(
    volume: Volume,
    *,
    target: str = "mito",
    prompts: dict[str, Any] | None = None,
    model: Path | None = None,
) -> tuple[Volume, Report]:
    """Instance labels (uint32) for ``target``; prompts select objects under points/boxes."""
    if model is not None:
        raise VemvizError(
            "this vemviz version has no learned segmentation models yet; run without --model"
        )
    voxel = volume.require_voxel_size("segmentation (sizes are in nm)")
    labels, report = segment_mod.segment(volume.numpy(), voxel, target)
    if prompts is not None:
        labels = segment_mod.select_by_prompts(labels, prompts)
        report["objects_selected"] = int(labels.max())
    report["target"] = target
    return volume.with_data(labels, stage="segment", target=target), report


CLASS_OF_TARGET = {"mito": "mitochondrion", "cells": "cell"}


def mesh(
    labels: Volume,
    out_dir: Path,
    *,
    smooth: int = 20,
    decimate: float = 0.5,
    units: str = "um",
    class_name: str | None = None,
    opacity: float | None = None,
    ply: bool = False,
) -> Report:
    """Mesh a label volume into ``out_dir``; returns the manifest."""
    voxel = labels.require_voxel_size("meshing in physical units")
    target = labels.metadata.get("target")
    class_name = class_name or CLASS_OF_TARGET.get(target, "object")
    if opacity is None:
        opacity = 0.35 if target == "cells" else 1.0
    options = mesh_mod.MeshOptions(smooth_iterations=smooth, decimate=decimate, units=units)
    return mesh_mod.mesh_labels(
        labels.numpy(), voxel, out_dir, class_name=class_name, opacity=opacity,
        options=options, write_ply=ply,
    )  # fmt: skip
