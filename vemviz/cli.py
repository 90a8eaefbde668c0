"""The ``vemviz`` command line (also ``python -m vemviz``).

Every command reads its inputs with `vemviz.io.read_volume` (``--voxel-size Z,Y,X`` in nm
overrides the file's metadata), runs one stage from `vemviz.stages` (or the pipeline), writes
outputs atomically in the format named by the extension, and writes ``--report JSON`` where it
computes figures. A problem with the input ends the command with one line on stderr,
``vemviz: error: ...``, and exit status 2; Ctrl-C or SIGTERM cancels with status 130 and leaves
no partial output.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vemviz import __version__, stages
from vemviz.errors import Cancelled, VemvizError
from vemviz.io import format_of, read_volume, write_volume
from vemviz.io.atomic import write_json
from vemviz.progress import status
from vemviz.volume import parse_voxel_size


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--grid must look like 3x3, got {text!r}") from exc
    return rows, cols


def _voxel(text: str) -> tuple[float, float, float]:
    try:
        return parse_voxel_size(text)
    except VemvizError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--resolution must look like 960x720, got {text!r}"
        ) from exc
    return width, height


def _write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        write_json(path, report)


def _read(args: argparse.Namespace, attribute: str = "input"):
    return read_volume(getattr(args, attribute), args.voxel_size)


def _finish(
    args: argparse.Namespace, volume, report: dict[str, Any], is_label: bool = False
) -> None:
    write_volume(volume, args.out, is_label=is_label)
    _write_report(args.report, report)
    status(f"wrote {args.out} {volume.shape} {volume.dtype} voxel {volume.voxel_size_nm} nm")


# --- commands ---------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> None:
    volume = _read(args)
    data = volume.numpy()
    info = {
        "path": str(args.input),
        "format": format_of(Path(args.input)),
        "shape_zyx": list(volume.shape),
        "dtype": str(volume.dtype),
        "voxel_size_nm": list(volume.voxel_size_nm) if volume.voxel_size_nm else None,
        "size_mb": round(volume.nbytes / 2**20, 2),
        "min": float(data.min()),
        "max": float(data.max()),
        "mean": round(float(data.mean()), 3),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        print(f"{key:14s} {value}")
    if volume.voxel_size_nm is None:
        print("note           no voxel size in the file: pass --voxel-size Z,Y,X (nm)")


def cmd_stitch(args: argparse.Namespace) -> None:
    volume, report = stages.stitch(args.tile_dir, grid=args.grid)
    if args.voxel_size:
        volume = volume.with_data(volume.data, args.voxel_size)
    _finish(args, volume, report)


def cmd_align(args: argparse.Namespace) -> None:
    from vemviz.restore import parse_slice_list

    volume = _read(args)
    skip = tuple(parse_slice_list(args.skip, volume.shape[0])) if args.skip else ()
    out, report = stages.align(volume, mode=args.mode, skip=skip)
    _finish(args, out, report)


def cmd_inpaint(args: argparse.Namespace) -> None:
    from vemviz.restore import parse_slice_list

    volume = _read(args)
    slices = tuple(parse_slice_list(args.slices, volume.shape[0])) if args.slices else ()
    mask = read_volume(args.mask).numpy() != 0 if args.mask else None
    damaged, report = stages.damage_mask(volume, slices=slices, detect=args.detect, mask=mask)
    if args.mask_out:
        write_volume(volume.with_data(damaged.astype("uint8"), stage="damage"), args.mask_out)
    out, fill_report = stages.inpaint(
        volume, method=args.method, mask=damaged, steps=args.steps, samples=args.samples,
        seed=args.seed, fine_tune=args.fine_tune, weights=args.weights, device=args.device,
    )  # fmt: skip
    _finish(args, out, {**report, **fill_report})


def cmd_iso(args: argparse.Namespace) -> None:
    volume = _read(args)
    out, report = stages.iso(volume, factor=args.factor, method=args.method)
    _finish(args, out, report)


def cmd_sr(args: argparse.Namespace) -> None:
    volume = _read(args)
    out, report = stages.sr(volume, scale=args.scale, method=args.method)
    _finish(args, out, report)


def cmd_segment(args: argparse.Namespace) -> None:
    from vemviz.segment import read_prompts

    volume = _read(args)
    prompts = read_prompts(args.prompts) if args.prompts else None
    labels, report = stages.segment(volume, target=args.target, prompts=prompts, model=args.model)
    if labels.numpy().max() == 0:
        raise VemvizError(f"segmentation found no {args.target} objects; nothing written")
    _finish(args, labels, report, is_label=True)


def cmd_mesh(args: argparse.Namespace) -> None:
    labels = _read(args, "labels")
    manifest = stages.mesh(
        labels, args.out, smooth=args.smooth, decimate=args.decimate, units=args.units,
        class_name=args.class_name, opacity=args.opacity, ply=args.ply,
    )  # fmt: skip
    faces = sum(o["faces"] for o in manifest["objects"])
    status(f"wrote {len(manifest['objects'])} meshes ({faces} faces) to {args.out}")


def cmd_render(args: argparse.Namespace) -> None:
    from vemviz.render import render_meshes

    render_meshes(
        args.mesh_dir, args.out, blender=args.blender, engine=args.engine, samples=args.samples,
        resolution=args.resolution, cut=args.cut,
    )  # fmt: skip
    status(f"wrote {args.out}")


def cmd_export_unity(args: argparse.Namespace) -> None:
    from unity_bridge import export_unity

    volume = read_volume(args.volume, args.voxel_size) if args.volume else None
    dataset = export_unity(args.mesh_dir, args.project, name=args.name, volume=volume)
    status(f"exported to {dataset}")


def cmd_run(args: argparse.Namespace) -> None:
    from vemviz.pipeline import load_pipeline, run_pipeline

    config, base = load_pipeline(args.pipeline)
    records = run_pipeline(config, base, force=args.force)
    for r in records:
        state = "skipped" if r.skipped else f"{r.seconds:.1f} s"
        status(f"{r.stage:13s} {state:>9s}  {r.output}")


def cmd_demo(args: argparse.Namespace) -> None:
    from vemviz.demo import run_demo

    run_demo(args.out, args.data, args.voxel_size, render=not args.no_render, blender=args.blender)


# --- parser -----------------------------------------------------------------------------


def _add_common(
    parser: argparse.ArgumentParser, *, volume_in: bool = True, report: bool = True
) -> None:
    if volume_in:
        parser.add_argument(
            "--voxel-size", type=_voxel, metavar="Z,Y,X",
            help="voxel size in nm, overriding the file's metadata (e.g. 40,8,8)",
        )  # fmt: skip
    if report:
        parser.add_argument("--report", type=Path, metavar="JSON", help="write figures as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vemviz",
        description="Volume electron microscopy to 3D models: stitch, align, restore, "
        "reconstruct, segment, mesh, render in Blender, export to Unity.",
    )
    parser.add_argument("--version", action="version", version=f"vemviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="show shape, dtype, voxel size and statistics of a volume")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_common(p, report=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("stitch", help="stitch a grid of overlapping tiles (*_ROW_COL.ext)")
    p.add_argument("tile_dir", type=Path, metavar="TILE_DIR")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grid", type=_grid, metavar="RxC", help="expected grid, e.g. 3x3")
    _add_common(p)
    p.set_defaults(func=cmd_stitch)

    p = sub.add_parser("align", help="align serial sections (rigid, affine or elastic)")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=("rigid", "affine", "elastic"), default="rigid")
    p.add_argument("--skip", metavar="SLICES", help="damaged sections to bridge, e.g. 3,17,40-42")
    _add_common(p)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("inpaint", help="detect and restore damaged or missing slices")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--slices", metavar="LIST", help="slices to restore, e.g. 3,17,40-42")
    p.add_argument("--detect", action="store_true", help="find damaged slices automatically")
    p.add_argument("--method", choices=("auto", "flow", "diffusion", "linear"), default="auto")
    p.add_argument("--mask", type=Path, metavar="MASK", help="damage mask volume (non-zero = bad)")
    p.add_argument("--mask-out", type=Path, metavar="PATH", help="write the damage mask used")
    p.add_argument("--steps", type=int, default=1, help="diffusion sampler steps (1: x0 estimate)")
    p.add_argument("--samples", type=int, default=1, help="diffusion samples averaged")
    p.add_argument("--seed", type=int, default=0, help="diffusion random seed")
    p.add_argument("--fine-tune", type=int, default=0, metavar="STEPS",
                   help="fine-tune the diffusion model on this volume first")  # fmt: skip
    p.add_argument("--weights", metavar="DIR", help="diffusion model folder (default: shipped)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_common(p)
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("iso", help="isotropic reconstruction along z")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--factor", type=float, required=True, help="z upsampling factor (>= 1)")
    p.add_argument("--method", choices=("inr", "cubic", "linear", "flow"), default="flow")
    p.add_argument(
        "--time-budget", type=float, metavar="SECONDS",
        help="training time limit for learned methods (inr)",
    )  # fmt: skip
    _add_common(p)
    p.set_defaults(func=cmd_iso)

    p = sub.add_parser("sr", help="lateral (x, y) super-resolution")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scale", type=float, required=True)
    p.add_argument("--method", choices=("bicubic", "learned"), default="bicubic")
    _add_common(p)
    p.set_defaults(func=cmd_sr)

    p = sub.add_parser("segment", help="segment mitochondria or cells into instance labels")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target", choices=("mito", "cells"), required=True)
    p.add_argument("--model", type=Path, metavar="PATH", help="a trained model (learned methods)")
    p.add_argument("--prompts", type=Path, metavar="JSON", help="points/boxes selecting objects")
    _add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("mesh", help="mesh each label in physical units (GLB + manifest.json)")
    p.add_argument("labels", type=Path, metavar="LABELS")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--smooth", type=int, default=20, metavar="N", help="smoothing iterations")
    p.add_argument("--decimate", type=float, default=0.5, metavar="RATIO", help="faces to remove")
    p.add_argument("--units", choices=("um", "nm"), default="um")
    p.add_argument("--class-name", help="object class for names (default from the labels)")
    p.add_argument("--opacity", type=float, help="material opacity (default 1, cells 0.35)")
    p.add_argument("--ply", action="store_true", help="also write PLY files")
    _add_common(p, report=False)
    p.set_defaults(func=cmd_mesh)

    p = sub.add_parser("render", help="render a mesh folder with Blender (headless)")
    p.add_argument("mesh_dir", type=Path, metavar="MESH_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="PNG")
    p.add_argument("--blender", help="blender executable or a Python with bpy")
    p.add_argument("--engine", choices=("CYCLES", "EEVEE", "WORKBENCH"))
    p.add_argument("--samples", type=int)
    p.add_argument("--resolution", type=_resolution, metavar="WxH")
    p.add_argument("--cut", metavar="AXIS:POS", help="cut the model, e.g. z:0.5")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("export-unity", help="export a mesh folder into a Unity project")
    p.add_argument("mesh_dir", type=Path, metavar="MESH_DIR")
    p.add_argument("--project", type=Path, required=True, metavar="DIR")
    p.add_argument("--name", help="dataset name (default: the mesh folder's name)")
    p.add_argument("--volume", type=Path, metavar="IN", help="intensity volume for cut faces")
    _add_common(p, report=False)
    p.set_defaults(func=cmd_export_unity)

    p = sub.add_parser("run", help="run a pipeline file (TOML), skipping unchanged stages")
    p.add_argument("pipeline", type=Path, metavar="PIPELINE.toml")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the whole chain on the phantom (or --data)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--data", type=Path, metavar="IN", help="your own volume instead of the phantom")
    p.add_argument("--no-render", action="store_true", help="skip the Blender render")
    p.add_argument("--blender", help="blender executable or a Python with bpy")
    _add_common(p, report=False)
    p.set_defaults(func=cmd_demo)
    return parser


def _raise_cancel(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_cancel)
    try:
        args.func(args)
    except (KeyboardInterrupt, Cancelled):
        print("vemviz: cancelled; no partial output was kept", file=sys.stderr)
        return 130
    except VemvizError as exc:
        print(f"vemviz: error: {exc}", file=sys.stderr)
        return 2
    return 0
