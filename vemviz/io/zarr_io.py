"""zarr and OME-Zarr (NGFF 0.4 and 0.5) through the ``ome-zarr`` library.

Reading returns a lazy dask array of the full-resolution level. OME-Zarr voxel sizes come from
the first dataset's ``scale`` transformation and the axes' units (converted to nm); axes other
than z, y, x must be singletons. A plain zarr array (no multiscales) is read as is, with the
voxel size from its ``voxel_size_nm`` attribute when present.

Writing produces OME-Zarr with a multiscale pyramid (lateral 2x levels down to ~256 px, mean for
images, nearest for label volumes), axes ``zyx`` in nanometres, NGFF 0.5 (zarr v3) by default or
NGFF 0.4 (zarr v2) with ``ngff_version="0.4"``, so napari and neuroglancer open it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader
from ome_zarr.scale import Methods
from ome_zarr.writer import write_image

from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.io.units import nm_per_unit
from vemviz.volume import Volume, VoxelSize

# ome-zarr logs a warning when the detected NGFF version differs from its default.
logging.getLogger("ome_zarr").setLevel(logging.ERROR)

DEFAULT_CHUNKS = (32, 256, 256)


def _ome_voxel_size(axes: list[dict], transforms: list[list[dict]] | None) -> VoxelSize | None:
    if not transforms or not transforms[0]:
        return None
    scale = next((t["scale"] for t in transforms[0] if t.get("type") == "scale"), None)
    if scale is None:
        return None
    sizes = {}
    for axis, value in zip(axes, scale, strict=True):
        if axis.get("type") == "space":
            unit = axis.get("unit")
            sizes[axis["name"]] = float(value) * (nm_per_unit(unit) if unit else 1.0)
    if not all(name in sizes for name in "zyx"):
        return None
    return tuple(float(f"{sizes[a]:.6g}") for a in "zyx")  # type: ignore[return-value]


def _squeeze_to_zyx(data: da.Array, axes: list[dict], path: Path) -> da.Array:
    names = [a["name"] for a in axes]
    index = []
    for name, size in zip(names, data.shape, strict=True):
        if name in "zyx":
            index.append(slice(None))
        elif size == 1:
            index.append(0)
        else:
            raise VemvizError(f"{path} has {size} entries along axis {name!r}; expected one")
    data = data[tuple(index)]
    kept = [n for n in names if n in "zyx"]
    if kept == ["y", "x"]:
        return data[np.newaxis]
    if kept != ["z", "y", "x"]:
        raise VemvizError(f"{path} has spatial axes {kept}; expected z, y, x")
    return data


def _read_ome(path: Path) -> Volume:
    nodes = list(Reader(parse_url(str(path)))())
    if not nodes or not any(isinstance(spec, Multiscales) for spec in nodes[0].specs):
        raise VemvizError(f"{path} is a zarr group without OME-Zarr multiscales metadata")
    node = nodes[0]
    axes = node.metadata.get("axes") or [{"name": n, "type": "space"} for n in "zyx"]
    data = _squeeze_to_zyx(node.data[0], axes, path)
    voxel = _ome_voxel_size(axes, node.metadata.get("coordinateTransformations"))
    return Volume(data, voxel, {"source": str(path), "format": "ome-zarr"})


def _read_plain(array: zarr.Array, path: Path) -> Volume:
    voxel = array.attrs.get("voxel_size_nm")
    return Volume(da.from_zarr(array), voxel, {"source": str(path), "format": "zarr"})


def read_zarr(path: Path) -> Volume:
    """Read OME-Zarr (full-resolution level) or a plain zarr array, lazily."""
    try:
        node = zarr.open(str(path), mode="r")
        return _read_plain(node, path) if isinstance(node, zarr.Array) else _read_ome(path)
    except VemvizError:
        raise
    except Exception as exc:
        raise VemvizError(f"cannot read zarr store {path}: {exc}") from exc


def pyramid_levels(shape: tuple[int, int, int], smallest: int = 256) -> int:
    """How many 2x lateral downsampling levels to add below ``shape``."""
    levels = 0
    size = max(shape[1], shape[2])
    while size > smallest and levels < 8:
        size //= 2
        levels += 1
    return levels


def write_ome_zarr(
    volume: Volume,
    path: Path,
    *,
    is_label: bool | None = None,
    ngff_version: str = "0.5",
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
) -> None:
    """Write an OME-Zarr image with a pyramid; labels (integer dtypes by default) use nearest."""
    if is_label is None:
        is_label = np.issubdtype(volume.dtype, np.integer) and volume.dtype.itemsize > 1
    fmt = FormatV05() if ngff_version == "0.5" else FormatV04()
    levels = pyramid_levels(volume.shape)
    chunk = tuple(min(c, s) for c, s in zip(chunks, volume.shape, strict=True))
    data = volume.data if volume.is_lazy else da.from_array(volume.data, chunks=chunk)
    scale = None
    units = None
    if volume.voxel_size_nm is not None:
        scale = dict(zip("zyx", volume.voxel_size_nm, strict=True))
        units = dict.fromkeys("zyx", "nanometer")
    with atomic_path(path) as temp:
        root = zarr.group(store=parse_url(str(temp), mode="w", fmt=fmt).store)
        write_image(
            data.rechunk(chunk),
            root,
            axes="zyx",
            fmt=fmt,
            scale_factors=tuple(2**i for i in range(1, levels + 1)),
            method=Methods.NEAREST if is_label else Methods.LOCAL_MEAN,
            scale=scale,
            axes_units=units,
            storage_options={"chunks": chunk},
            name=Path(path).name,
        )
