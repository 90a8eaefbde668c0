"""Reading and writing volumes; the format follows the path.

| path                              | read | write | voxel size from                      |
|-----------------------------------|------|-------|--------------------------------------|
| ``.tif`` ``.tiff`` (3D, OME-TIFF) | yes  | yes   | JSON description, OME-XML, ImageJ    |
| folder of ``.tif``/``.png`` slices| yes  | no    | ``metadata.json`` in the folder      |
| ``.zarr`` / ``.ome.zarr``         | yes  | yes   | NGFF scale + units, or zarr attrs    |
| ``.mrc`` ``.map`` ``.rec`` ``.st``| yes  | yes   | header (ångström)                    |
| ``.npy``                          | yes  | yes   | ``NAME.npy.json`` sidecar            |
| ``.png`` (one slice)              | yes  | no    | none                                 |

``voxel_size`` passed to `read_volume` (the CLI's ``--voxel-size``) overrides the metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vemviz.errors import VemvizError
from vemviz.io.mrc import read_mrc, write_mrc
from vemviz.io.npy import read_npy, write_npy
from vemviz.io.slices import read_slice, read_slice_folder
from vemviz.io.tiff import read_tiff, write_tiff
from vemviz.io.zarr_io import read_zarr, write_ome_zarr
from vemviz.volume import Volume, validate_voxel_size

MRC_SUFFIXES = (".mrc", ".map", ".rec", ".st", ".mrcs")
TIFF_SUFFIXES = (".tif", ".tiff")


def _is_zarr(path: Path) -> bool:
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))


def format_of(path: Path) -> str:
    """The format name for ``path``: tiff, slices, zarr, mrc, npy or png."""
    suffix = path.suffix.lower()
    if _is_zarr(path):
        return "zarr"
    if path.is_dir():
        return "slices"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in MRC_SUFFIXES:
        return "mrc"
    if suffix == ".npy":
        return "npy"
    if suffix == ".png":
        return "png"
    raise VemvizError(
        f"cannot tell the format of {path}: use .tif, .ome.zarr/.zarr, .mrc, .npy or a slice folder"
    )


def read_volume(path: str | os.PathLike[str], voxel_size: Sequence[float] | None = None) -> Volume:
    """Read a volume from any supported format; ``voxel_size`` (nm, z, y, x) overrides metadata."""
    path = Path(path)
    if not path.exists():
        raise VemvizError(f"input not found: {path}")
    kind = format_of(path)
    if kind == "png":
        volume = Volume(read_slice(path)[None], None, {"source": str(path), "format": "png"})
    else:
        reader = {
            "tiff": read_tiff,
            "slices": read_slice_folder,
            "zarr": read_zarr,
            "mrc": read_mrc,
            "npy": read_npy,
        }[kind]
        volume = reader(path)
    if voxel_size is not None:
        volume = volume.with_data(volume.data, validate_voxel_size(voxel_size))
    return volume


def write_volume(
    volume: Volume, path: str | os.PathLike[str], *, is_label: bool | None = None
) -> Path:
    """Write ``volume`` atomically in the format named by the extension; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        write_ome_zarr(volume, path, is_label=is_label)
    elif suffix in TIFF_SUFFIXES:
        write_tiff(volume, path)
    elif suffix in MRC_SUFFIXES:
        write_mrc(volume, path)
    elif suffix == ".npy":
        write_npy(volume, path)
    else:
        raise VemvizError(
            f"cannot write {path}: use an extension .tif, .ome.zarr, .zarr, .mrc or .npy"
        )
    return path


__all__ = ["format_of", "read_volume", "write_volume"]
