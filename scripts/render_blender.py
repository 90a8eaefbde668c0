"""Render a vemviz mesh folder to a PNG figure, headless.

    blender -b --factory-startup -P scripts/render_blender.py -- --meshes DIR --out fig.png
    python scripts/render_blender.py -- --meshes DIR --out fig.png      # the bpy wheel

Options (after ``--``): ``--engine CYCLES|EEVEE|WORKBENCH`` (default CYCLES, the one engine
that needs no OpenGL context), ``--device CPU|GPU`` (Cycles; GPU falls back to the CPU),
``--samples N``, ``--resolution WxH``, ``--cut AXIS:FRACTION`` (e.g. ``z:0.5`` removes the half
of the volume above the middle section that faces the camera), ``--turntable FRAMES`` (also
writes ``<stem>_0001.png`` ...), ``--transparent-enclosing`` (cells that contain other objects
become semi-transparent).

Works in Blender 3.4 (Debian's ``blender`` package, which needs ``python3-numpy``; its Cycles
has no OpenImageDenoise, so renders are not denoised there) through 5.0.

The scene code lives in the add-on package (``blender_addon/vemviz_blender/scene.py``); this
script only parses arguments and calls it. On success the last line on stdout is
``VEMVIZ_RENDER_OK <png> <number of objects>``; on failure a one-line message goes to stderr
and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bpy

try:
    import numpy  # noqa: F401  (the scene code needs it; Debian's Blender does not ship it)
except ImportError:
    print(
        "vemviz render: this Blender's Python has no numpy; on Debian/Ubuntu run "
        "apt-get install python3-numpy",
        file=sys.stderr,
    )
    sys.exit(2)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender_addon"))

from vemviz_blender import scene as vscene  # noqa: E402


def _resolution(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        size = (0, 0)
    if min(size) < 16 or max(size) > 16384:
        raise argparse.ArgumentTypeError(f"{text!r} is not a resolution like 960x720.")
    return size


def _cut(text: str) -> tuple[int, float]:
    try:
        return vscene.parse_cut(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="render_blender.py", description="Render a vemviz mesh folder with Blender."
    )
    parser.add_argument("--meshes", required=True, type=Path, help="mesh folder (manifest.json)")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument(
        "--engine", default=vscene.DEFAULT_ENGINE, type=str.upper, choices=sorted(vscene.ENGINES)
    )
    parser.add_argument(
        "--device", default="CPU", type=str.upper, choices=vscene.DEVICES, help="Cycles device"
    )
    parser.add_argument("--samples", type=int, default=vscene.DEFAULT_SAMPLES)
    parser.add_argument("--resolution", type=_resolution, default=vscene.DEFAULT_RESOLUTION)
    parser.add_argument("--cut", type=_cut, default=None, metavar="AXIS:FRACTION")
    parser.add_argument("--turntable", type=int, default=None, metavar="FRAMES")
    parser.add_argument("--transparent-enclosing", action="store_true")
    return parser.parse_args(argv)


def render(args: argparse.Namespace) -> tuple[Path, int]:
    """Build the scene from scratch and render it; returns the PNG path and the object count."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    folder = vscene.load_manifest(args.meshes)
    alpha = vscene.ENCLOSING_ALPHA if args.transparent_enclosing else None
    objects = vscene.import_mesh_folder(folder, scene=scene, enclosing_alpha=alpha)
    vscene.stage_scene(
        scene,
        objects,
        folder,
        engine=args.engine,
        samples=max(args.samples, 1),
        resolution=args.resolution,
        cut=args.cut,
        turntable=args.turntable,
        device=args.device,
    )
    if args.turntable:
        vscene.render_turntable(scene, args.out)
    return vscene.render_still(scene, args.out), len(objects)


def main(argv: list[str]) -> int:
    args = parse_args(argv[argv.index("--") + 1 :] if "--" in argv else argv[1:])
    start = time.perf_counter()
    try:
        out, count = render(args)
    except (vscene.ManifestError, ValueError, RuntimeError, OSError) as exc:
        print(f"vemviz render: {exc}", file=sys.stderr, flush=True)
        return 2
    seconds = time.perf_counter() - start
    print(f"vemviz render: {count} objects, {args.engine}, {seconds:.1f} s", file=sys.stderr)
    print(f"VEMVIZ_RENDER_OK {out} {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
