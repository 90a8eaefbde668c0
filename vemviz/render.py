"""Render a mesh folder to a PNG with Blender, from the core environment.

Blender has its own Python (with numpy 1.x), so vemviz never imports bpy: `render_meshes` runs
``scripts/render_blender.py`` in a subprocess, either through a ``blender`` executable
(``blender -b -P script -- ARGS``) or through a Python interpreter that has the ``bpy`` wheel
(``python script -- ARGS``, the ``.venv-blender`` environment that ``make venv``
creates). `find_blender` picks one; the mesh folder is checked before Blender starts, and the
PNG is checked (exists, not one flat colour) after it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import vemviz
from vemviz.errors import VemvizError
from vemviz.manifest import read_manifest
from vemviz.progress import status

REPO = Path(vemviz.__file__).resolve().parents[1]
RENDER_SCRIPT = REPO / "scripts" / "render_blender.py"
OK_MARKER = "VEMVIZ_RENDER_OK"
# Variables of the core environment that must not leak into Blender's Python.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


def _resolve_executable(candidate: str, origin: str) -> str:
    path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
    if path is None:
        raise VemvizError(f"{origin} {candidate} does not exist or is not executable.")
    return str(Path(path).absolute())


def _command_prefix(executable: str) -> list[str]:
    """Command prefix for a ``blender`` executable or for a Python interpreter with bpy."""
    if Path(executable).name.lower().startswith("python"):
        return [executable, str(RENDER_SCRIPT), "--"]
    return [
        executable, "-b", "--factory-startup", "--python-exit-code", "2",
        "-P", str(RENDER_SCRIPT), "--",
    ]  # fmt: skip


def find_blender(explicit: str | None = None) -> list[str]:
    """The command prefix that runs the render script; arguments for it follow.

    Looks at ``explicit`` (``--blender``), ``$VEMVIZ_BLENDER``, ``<repo>/.venv-blender/bin/python``
    and ``blender`` on PATH, in that order. A path whose name starts with ``python`` is used as
    a Python interpreter with the bpy wheel, anything else as a Blender executable.
    """
    if explicit:
        return _command_prefix(_resolve_executable(explicit, "--blender"))
    if os.environ.get("VEMVIZ_BLENDER"):
        return _command_prefix(_resolve_executable(os.environ["VEMVIZ_BLENDER"], "VEMVIZ_BLENDER"))
    venv_python = REPO / ".venv-blender" / "bin" / "python"
    if venv_python.is_file():
        return _command_prefix(str(venv_python))
    on_path = shutil.which("blender")
    if on_path:
        return _command_prefix(on_path)
    raise VemvizError(
        "No Blender found: run `make venv` (installs the bpy wheel) or pass "
        "--blender PATH (a blender executable or a Python with bpy)."
    )


def _render_args(
    mesh_dir: Path,
    out_png: Path,
    engine: str | None,
    samples: int | None,
    resolution: str | Sequence[int] | None,
    cut: str | None,
    turntable: int | None,
    device: str | None = None,
) -> list[str]:
    args = ["--meshes", str(mesh_dir), "--out", str(out_png)]
    if resolution is not None and not isinstance(resolution, str):
        resolution = f"{resolution[0]}x{resolution[1]}"
    options = {
        "--engine": engine,
        "--samples": samples,
        "--resolution": resolution,
        "--cut": cut,
        "--turntable": turntable,
        "--device": device,
    }
    for flag, value in options.items():
        if value is not None:
            args += [flag, str(value)]
    return args


def _blender_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _failure_message(completed: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("vemviz render:") or "error:" in line]
    detail = (own or lines or ["no message"])[-1].removeprefix("vemviz render:").strip()
    return f"Blender failed (exit status {completed.returncode}): {detail}"


def _check_png(out_png: Path) -> None:
    import imageio.v3 as iio

    if not out_png.is_file():
        raise VemvizError(f"Blender finished but wrote no image at {out_png}.")
    pixels = np.asarray(iio.imread(out_png))
    if pixels.size == 0 or float(pixels.reshape(-1, pixels.shape[-1]).std(axis=0).max()) < 1.0:
        raise VemvizError(f"The render {out_png} is blank (one flat colour).")


def render_meshes(
    mesh_dir: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    blender: str | None = None,
    engine: str | None = None,
    samples: int | None = None,
    resolution: str | Sequence[int] | None = None,
    cut: str | None = None,
    turntable: int | None = None,
    device: str | None = None,
    timeout: float | None = None,
) -> Path:
    """Render the mesh folder ``mesh_dir`` to ``out_png`` with Blender; returns the PNG path.

    ``engine`` is CYCLES (default), EEVEE or WORKBENCH; ``resolution`` is ``"960x720"`` or
    ``[960, 720]``; ``cut`` is ``"AXIS:FRACTION"`` (``"z:0.5"``); ``turntable`` also writes that
    many frames ``<stem>_0001.png`` ... next to ``out_png``; ``device`` is CPU or GPU (Cycles).
    """
    mesh_dir = Path(mesh_dir).resolve()
    out_png = Path(out_png).resolve()
    manifest = read_manifest(mesh_dir)
    command = find_blender(blender) + _render_args(
        mesh_dir, out_png, engine, samples, resolution, cut, turntable, device
    )
    status(f"Rendering {len(manifest['objects'])} objects with Blender ({command[0]})")
    start = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, env=_blender_env(), timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise VemvizError(f"Blender did not finish the render within {timeout:g} s.") from exc
    except OSError as exc:
        raise VemvizError(f"Cannot start Blender ({command[0]}): {exc.strerror}.") from exc
    if completed.returncode != 0 or OK_MARKER not in completed.stdout:
        raise VemvizError(_failure_message(completed))
    _check_png(out_png)
    status(f"Rendered {out_png} in {time.perf_counter() - start:.1f} s")
    return out_png
