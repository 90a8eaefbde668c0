"""The end-to-end demo: raw slices to restored, isotropic, segmented, meshed, rendered, Unity.

Without ``--data`` it generates the built-in phantom (anisotropic, 40 x 8 x 8 nm, with a blank
slice), so every stage can also be scored against known truth: the restored slice against the
noise-free phantom, the synthesized slices of the isotropic volume against the same scene
sampled at 8 nm in z, and the mitochondria against the phantom's labels. With ``--data`` the
same pipeline runs on the user's volume and the figures are counts. The demo writes a
pipeline file beside its outputs, so ``vemviz run DIR/pipeline.toml`` reruns (or resumes) it.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from vemviz.io import read_volume, write_volume
from vemviz.io.atomic import atomic_path, write_json
from vemviz.metrics import iou, psnr, ssim_slices
from vemviz.phantom import Phantom, make_phantom
from vemviz.pipeline import StageRecord, run_pipeline

PHANTOM_SHAPE = (32, 192, 192)
PHANTOM_VOXEL = (40.0, 8.0, 8.0)
DAMAGED_SLICE = 11


def demo_config(input_path: str, factor: int, render: bool, blender: str | None) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [
        {"stage": "inpaint", "detect": True, "method": "flow"},
        {"stage": "iso", "factor": factor, "method": "inr", "time_budget": 30},
        {"stage": "segment", "target": "mito", "method": "learned"},
        {"stage": "mesh", "out": "meshes"},
    ]
    if render:
        stage: dict[str, Any] = {"stage": "render", "out": "render.png"}
        if blender:
            stage["blender"] = blender
        stages.append(stage)
    stages.append({"stage": "export-unity", "project": "unity", "name": "demo"})
    return {"input": input_path, "workspace": "workspace", "stages": stages}


def _toml(config: dict[str, Any]) -> str:
    """Write the (flat) demo config as TOML; tomllib checks the result parses back."""

    def value(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [f"{k} = {value(v)}" for k, v in config.items() if k != "stages"]
    for stage in config["stages"]:
        lines += ["", "[[stages]]", *[f"{k} = {value(v)}" for k, v in stage.items()]]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != config:
        raise RuntimeError("demo pipeline did not round-trip through TOML")
    return text


def _phantom_figures(phantom: Phantom, records: list[StageRecord], factor: int) -> dict[str, str]:
    by_stage = {r.stage: r for r in records}
    figures = {}
    restored = read_volume(by_stage["inpaint"].output).numpy()
    z = DAMAGED_SLICE
    value = psnr(phantom.clean.numpy()[z], restored[z])
    figures["inpaint"] = f"slice {z} restored: {value:.2f} dB vs truth"
    iso = read_volume(by_stage["iso"].output).numpy()
    extent = tuple(s * v for s, v in zip(PHANTOM_SHAPE, PHANTOM_VOXEL, strict=True))
    truth = make_phantom(
        (iso.shape[0], *PHANTOM_SHAPE[1:]), (PHANTOM_VOXEL[0] / factor, *PHANTOM_VOXEL[1:]),
        extent_nm=extent, thickness_samples=1,
    )  # fmt: skip
    synthesized = np.arange(iso.shape[0]) % factor != 0
    iso_psnr = psnr(truth.clean.numpy()[synthesized], iso[synthesized])
    iso_ssim = ssim_slices(truth.clean.numpy()[synthesized], iso[synthesized])
    figures["iso"] = f"x{factor}: {iso_psnr:.2f} dB / SSIM {iso_ssim:.3f} (new slices)"
    labels = read_volume(by_stage["segment"].output).numpy()
    figures["segment"] = f"{labels.max()} objects, mito IoU {iou(truth.mito.numpy(), labels):.3f}"
    return figures


def _count_figures(records: list[StageRecord]) -> dict[str, str]:
    figures = {}
    for r in records:
        if r.stage == "inpaint":
            figures["inpaint"] = f"filled slices {r.report.get('filled', [])}"
        elif r.stage == "iso":
            figures["iso"] = f"{r.report['slices_in']} -> {r.report['slices_out']} slices"
        elif r.stage == "segment":
            figures["segment"] = f"{r.report['objects']} objects"
    return figures


def _file_figures(records: list[StageRecord]) -> dict[str, str]:
    figures = {}
    for r in records:
        if r.stage == "mesh":
            faces = sum(o["faces"] for o in r.report["objects"])
            closed = sum(o["watertight"] for o in r.report["objects"])
            figures["mesh"] = f"{len(r.report['objects'])} meshes, {faces} faces, {closed} closed"
        elif r.stage == "render":
            figures["render"] = r.report["png"]
        elif r.stage == "export-unity":
            figures["export-unity"] = r.report["dataset"]
    return figures


def run_demo(
    out_dir: Path,
    data: Path | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    *,
    render: bool = True,
    blender: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the report also written to report.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phantom = None
    if data is None:
        phantom = make_phantom(PHANTOM_SHAPE, PHANTOM_VOXEL, damaged_slices=(DAMAGED_SLICE,))
        input_path = write_volume(phantom.raw, out_dir / "input" / "raw.tif")
        volume = phantom.raw
    else:
        volume = read_volume(data, voxel_size)
        input_path = write_volume(volume, out_dir / "input" / "raw.tif")
    z, y, x = volume.require_voxel_size("the demo")
    factor = max(1, round(z / ((y + x) / 2)))
    config = demo_config(str(input_path.relative_to(out_dir)), factor, render, blender)
    with atomic_path(out_dir / "pipeline.toml") as temp:
        temp.write_text(_toml(config))
    records = run_pipeline(config, out_dir)
    figures = _phantom_figures(phantom, records, factor) if phantom else _count_figures(records)
    figures.update(_file_figures(records))
    report = {
        "input": str(data) if data else "phantom",
        "voxel_size_nm": list(volume.voxel_size_nm or ()),
        "stages": [
            {
                "stage": r.stage,
                "seconds": round(r.seconds, 2),
                "skipped": r.skipped,
                "figure": figures.get(r.stage, ""),
                "output": str(r.output),
                "report": r.report,
            }
            for r in records
        ],  # fmt: skip
        "total_seconds": round(sum(r.seconds for r in records), 2),
    }
    write_json(out_dir / "report.json", report)
    table = Table(title=f"vemviz demo -> {out_dir}")
    for column in ("stage", "seconds", "key figure"):
        table.add_column(column)
    for row in report["stages"]:
        table.add_row(row["stage"], f"{row['seconds']:.1f}", row["figure"])
    table.add_row("total", f"{report['total_seconds']:.1f}", "")
    (console or Console()).print(table)
    return report
