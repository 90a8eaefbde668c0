"""Folders of 2D slices (TIFF or PNG), one file per z section, in natural sort order.

``slice_2.tif`` comes before ``slice_10.tif``. All slices must share shape and dtype. The
voxel size is read from a ``metadata.json`` beside the slices (``{"voxel_size_nm": [z, y, x]}``)
when present; otherwise it is unknown (slice files do not carry the section thickness).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import tifffile
from natsort import natsorted

from vemviz.errors import VemvizError
from vemviz.progress import track
from vemviz.volume import Volume

SLICE_SUFFIXES = (".tif", ".tiff", ".png")


def list_slices(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES and p.is_file()]
    return natsorted(files, key=lambda p: p.name)


def read_slice(path: Path) -> np.ndarray:
    """One 2D grayscale slice; a clear error for unreadable, colour or non-2D files."""
    try:
        if path.suffix.lower() == ".png":
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError("not a readable PNG")
        else:
            image = tifffile.imread(path)
    except Exception as exc:
        raise VemvizError(f"cannot read slice {path}: {exc}") from exc
    image = np.squeeze(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        raise VemvizError(f"slice {path} is a colour image; convert the stack to grayscale first")
    if image.ndim != 2:
        raise VemvizError(f"slice {path} has shape {image.shape}; expected a 2D image")
    return image


def _folder_voxel_size(folder: Path) -> tuple[float, float, float] | None:
    meta = folder / "metadata.json"
    if not meta.exists():
        return None
    try:
        return tuple(json.loads(meta.read_text())["voxel_size_nm"])  # type: ignore[return-value]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise VemvizError(f"{meta} is not valid JSON with a voxel_size_nm entry: {exc}") from exc


def read_slice_folder(folder: Path) -> Volume:
    files = list_slices(folder)
    if not files:
        raise VemvizError(f"{folder} holds no .tif/.tiff/.png slices")
    first = read_slice(files[0])
    stack = np.empty((len(files), *first.shape), dtype=first.dtype)
    stack[0] = first
    for z, path in track(list(enumerate(files))[1:], f"reading {len(files)} slices"):
        image = read_slice(path)
        if image.shape != first.shape or image.dtype != first.dtype:
            raise VemvizError(
                f"slice {path.name} is {image.shape} {image.dtype}, but {files[0].name} is "
                f"{first.shape} {first.dtype}; all slices must match"
            )
        stack[z] = image
    return Volume(stack, _folder_voxel_size(folder), {"source": str(folder), "format": "slices"})
