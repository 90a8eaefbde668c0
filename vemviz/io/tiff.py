"""3D TIFF: ImageJ hyperstacks, OME-TIFF and plain multi-page TIFF.

Voxel size is looked up, in this order, in:
1. a JSON ImageDescription holding ``voxel_size_nm: [z, y, x]`` (vemviz's own and
   ``../shared/data``'s convention);
2. OME-XML ``PhysicalSizeZ/Y/X`` with their units (default micrometre);
3. ImageJ metadata: ``spacing`` (z) and ``unit``, plus the X/YResolution tags (pixels per unit).
A file with incomplete spacing gives ``voxel_size_nm=None`` (the CLI then asks for
``--voxel-size``). Writing uses ImageJ hyperstack metadata (unit ``nm``), which Fiji reads, for
the dtypes ImageJ supports (uint8, uint16, float32); other dtypes (e.g. uint32 labels) are
written as plain TIFF whose JSON description carries the voxel size.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.io.units import is_known_unit, nm_per_unit
from vemviz.volume import Volume, VoxelSize

IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


def _round_nm(values: list[float]) -> VoxelSize:
    return tuple(float(f"{v:.6g}") for v in values)  # type: ignore[return-value]


def _from_json_description(description: str) -> VoxelSize | None:
    try:
        meta = json.loads(description)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(meta, dict) and "voxel_size_nm" in meta:
        return _round_nm([float(v) for v in meta["voxel_size_nm"]])
    return None


def _from_ome(xml: str) -> VoxelSize | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    values = []
    for axis in "ZYX":
        size = pixels.get(f"PhysicalSize{axis}")
        if size is None:
            return None
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        values.append(float(size) * nm_per_unit(unit))
    return _round_nm(values)


def _resolution(page: tifffile.TiffPage, tag: str) -> float | None:
    value = page.tags.get(tag)
    if value is None:
        return None
    numerator, denominator = value.value
    if numerator == 0 or denominator == 0:
        return None
    return denominator / numerator


def _from_imagej(tif: tifffile.TiffFile) -> VoxelSize | None:
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    spacing = meta.get("spacing")
    page = tif.pages[0]
    x = _resolution(page, "XResolution")
    y = _resolution(page, "YResolution")
    if spacing is None or x is None or y is None or not is_known_unit(unit):
        return None
    scale = nm_per_unit(unit)
    return _round_nm([float(spacing) * scale, y * scale, x * scale])


def _voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    description = tif.pages[0].description
    found = _from_json_description(description) if description else None
    if found is None and tif.is_ome and tif.ome_metadata:
        found = _from_ome(tif.ome_metadata)
    if found is None and tif.is_imagej:
        found = _from_imagej(tif)
    return found


def _to_zyx(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Squeeze singleton axes and check that what is left is (z, y, x) or (y, x)."""
    for axis in "TC":
        if axis in axes:
            position = axes.index(axis)
            if data.shape[position] != 1:
                what = "time points" if axis == "T" else "channels"
                raise VemvizError(
                    f"{path} has {data.shape[position]} {what}; vemviz reads single-channel "
                    "3D volumes (split the channels in Fiji first)"
                )
            data = np.take(data, 0, axis=position)
            axes = axes.replace(axis, "")
    if axes.endswith("S") and data.shape[-1] in (3, 4):
        raise VemvizError(f"{path} is an RGB image; convert it to 8-bit grayscale first")
    data = np.squeeze(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise VemvizError(
            f"{path} holds {data.ndim}D data of shape {data.shape}; expected 3D (z, y, x)"
        )
    return data


def read_tiff(path: Path) -> Volume:
    """Read a 3D (or single-slice 2D) TIFF with its voxel size."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            voxel_size = _voxel_size(tif)
    except VemvizError:
        raise
    except Exception as exc:  # tifffile raises many types on damaged files
        raise VemvizError(f"cannot read TIFF {path}: {exc}") from exc
    data = _to_zyx(data, axes, path)
    return Volume(data, voxel_size, {"source": str(path), "format": "tiff"})


def _imagej_kwargs(volume: Volume) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"imagej": True, "metadata": {"axes": "ZYX"}}
    if volume.voxel_size_nm is not None:
        z, y, x = volume.voxel_size_nm
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        kwargs["metadata"].update({"spacing": z, "unit": "nm"})
    return kwargs


def _plain_kwargs(volume: Volume) -> dict[str, Any]:
    description: dict[str, Any] = {"axes": "ZYX", "shape": list(volume.shape)}
    kwargs: dict[str, Any] = {"metadata": None}
    if volume.voxel_size_nm is not None:
        z, y, x = volume.voxel_size_nm
        description["voxel_size_nm"] = [z, y, x]
        kwargs["resolution"] = (1e7 / x, 1e7 / y)  # pixels per centimetre
        kwargs["resolutionunit"] = "CENTIMETER"
    kwargs["description"] = json.dumps(description)
    return kwargs


def write_tiff(volume: Volume, path: Path) -> None:
    """Write a volume as TIFF: ImageJ hyperstack when ImageJ supports the dtype."""
    data = volume.numpy()
    imagej = data.dtype.type in IMAGEJ_DTYPES
    kwargs = _imagej_kwargs(volume) if imagej else _plain_kwargs(volume)
    with atomic_path(path) as temp:
        tifffile.imwrite(
            temp,
            data,
            bigtiff=data.nbytes > 2**31 - 2**25,
            photometric="minisblack",
            **kwargs,
        )
