"""NumPy ``.npy`` arrays, with the voxel size in a JSON sidecar ``NAME.npy.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.volume import Volume


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_npy(path: Path) -> Volume:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise VemvizError(f"cannot read NumPy file {path}: {exc}") from exc
    voxel = None
    sidecar = _sidecar(path)
    if sidecar.exists():
        try:
            voxel = json.loads(sidecar.read_text()).get("voxel_size_nm")
        except json.JSONDecodeError as exc:
            raise VemvizError(f"{sidecar} is not valid JSON: {exc}") from exc
    if data.ndim == 2:
        data = data[np.newaxis]
    return Volume(np.asarray(data), voxel, {"source": str(path), "format": "npy"})


def write_npy(volume: Volume, path: Path) -> None:
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.save(handle, volume.numpy(), allow_pickle=False)
    sidecar = {"voxel_size_nm": list(volume.voxel_size_nm) if volume.voxel_size_nm else None}
    with atomic_path(_sidecar(path)) as temp:
        temp.write_text(json.dumps(sidecar))
