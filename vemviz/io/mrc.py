"""MRC/CCP4 (cryo-EM and FIB-SEM tools) through ``mrcfile``.

The header's voxel size is in ångström (x, y, z); vemviz converts to nm (z, y, x). A voxel size
of zero means "unknown". MRC has no unsigned 8-bit mode: uint8 data are stored widened to
mode 6 (uint16) and a header label records the original dtype so that reading gives uint8 back.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np

from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.volume import Volume

_DTYPE_LABEL = "vemviz dtype="


def _original_dtype(mrc: mrcfile.mrcfile.MrcFile) -> np.dtype | None:
    for raw in mrc.header.label[: int(mrc.header.nlabl)]:
        text = raw.decode("ascii", "replace").strip() if isinstance(raw, bytes) else str(raw)
        if text.startswith(_DTYPE_LABEL):
            return np.dtype(text[len(_DTYPE_LABEL) :])
    return None


def read_mrc(path: Path) -> Volume:
    try:
        with mrcfile.open(path, mode="r", permissive=False) as mrc:
            data = np.asarray(mrc.data)
            size = mrc.voxel_size
            voxel = (float(size.z) / 10, float(size.y) / 10, float(size.x) / 10)
            original = _original_dtype(mrc)
    except Exception as exc:
        raise VemvizError(f"cannot read MRC {path}: {exc}") from exc
    if data.ndim == 2:
        data = data[np.newaxis]
    if original is not None and original != data.dtype:
        data = data.astype(original)
    known = all(v > 0 for v in voxel)
    return Volume(data, voxel if known else None, {"source": str(path), "format": "mrc"})


MRC_DTYPES = (np.int8, np.int16, np.uint16, np.float16, np.float32, np.complex64)


def write_mrc(volume: Volume, path: Path) -> None:
    data = volume.numpy()
    if data.dtype.type not in (np.uint8, *MRC_DTYPES):
        raise VemvizError(
            f"MRC cannot store {data.dtype} data; write .tif or .ome.zarr, or convert the volume"
        )
    stored = data.astype(np.uint16) if data.dtype == np.uint8 else data
    with atomic_path(path) as temp, mrcfile.new(temp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(stored))
        if volume.voxel_size_nm is not None:
            z, y, x = volume.voxel_size_nm
            mrc.voxel_size = (x * 10, y * 10, z * 10)
        if stored.dtype != data.dtype:
            mrc.header.label[0] = f"{_DTYPE_LABEL}{data.dtype}".encode()
            mrc.header.nlabl = 1
