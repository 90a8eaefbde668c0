"""What every benchmark shares: the data folder, timing and peak memory, the table and the JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path(os.environ.get("VEMVIZ_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT_DIR = ROOT / "benchmarks-out"


@dataclass
class Result:
    """A benchmark's rows (one dict per method/case, same keys) plus free-form notes."""

    title: str
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if p.stem not in {"__init__", "common"})


def load_tiff(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A shared-data TIFF and its ``voxel_size_nm`` (z, y, x) from the JSON description."""
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        description = tif.pages[0].description
    voxel = tuple(float(v) for v in json.loads(description)["voxel_size_nm"])
    return data, voxel  # type: ignore[return-value]


VNC_CELL_TRAIN_SLICES = 10  # the cells model trains on VNC slices 0-9; 10-19 are held out
VNC_MEMBRANE_MAX_CODE = 128  # vnc_sstem/labels.tif: membranes 0-96, junctions 128


def vnc_cells(codes: np.ndarray) -> np.ndarray:
    """Per slice of the VNC label codes, the connected regions inside the membranes, numbered
    uniquely over the stack (0 = membrane)."""
    out, offset = np.zeros(codes.shape, np.int32), 0
    for z, plane in enumerate(codes):
        regions, count = ndimage.label(plane > VNC_MEMBRANE_MAX_CODE)
        out[z] = np.where(regions > 0, regions + offset, 0)
        offset += count
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process (and its waited-for children) so far, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


@contextmanager
def timed(row: dict[str, Any], key: str = "seconds") -> Iterator[None]:
    start = time.perf_counter()
    yield
    row[key] = round(time.perf_counter() - start, 2)


def machine() -> dict[str, Any]:
    try:
        import torch

        threads = torch.get_num_threads()
        cuda = torch.cuda.is_available()
    except ImportError:
        threads, cuda = None, False
    return {
        "cpus": os.cpu_count(),
        "torch_threads": threads,
        "cuda": cuda,
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (README-ready) of rows sharing their keys."""
    if not rows:
        return "(no rows)"
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def finish(name: str, result: Result, json_path: Path | None) -> None:
    print(f"\n{result.title}\n")
    print(format_table(result.rows))
    for note in result.notes:
        print(f"- {note}")
    json_path = json_path or OUT_DIR / f"{name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "title": result.title,
        "machine": machine(),
        "rows": result.rows,
        "notes": result.notes,
        **result.extra,
    }
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(json_path)
    print(f"\nwrote {json_path}")
