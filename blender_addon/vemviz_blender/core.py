"""Run the vemviz core (its CLI, in its own Python with numpy 2) from Blender.

`prepare_core_command` is the one place that turns the panel's choices into a command line:

- no input: ``vemviz demo --out OUT --no-render`` (the built-in phantom);
- an input with every stage on: ``vemviz demo --data IN --out OUT --no-render [--voxel-size]``;
- an input with restore or iso off: a pipeline file ``OUT/vemviz_blender.toml`` (inpaint and
  iso as chosen, segment, then mesh into ``OUT/meshes``) run by ``vemviz run``.

Every route leaves the mesh folder in ``OUT/meshes``. `CoreJob` starts the command with
``VEMVIZ_PROGRESS=json`` and reads its JSON progress lines on background threads, so Blender's
UI stays responsive; `drain` hands over the events received so far.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO

MESH_FOLDER = "meshes"
PIPELINE_FILE = "vemviz_blender.toml"
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME")  # Blender's Python must not leak into the core


def _voxel_flags(voxel_size_nm: Sequence[float]) -> list[str]:
    if not all(v > 0 for v in voxel_size_nm):
        return []
    return ["--voxel-size", ",".join(f"{v:g}" for v in voxel_size_nm)]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value)


def pipeline_text(
    input_path: str, voxel_size_nm: Sequence[float], restore: bool, iso: bool, segment: bool
) -> str:
    """A pipeline file running the chosen stages on ``input_path`` and meshing the labels."""
    stages: list[dict[str, object]] = []
    if restore:
        stages.append({"stage": "inpaint", "detect": True, "method": "flow"})
    if iso:
        if not all(v > 0 for v in voxel_size_nm):
            raise ValueError("Set the voxel size (z, y, x nm) to run the isotropic stage.")
        z, y, x = voxel_size_nm
        factor = max(1, round(z / ((y + x) / 2)))
        stages.append({"stage": "iso", "factor": factor, "method": "flow"})
    if not segment:  # vemviz run meshes only labels that a segment stage produced
        raise ValueError("Meshes need the segment stage; switch Segment on.")
    stages.append({"stage": "segment", "target": "mito"})
    # thick sections (iso off) get interpolated outlines instead of a step per section
    stages.append({"stage": "mesh", "out": MESH_FOLDER, "interpolate_z": True})
    lines = [f"input = {_toml_value(input_path)}", 'workspace = "workspace"']
    if all(v > 0 for v in voxel_size_nm):
        lines.append(f"voxel_size = {_toml_value([float(v) for v in voxel_size_nm])}")
    for stage in stages:
        lines += ["", "[[stages]]", *[f"{k} = {_toml_value(v)}" for k, v in stage.items()]]
    return "\n".join(lines) + "\n"


def prepare_core_command(
    prefix: Sequence[str],
    out_dir: str | os.PathLike[str],
    input_path: str = "",
    voxel_size_nm: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    restore: bool = True,
    iso: bool = True,
    segment: bool = True,
) -> list[str]:
    """The core command for the panel's choices (may write ``OUT/vemviz_blender.toml``)."""
    out_dir = Path(out_dir)
    if not input_path:
        return [*prefix, "demo", "--out", str(out_dir), "--no-render"]
    if restore and iso and segment:
        return [*prefix, "demo", "--data", input_path, "--out", str(out_dir), "--no-render",
                *_voxel_flags(voxel_size_nm)]  # fmt: skip
    text = pipeline_text(input_path, voxel_size_nm, restore, iso, segment)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = out_dir / PIPELINE_FILE
    temp = pipeline.with_name(f".{PIPELINE_FILE}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, pipeline)
    return [*prefix, "run", str(pipeline)]


def parse_event(line: str) -> dict | None:
    """A ``{"event": ...}`` JSON progress line as a dict, anything else as None."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class CoreJob:
    """A running core command whose output is read on background threads."""

    def __init__(self, command: Sequence[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env["VEMVIZ_PROGRESS"] = "json"
        self.command = list(command)
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        self.events: queue.Queue[dict] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=40)
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            event = parse_event(line)
            if event is not None:
                self.events.put(event)
            elif line.strip():
                self.tail.append(line.rstrip())

    def drain(self) -> list[dict]:
        """The events received since the last call."""
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    def done(self) -> bool:
        """Whether the process has exited and all its output has been read."""
        return self.process.poll() is not None and not any(r.is_alive() for r in self._readers)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def error_message(self) -> str:
        """The core's own error line, else its last line of output."""
        lines = list(self.tail)
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or [f"exit status {self.returncode}"])[-1].strip()

    def cancel(self, grace: float = 5.0) -> None:
        """Ask the core to stop (SIGTERM; it discards unfinished output), then kill it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
