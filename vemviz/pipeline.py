"""Pipelines: run several stages on one input with a resumable, provenance-keeping workspace.

A pipeline file (TOML) names the input, an optional voxel size, a workspace folder and a list of
stages with their options:

    input = "raw.tif"
    voxel_size = [40, 8, 8]        # optional, overrides the file's metadata
    workspace = "workspace"

    [[stages]]
    stage = "inpaint"
    detect = true

    [[stages]]
    stage = "iso"
    factor = 5

Volume stages (align, inpaint, iso, sr, segment) pass a volume along; `mesh` meshes the latest
label volume; `render` and `export-unity` use the latest mesh folder. Every stage's output is
kept in the workspace (``NN-stage.ome.zarr`` for volumes, folders for meshes, files for
renders) beside ``NN-stage.json`` holding its provenance: stage, options, vemviz version, the
SHA-256 of its input, the hash of its output, its duration and report. A second run skips
every stage whose stage name, options, version, code (`code_fingerprint`) and input hash are
unchanged and whose output is still there, so editing one stage's options reruns that stage
and those after it only, and a changed vemviz reruns them all.

Large volumes: ``memory_budget = "4GiB"`` (the default) and ``scheduler = "tcp://..."``
(optional) at the top of the file work as the CLI's ``--memory-budget`` and ``--scheduler``:
a volume stage whose volume (or, for iso and sr, result) is over the budget runs block by
block straight into its workspace store (`vemviz.stages.choose_blocks`), the next stage reads
that store lazily, and ``mesh`` meshes by blocks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vemviz import __version__, stages
from vemviz.chunked import DEFAULT_BUDGET, parse_memory, run_chunked
from vemviz.errors import VemvizError
from vemviz.io import read_volume, write_volume
from vemviz.io.atomic import write_json
from vemviz.progress import status
from vemviz.render import RENDER_SCRIPT
from vemviz.segment import read_prompts
from vemviz.volume import Volume

VOLUME_STAGES = {
    "align": stages.align,
    "inpaint": stages.inpaint,
    "iso": stages.iso,
    "sr": stages.sr,
    "segment": stages.segment,
}
FILE_STAGES = ("mesh", "render", "export-unity")
# Options of the stages that are not plain functions of a volume. File stages also take
# ``out``: where to write (relative to the pipeline file) instead of the workspace.
OTHER_STAGE_OPTIONS = {
    "render": ("engine", "samples", "resolution", "cut", "turntable", "blender", "timeout"),
    "export-unity": ("project", "name", "volume"),
}


@dataclass
class StageRecord:
    stage: str
    output: Path
    seconds: float
    skipped: bool
    report: dict[str, Any] = field(default_factory=dict)


def hash_volume(volume: Volume) -> str:
    """SHA-256 of a volume's shape, dtype, voxel size and voxels (slice by slice)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([volume.shape, str(volume.dtype), volume.voxel_size_nm]).encode())
    for z in range(volume.shape[0]):
        digest.update(np.ascontiguousarray(np.asarray(volume.data[z])).tobytes())
    return digest.hexdigest()


def hash_path(path: Path, ignore: str | None = None) -> str:
    """SHA-256 of a file, or of a folder's files (names and bytes, sorted), leaving out files
    under folders named ``ignore``."""
    digest = hashlib.sha256()
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and ignore not in p.parts)
        if path.is_dir() else [path]
    )  # fmt: skip
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


# What the stages run: this package (code and shipped weights), the Unity exporter beside it and
# the Blender render script.
CODE = (Path(__file__).parent, Path(__file__).parents[1] / "unity_bridge", RENDER_SCRIPT)


def code_fingerprint(paths: Sequence[Path] = CODE) -> str:
    """SHA-256 of the files the stages run (``paths`` that exist; compiled caches left out): a
    stage reruns when the code that made its output changed, also between two checkouts of one
    version."""
    digest = hashlib.sha256()
    for path in (p for p in paths if p.exists()):
        digest.update(hash_path(path, ignore="__pycache__").encode())
    return digest.hexdigest()


def load_pipeline(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Parse a pipeline TOML file; returns the config and the folder paths are relative to."""
    path = Path(path)
    if not path.exists():
        raise VemvizError(f"pipeline file not found: {path}")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise VemvizError(f"{path} is not valid TOML: {exc}") from exc
    return config, path.parent


def _check_options(name: str, options: dict[str, Any]) -> None:
    if name in OTHER_STAGE_OPTIONS:
        allowed = list(OTHER_STAGE_OPTIONS[name])
    else:
        function = VOLUME_STAGES.get(name, stages.mesh)
        skip = ("volume", "labels", "out_dir", "transforms")  # transforms: from an align stage
        allowed = [p for p in inspect.signature(function).parameters if p not in skip]
    if name in FILE_STAGES:
        allowed.append("out")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise VemvizError(f"unknown option(s) {unknown} for stage {name!r}; allowed: {allowed}")


def _stage_kwargs(name: str, options: dict[str, Any], base: Path) -> dict[str, Any]:
    kwargs = dict(options)
    for key in ("slices", "skip"):
        if key in kwargs:
            kwargs[key] = tuple(int(v) for v in kwargs[key])
    if name == "segment" and "prompts" in kwargs:
        kwargs["prompts"] = read_prompts(base / kwargs["prompts"])
    return kwargs


def _provenance_matches(record_path: Path, output: Path, expected: dict[str, Any]) -> dict | None:
    if not record_path.exists() or not output.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return None
    same = all(record.get(k) == v for k, v in expected.items())
    return record if same else None


def _run_file_stage(
    name: str, options: dict[str, Any], output: Path, mesh_dir: Path | None,
    labels: Volume | None, image: Volume | None, base: Path,
) -> dict[str, Any]:  # fmt: skip
    if name == "mesh":
        if labels is None:
            raise VemvizError("the mesh stage needs a segment stage before it")
        return stages.mesh(labels, output, **options)
    if mesh_dir is None:
        raise VemvizError(f"the {name} stage needs a mesh stage before it")
    if name == "render":
        from vemviz.render import render_meshes

        render_meshes(mesh_dir, output, **options)
        return {"png": str(output)}
    from unity_bridge import export_unity

    dataset = export_unity(
        mesh_dir, output, name=options.get("name"),
        volume=image if options.get("volume", True) else None,
    )  # fmt: skip
    return {"dataset": str(dataset)}


def run_pipeline(config: dict[str, Any], base: Path, *, force: bool = False) -> list[StageRecord]:
    """Run ``config``'s stages; paths in it are relative to ``base``."""
    if "input" not in config or "stages" not in config:
        raise VemvizError("a pipeline needs 'input' and a list of [[stages]]")
    workspace = base / config.get("workspace", "workspace")
    workspace.mkdir(parents=True, exist_ok=True)
    code = code_fingerprint()
    budget = parse_memory(str(config.get("memory_budget", DEFAULT_BUDGET)))
    scheduler = config.get("scheduler")
    current = read_volume(base / config["input"], config.get("voxel_size"))
    current_hash = hash_volume(current)
    image: Volume | None = current
    labels: Volume | None = None
    mesh_dir: Path | None = None
    alignment: dict[str, Any] | None = None  # the last align stage's transforms
    records = []
    for index, spec in enumerate(config["stages"], start=1):
        spec = dict(spec)
        name = spec.pop("stage", None)
        if name not in VOLUME_STAGES and name not in FILE_STAGES:
            raise VemvizError(f"stage {index} is {name!r}; known stages: "
                              f"{', '.join([*VOLUME_STAGES, *FILE_STAGES])}")  # fmt: skip
        _check_options(name, spec)
        out_option = spec.pop("out", None) or spec.pop("project", None)
        stem = f"{index:02d}-{name}"
        if name in VOLUME_STAGES:
            output = workspace / f"{stem}.ome.zarr"
        elif out_option:
            output = base / out_option
        else:
            output = workspace / (f"{stem}.png" if name == "render" else stem)
        expected = {"stage": name, "options": spec, "vemviz_version": __version__,
                    "vemviz_code": code, "input_hash": current_hash}  # fmt: skip
        record_path = workspace / f"{stem}.json"
        previous = None if force else _provenance_matches(record_path, output, expected)
        started = time.perf_counter()
        if previous is not None:
            status(f"[dim]skip[/] {stem}: inputs and options unchanged")
            report = previous["report"]
            output_hash = previous["output_hash"]
            if name in VOLUME_STAGES:
                loaded = read_volume(output)
                current = loaded.with_data(loaded.data, **previous.get("metadata", {}))
        else:
            status(f"[bold]run[/] {stem}")
            kwargs = _stage_kwargs(name, spec, base)
            if name == "inpaint" and alignment and alignment["shape"] == list(current.shape):
                kwargs.setdefault("transforms", alignment)  # its padding is not damage
            if name in VOLUME_STAGES:
                blocks = stages.choose_blocks(name, current, kwargs, budget, scheduler)
                if blocks is None:
                    current, report = VOLUME_STAGES[name](current, **kwargs)
                    write_volume(current, output, is_label=name == "segment")
                else:
                    report = run_chunked(blocks, current, output, memory_budget=budget,
                                         scheduler=scheduler)  # fmt: skip
                    target = {"target": kwargs.get("target", "mito")} if name == "segment" else {}
                    loaded = read_volume(output)
                    current = loaded.with_data(loaded.data, stage=name, **target)
                output_hash = hash_volume(current)
            else:
                if name == "mesh":  # label volumes over the budget are meshed by blocks
                    kwargs = {"memory_budget": budget, "scheduler": scheduler, **kwargs}
                report = _run_file_stage(name, kwargs, output, mesh_dir, labels, image, base)
                output_hash = hash_path(output)
            meta = {k: v for k, v in current.metadata.items() if k in ("stage", "target")}
            record = {**expected, "output": str(output), "output_hash": output_hash,
                      "seconds": round(time.perf_counter() - started, 3), "report": report,
                      "metadata": meta}  # fmt: skip
            write_json(record_path, record)
        if name == "align":
            alignment = report["transforms"]
        if name == "segment":
            labels = current
        elif name in VOLUME_STAGES:
            image = current
        elif name == "mesh":
            mesh_dir = output
        current_hash = output_hash
        seconds = time.perf_counter() - started
        records.append(StageRecord(name, output, seconds, previous is not None, report))
    return records
