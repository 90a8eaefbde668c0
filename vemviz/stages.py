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


def damage_mask(
    volume: Volume,
    *,
    slices: tuple[int, ...] = (),
    detect: bool = False,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Report]:
    """The voxels to restore: given whole ``slices``, a given ``mask`` and/or detected damage."""
    stack = volume.numpy()
    report: Report = {}
    damaged = np.zeros(stack.shape, dtype=bool)
    if mask is not None:
        damaged |= restore_mod.check_mask(stack, mask)
    damaged[list(slices)] = True
    if detect:
        report["detection"], detected = restore_mod.detect_damage(stack)
        damaged |= detected
    if not detect and mask is None and not slices:
        raise VemvizError(
            "nothing to inpaint: pass --slices 3,17,40-42, --mask MASK and/or --detect"
        )
    return damaged, report


def inpaint(
    volume: Volume,
    *,
    slices: tuple[int, ...] = (),
    detect: bool = False,
    method: str = "auto",
    mask: np.ndarray | None = None,
    steps: int = 1,
    samples: int = 1,
    seed: int = 0,
    fine_tune: int = 0,
    weights: str | None = None,
    device: str = "auto",
) -> tuple[Volume, Report]:
    """Restore the given slices, the voxels of a given mask and/or the detected damage."""
    damaged, report = damage_mask(volume, slices=slices, detect=detect, mask=mask)
    report["method"] = method
    options = restore_mod.DiffusionOptions(
        Path(weights) if weights else None, steps, samples, seed, fine_tune, device
    )
    filled, fill_report = restore_mod.fill_damage(volume.numpy(), damaged, method, options)
    report.update(fill_report)
    report["filled"] = sorted(fill_report["methods"])
    report["damaged_voxels"] = int(damaged.sum())
    return volume.with_data(filled, stage="inpaint"), report


def iso(volume: Volume, *, factor: float, method: str = "flow") -> tuple[Volume, Report]:
    """Resample along z by ``factor`` (output slice i*F sits at input slice i)."""
    voxel = volume.require_voxel_size("isotropic reconstruction")
    out = iso_mod.interpolate_z(volume.numpy(), factor, method=method)
    report = {
        "method": method,
        "factor": factor,
        "slices_in": volume.shape[0],
        "slices_out": out.shape[0],
    }
    return volume.with_data(out, iso_mod.iso_voxel_size(voxel, factor), stage="iso"), report


def sr(volume: Volume, *, scale: float, method: str = "bicubic") -> tuple[Volume, Report]:
    """Lateral (x, y) super-resolution by ``scale``."""
    voxel = volume.require_voxel_size("super-resolution")
    out = sr_mod.upscale_xy(volume.numpy(), scale, method=method)
    report = {"method": method, "scale": scale, "shape_out": list(out.shape)}
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
