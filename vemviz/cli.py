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
from vemviz.iso import DEFAULT_METHOD as ISO_DEFAULT
from vemviz.iso import DEFAULT_TIME_BUDGET as ISO_BUDGET
from vemviz.iso import METHODS as ISO_METHODS
from vemviz.progress import status
from vemviz.restore import FILL_METHODS
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


def _chunked(
    args: argparse.Namespace, volume, name: str, options: dict[str, Any]
) -> dict[str, Any] | None:
    """Run stage ``name`` with ``options`` block by block when `stages.choose_blocks` says so
    for --memory-budget and --scheduler; its report if it ran, else None."""
    from vemviz import chunked

    budget = chunked.parse_memory(args.memory_budget)
    stage = stages.choose_blocks(name, volume, options, budget, args.scheduler)
    if stage is None:
        return None
    report = chunked.run_chunked(
        stage, volume, args.out, memory_budget=budget, scheduler=args.scheduler
    )
    _write_report(args.report, report)
    status(f"wrote {args.out} {report['shape_out']} in {report['blocks']} blocks")
    return report


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
    volume, report = stages.stitch(
        args.tile_dir, grid=args.grid, overlap=args.overlap, elastic=not args.rigid_only
    )
    if args.voxel_size:
        volume = volume.with_data(volume.data, args.voxel_size)
    _finish(args, volume, report)


def _read_transforms(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise VemvizError(f"cannot read transforms {path}: {exc}") from exc
    transforms = data.get("transforms", data) if isinstance(data, dict) else None
    if not isinstance(transforms, dict) or "matrices" not in transforms:
        raise VemvizError(f"{path} holds no alignment transforms (written by vemviz align)")
    return transforms


def cmd_align(args: argparse.Namespace) -> None:
    from vemviz.restore import parse_slice_list

    volume = _read(args)
    if args.apply_transforms:
        options = {"transforms": _read_transforms(args.apply_transforms), "order": args.order}
        if _chunked(args, volume, "apply_alignment", options) is None:
            out, report = stages.apply_alignment(volume, **options)
            _finish(args, out, report, is_label=args.order == 0)
        return
    skip = tuple(parse_slice_list(args.skip, volume.shape[0])) if args.skip else ()
    options = {"mode": args.mode, "skip": skip, "smooth": args.smooth}
    report = _chunked(args, volume, "align", options)
    if report is None:
        out, report = stages.align(volume, **options)
        _finish(args, out, report)
    transforms = args.transforms or args.out.with_name(args.out.name + ".transforms.json")
    write_json(transforms, {"transforms": report["transforms"]})
    status(f"wrote {transforms} (apply to labels with --apply-transforms)")


def cmd_inpaint(args: argparse.Namespace) -> None:
    from vemviz.restore import parse_slice_list

    volume = _read(args)
    slices = tuple(parse_slice_list(args.slices, volume.shape[0])) if args.slices else ()
    transforms = _read_transforms(args.transforms) if args.transforms else None
    fill = dict(steps=args.steps, samples=args.samples, seed=args.seed, fine_tune=args.fine_tune,
                weights=args.weights, device=args.device, time_budget=args.time_budget)  # fmt: skip
    options = {"slices": slices, "detect": args.detect, "method": args.method, "mask": args.mask,
               "transforms": transforms, "mask_out": args.mask_out, **fill}  # fmt: skip
    if _chunked(args, volume, "inpaint", options) is not None:
        return
    mask = read_volume(args.mask).numpy() != 0 if args.mask else None
    damaged, report = stages.damage_mask(
        volume, slices=slices, detect=args.detect, mask=mask, transforms=transforms
    )
    if args.mask_out:
        write_volume(volume.with_data(damaged.astype("uint8"), stage="damage"), args.mask_out)
    out, fill_report = stages.inpaint(volume, method=args.method, mask=damaged, **fill)
    _finish(args, out, {**report, **fill_report})


def cmd_iso(args: argparse.Namespace) -> None:
    volume = _read(args)
    options = dict(
        factor=args.factor, out_voxel_size=args.out_voxel_size, method=args.method,
        time_budget=args.time_budget, device=args.device, seed=args.seed, model=args.model,
        save_model=args.save_model, uncertainty=args.uncertainty,
    )  # fmt: skip
    if _chunked(args, volume, "iso", options) is not None:
        return
    out, report = stages.iso(volume, **options)
    _finish(args, out, report)


def cmd_sr(args: argparse.Namespace) -> None:
    volume = _read(args)
    options = dict(
        scale=args.scale, method=args.method, time_budget=args.time_budget, device=args.device,
        seed=args.seed, model=args.model, save_model=args.save_model,
    )  # fmt: skip
    if _chunked(args, volume, "sr", options) is not None:
        return
    out, report = stages.sr(volume, **options)
    _finish(args, out, report)


def cmd_segment(args: argparse.Namespace) -> None:
    from vemviz.segment import read_prompts

    volume = _read(args)
    prompts = read_prompts(args.prompts) if args.prompts else None
    options = {"target": args.target, "prompts": prompts, "model": args.model,
               "method": args.method, "probabilities": args.probabilities}  # fmt: skip
    if _chunked(args, volume, "segment", options) is not None:
        return
    labels, report = stages.segment(volume, **options)
    uncertain = report.get("uncertain_per_confident", 0.0)
    if uncertain > 0.25:
        status(f"warning: many uncertain voxels ({uncertain:.0%} of the confident ones), see "
               f"most_uncertain_slices in the report")  # fmt: skip
    _finish(args, labels, report, is_label=True)


def cmd_train_seg(args: argparse.Namespace) -> None:
    from vemviz.train import TrainOptions, fine_tune

    images = _read(args, "images")
    labels = read_volume(args.labels, args.voxel_size)
    voxel = images.require_voxel_size("training (the model works at a fixed pixel size in nm)")
    options = TrainOptions(seconds=60 * args.minutes, max_steps=args.steps, lr=args.lr)
    record = fine_tune(
        images.numpy(), labels.numpy(), voxel, args.target, args.out, base_model=args.model,
        options=options, device=args.device,
    )  # fmt: skip
    _write_report(args.report, record)
    status(f"wrote {args.out}")


def cmd_mesh(args: argparse.Namespace) -> None:
    from vemviz.chunked import parse_memory

    labels = _read(args, "labels")
    manifest = stages.mesh(
        labels, args.out, smooth=args.smooth, decimate=args.decimate, units=args.units,
        class_name=args.class_name, opacity=args.opacity, ply=args.ply, workers=args.workers,
        largest=args.largest, memory_budget=parse_memory(args.memory_budget),
        scheduler=args.scheduler, interpolate_z=args.interpolate_z,
    )  # fmt: skip
    faces = sum(o["faces"] for o in manifest["objects"])
    status(f"wrote {len(manifest['objects'])} meshes ({faces} faces) to {args.out}")


def cmd_render(args: argparse.Namespace) -> None:
    from vemviz.render import render_meshes

    render_meshes(
        args.mesh_dir, args.out, blender=args.blender, engine=args.engine, samples=args.samples,
        resolution=args.resolution, cut=args.cut, device=args.device, turntable=args.turntable,
    )  # fmt: skip
    status(f"wrote {args.out}")


def cmd_video(args: argparse.Namespace) -> None:
    from vemviz.video import make_video

    volume = _read(args)
    labels = read_volume(args.labels, args.voxel_size).numpy() if args.labels else None
    report = make_video(
        volume.numpy(), args.out, axis=args.axis, voxel_size_nm=volume.voxel_size_nm,
        labels=labels, fps=args.fps,
    )  # fmt: skip
    status(f"wrote {args.out}: {report['frames']} frames, {report['seconds']} s at {args.fps} fps")


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


def cmd_plan_reimage(args: argparse.Namespace) -> None:
    volume = _read(args)
    options = dict(scale=args.scale, budget=args.budget, tile=args.tile, margin=args.margin,
                   sr_method=args.sr_method, target=args.target, dwell_ns=args.dwell_ns,
                   tile_overhead_s=args.tile_overhead_s, time_budget=args.time_budget,
                   device=args.device, seed=args.seed)  # fmt: skip
    if args.simulate:
        plan, merged, report = stages.simulate_reimage(volume, _merge_options(args), **options)
        if args.merged_out is not None:
            write_volume(merged, args.merged_out)
        _write_report(args.report, report)
        status(f"simulated: SR {report['sr_psnr']:.2f} dB -> merged {report['merged_psnr']:.2f} dB")
    else:
        plan, sr_volume = stages.plan_reimage(volume, **options)
        if args.sr_out is not None:
            stages.write_plan_sr(plan, sr_volume, args.sr_out)
        _write_report(args.report, plan["time"])
    write_json(args.out, plan)
    status(f"wrote {args.out}: {len(plan['tiles'])} of {plan['tiles_total']} tiles to re-image, "
           f"{100 * plan['time']['time_saved']:.1f} % imaging time saved")  # fmt: skip


def _merge_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"refit": not args.no_refit, "time_budget": args.time_budget, "device": args.device,
            "seed": args.seed}  # fmt: skip


def cmd_merge_reimage(args: argparse.Namespace) -> None:
    plan = stages.read_reimage_plan(args.plan)
    low = _read(args)
    tiles = stages.read_reimaged_tiles(args.tiles_dir, plan)
    merged, report = stages.merge_reimage(
        low, plan, tiles, sr_volume=stages.read_plan_sr(plan), **_merge_options(args)
    )
    _finish(args, merged, report)


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


def _add_learned(
    parser: argparse.ArgumentParser, method: str, model_files: bool = True, budget: str = "240"
) -> None:
    """Options of the self-supervised learned methods (training and model files)."""
    parser.add_argument(
        "--time-budget", type=float, metavar="SECONDS",
        help=f"{method}: training time limit (default {budget})",
    )  # fmt: skip
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0, help=f"{method}: training seed")
    if model_files:
        parser.add_argument("--model", type=Path, metavar="PATH", help="reuse saved weights")
        parser.add_argument("--save-model", type=Path, metavar="PATH", help="save trained weights")


def _add_refit_options(parser: argparse.ArgumentParser, trains: str = "refit") -> None:
    parser.add_argument("--no-refit", action="store_true",
                        help="do not retrain the learned SR on the re-imaged tiles")  # fmt: skip
    _add_learned(parser, trains, model_files=False)


def _add_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--memory-budget", default="4GiB", metavar="SIZE",
        help="inputs larger than this run block by block into OME-Zarr (default 4GiB)",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run block by block on this dask.distributed scheduler (large inputs use "
        "$VEMVIZ_SCHEDULER when set, else local threads)",
    )  # fmt: skip


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

    p = sub.add_parser("stitch", help="stitch overlapping tiles (*_ROW_COL.ext or a CSV list)")
    p.add_argument("tile_dir", type=Path, metavar="TILE_DIR", help="tile folder or CSV list")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grid", type=_grid, metavar="RxC", help="expected grid, e.g. 3x3")
    p.add_argument("--overlap", type=float, default=0.1, help="approximate overlap (0.1 = 10%%)")
    p.add_argument("--rigid-only", action="store_true", help="skip the local elastic correction")
    _add_common(p)
    p.set_defaults(func=cmd_stitch)

    p = sub.add_parser("align", help="align serial sections (rigid, affine or elastic)")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=("rigid", "affine", "elastic"), default="rigid")
    p.add_argument("--skip", metavar="SLICES", help="damaged sections to bridge, e.g. 3,17,40-42")
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="keep the slow trajectory (Gaussian of SIGMA sections): real drift",
    )
    p.add_argument(
        "--transforms",
        type=Path,
        metavar="JSON",
        help="where to save the transforms (default OUT.transforms.json)",
    )
    p.add_argument(
        "--apply-transforms",
        type=Path,
        metavar="JSON",
        help="apply saved transforms to IN (e.g. labels) instead of aligning",
    )
    p.add_argument(
        "--order",
        type=int,
        choices=(0, 1, 3),
        default=0,
        help="interpolation for --apply-transforms (0 = nearest, for labels)",
    )
    _add_common(p)
    _add_scale(p)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("inpaint", help="detect and restore damaged or missing slices")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--slices", metavar="LIST", help="slices to restore, e.g. 3,17,40-42")
    p.add_argument("--detect", action="store_true", help="find damaged slices automatically")
    p.add_argument("--method", choices=FILL_METHODS, default="auto",
                   help="ensemble: mean of the inr and diffusion fills")  # fmt: skip
    p.add_argument("--mask", type=Path, metavar="MASK", help="damage mask volume (non-zero = bad)")
    p.add_argument("--mask-out", type=Path, metavar="PATH", help="write the damage mask used")
    p.add_argument("--transforms", type=Path, metavar="JSON",
                   help="IN's alignment (vemviz align's OUT.transforms.json): its padding "
                        "outside the sections is not damage")  # fmt: skip
    p.add_argument("--steps", type=int, default=1, help="diffusion sampler steps (1: x0 estimate)")
    p.add_argument("--samples", type=int, default=1, help="diffusion samples averaged")
    p.add_argument("--seed", type=int, default=0, help="diffusion and inr random seed")
    p.add_argument("--fine-tune", type=int, default=0, metavar="STEPS",
                   help="fine-tune the diffusion model on this volume first")  # fmt: skip
    p.add_argument("--weights", metavar="DIR", help="diffusion model folder (default: shipped)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="inr/ensemble: training seconds per gap length (default 240)")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_common(p)
    _add_scale(p)
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("iso", help="isotropic reconstruction along z")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--factor", type=float, help="z upsampling factor (>= 1)")
    p.add_argument(
        "--out-voxel-size", type=float, metavar="NM", help="output z spacing (instead of --factor)"
    )
    p.add_argument("--method", choices=ISO_METHODS, default=ISO_DEFAULT,
                   help="inr (default): learned from the volume, trains for minutes on a CPU; "
                   "flow: the best classical method, in seconds")  # fmt: skip
    p.add_argument(
        "--uncertainty", type=Path, metavar="PATH",
        help="inr: write the per-voxel uncertainty (XZ/YZ disagreement) as a volume here",
    )  # fmt: skip
    _add_learned(p, "inr", budget=f"{ISO_BUDGET:g}, shared by the network and the one that "
                 "sets its weight against flow")  # fmt: skip
    _add_common(p)
    _add_scale(p)
    p.set_defaults(func=cmd_iso)

    p = sub.add_parser("sr", help="lateral (x, y) super-resolution")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scale", type=float, required=True)
    p.add_argument("--method", choices=("bicubic", "learned"), default="bicubic")
    _add_learned(p, "learned")
    _add_common(p)
    _add_scale(p)
    p.set_defaults(func=cmd_sr)

    p = sub.add_parser("segment", help="segment mitochondria or cells into instance labels")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target", choices=("mito", "cells"), required=True)
    p.add_argument("--model", type=Path, metavar="PATH",
                   help="a model from train-seg (default: the shipped weights)")  # fmt: skip
    p.add_argument("--method", choices=("learned", "classical"), default="learned")
    p.add_argument("--prompts", type=Path, metavar="JSON", help="points/boxes selecting objects")
    p.add_argument("--probabilities", type=Path, metavar="OUT", help="write the probability map")
    _add_common(p)
    _add_scale(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("train-seg", help="fine-tune a segmentation model on your labelled slices")
    p.add_argument("images", type=Path, metavar="IMAGES")
    p.add_argument("labels", type=Path, metavar="LABELS", help="mito mask or cell instance labels")
    p.add_argument("--target", choices=("mito", "cells"), required=True)
    p.add_argument("--out", type=Path, required=True, metavar="MODEL")
    p.add_argument("--model", type=Path, metavar="PATH", help="start from this model")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget")
    p.add_argument("--steps", type=int, default=1_000_000, help="stop after this many steps")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_common(p)
    p.set_defaults(func=cmd_train_seg)

    p = sub.add_parser("mesh", help="mesh each label in physical units (GLB + manifest.json)")
    p.add_argument("labels", type=Path, metavar="LABELS")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--smooth", type=int, default=20, metavar="N", help="smoothing iterations")
    p.add_argument("--decimate", type=float, default=0.5, metavar="RATIO", help="faces to remove")
    p.add_argument("--units", choices=("um", "nm"), default="um")
    p.add_argument("--class-name", help="object class for names (default from the labels)")
    p.add_argument("--opacity", type=float, help="material opacity (default 1, cells 0.35)")
    p.add_argument("--ply", action="store_true", help="also write PLY files")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    p.add_argument("--largest", type=int, metavar="N", help="mesh only the N largest labels")
    p.add_argument(
        "--interpolate-z", action="store_true",
        help="thick sections: interpolate outlines between them (no section steps)",
    )  # fmt: skip
    _add_common(p, report=False)
    _add_scale(p)
    p.set_defaults(func=cmd_mesh)

    p = sub.add_parser("render", help="render a mesh folder with Blender (headless)")
    p.add_argument("mesh_dir", type=Path, metavar="MESH_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="PNG")
    p.add_argument("--blender", help="blender executable or a Python with bpy")
    p.add_argument("--engine", choices=("CYCLES", "EEVEE", "WORKBENCH"))
    p.add_argument("--samples", type=int)
    p.add_argument("--resolution", type=_resolution, metavar="WxH")
    p.add_argument("--cut", metavar="AXIS:POS", help="cut the model, e.g. z:0.5")
    p.add_argument("--device", choices=("CPU", "GPU"), help="Cycles device (GPU falls back)")
    p.add_argument("--turntable", type=int, metavar="FRAMES", help="also render an orbit")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("video", help="slice fly-through MP4 of a volume (optional label overlay)")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("--out", type=Path, required=True, metavar="MP4")
    p.add_argument("--axis", choices=("z", "y", "x"), default="z", help="slice axis")
    p.add_argument("--labels", type=Path, metavar="LABELS", help="labels to draw over the slices")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second")
    _add_common(p, report=False)
    p.set_defaults(func=cmd_video)

    p = sub.add_parser("export-unity", help="export a mesh folder into a Unity project")
    p.add_argument("mesh_dir", type=Path, metavar="MESH_DIR")
    p.add_argument("--project", type=Path, required=True, metavar="DIR")
    p.add_argument("--name", help="dataset name (default: the mesh folder's name)")
    p.add_argument("--volume", type=Path, metavar="IN", help="intensity volume for cut faces")
    _add_common(p, report=False)
    p.set_defaults(func=cmd_export_unity)

    p = sub.add_parser("plan-reimage", help="plan which tiles of a low-resolution scan to re-image")
    p.add_argument("input", type=Path, metavar="LOWRES")
    p.add_argument("--out", type=Path, required=True, metavar="PLAN.json")
    p.add_argument("--scale", type=int, default=4, help="lateral resolution factor (default 4)")
    p.add_argument("--budget", type=float, default=0.1, help="fraction of tiles (default 0.1)")
    p.add_argument("--tile", type=int, default=128, metavar="PX", help="tile size, full-res px")
    p.add_argument("--margin", type=int, default=8, metavar="PX", help="extra px per tile side")
    p.add_argument("--sr-method", choices=("bicubic", "learned"), default="bicubic")
    p.add_argument("--target", choices=("mito", "cells"), help="segmentation that guides the plan")
    p.add_argument("--dwell-ns", type=float, help="pixel dwell time, for times in seconds")
    p.add_argument("--tile-overhead-s", type=float, default=0.0, help="seconds per tile")
    p.add_argument("--sr-out", type=Path, metavar="OUT", help="save the super-resolved volume")
    p.add_argument(
        "--simulate",
        action="store_true",
        help="LOWRES is a high-resolution volume: simulate scan, plan, re-imaging, merge",
    )
    p.add_argument("--merged-out", type=Path, metavar="OUT", help="with --simulate: merged volume")
    _add_refit_options(p, "learned SR and refit")
    _add_common(p)
    p.set_defaults(func=cmd_plan_reimage)

    p = sub.add_parser("merge-reimage", help="blend re-imaged tiles into the super-resolved volume")
    p.add_argument("input", type=Path, metavar="LOWRES")
    p.add_argument("tiles_dir", type=Path, metavar="HIGHRES_TILES_DIR")
    p.add_argument("--plan", type=Path, required=True, metavar="PLAN.json")
    p.add_argument("--out", type=Path, required=True)
    _add_refit_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_merge_reimage)

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


# optional dependencies of the learned methods, installed by pip install 'vemviz[learn]'
LEARN_MODULES = ("torch", "diffusers")


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
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in LEARN_MODULES:
            raise
        print(f"vemviz: error: this method needs {exc.name}, which is not installed: "
              "pip install 'vemviz[learn]', or choose a classical method (e.g. iso --method "
              "flow)", file=sys.stderr)  # fmt: skip
        return 2
    return 0
