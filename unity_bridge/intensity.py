"""A downsampled 8-bit copy of the intensity volume, for textured cut faces in Unity.

Method: the volume is reduced by one integer factor ``f`` on all three axes, the smallest
that brings it to at most ``max_voxels`` voxels, by averaging ``f x f x f`` blocks (edges are
padded by repetition). It is read slab by slab (``f`` sections at a time), so a lazy (dask)
volume is never loaded whole. uint8 volumes keep their values; other types are stretched
linearly between their 0.5th and 99.5th percentiles onto 0..255.

Output: ``volume.bytes`` holds the raw uint8 voxels in C order (z, y, x), x varying fastest,
which is exactly the layout of a Unity ``Texture3D(width=nx, height=ny, depth=nz)``.
``volume.json`` describes it: shape, spacing and origin in the manifest's units, the
intensity range that mapped to 0 and 255, and ``local_to_uvw``, a row-major 4x4 matrix that
takes a point in the dataset's Unity-local mesh coordinates (X, Y, Z) = volume (-x, z, -y)
to texture coordinates (u, v, w) along volume (x, y, z). Texel ``j`` of the reduced grid
averages source voxels ``j*f .. j*f+f-1``; its centre sits at ``(j*f + (f-1)/2) * spacing``
in volume space and at ``(j + 0.5) / n`` in texture space.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vemviz.errors import VemvizError
from vemviz.volume import Volume

UNIT_PER_NM = {"nm": 1.0, "um": 1e-3}


def downsample_factor(shape: tuple[int, int, int], max_voxels: int) -> int:
    """The smallest integer factor whose reduced grid has at most ``max_voxels`` voxels."""
    if max_voxels < 1:
        raise VemvizError(f"the volume voxel budget must be positive, got {max_voxels}")
    factor = 1
    while math.prod(-(-n // factor) for n in shape) > max_voxels:
        factor += 1
    return factor


def block_mean(data: Any, factor: int) -> np.ndarray:
    """Mean of ``factor``-cubed blocks of a (z, y, x) numpy or dask array, as float32."""
    _, ny, nx = data.shape
    slabs = []
    for z0 in range(0, data.shape[0], factor):
        slab = np.asarray(data[z0 : z0 + factor], dtype=np.float32)
        pad = [(0, factor - slab.shape[0]), (0, -ny % factor), (0, -nx % factor)]
        slab = np.pad(slab, pad, mode="edge")
        blocks = slab.reshape(
            factor, slab.shape[1] // factor, factor, slab.shape[2] // factor, factor
        )
        slabs.append(blocks.mean(axis=(0, 2, 4)))
    return np.stack(slabs)


def to_uint8(values: np.ndarray, source_dtype: np.dtype) -> tuple[np.ndarray, tuple[float, float]]:
    """``values`` mapped linearly onto 0..255, and the (low, high) source values used."""
    if source_dtype == np.uint8:
        low, high = 0.0, 255.0
    else:
        low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
        high = high if high > low else low + 1.0
    scaled = (values - low) * (255.0 / (high - low)) + 0.5
    return np.clip(scaled, 0, 255).astype(np.uint8), (low, high)


def local_to_uvw(
    shape_zyx: tuple[int, ...], spacing_zyx: np.ndarray, origin_xyz: np.ndarray
) -> np.ndarray:
    """Row-major 4x4: Unity-local (X, Y, Z) = volume (-x, z, -y) -> texture (u, v, w)."""
    n_xyz = np.array(shape_zyx[::-1], dtype=np.float64)
    extent_xyz = n_xyz * np.asarray(spacing_zyx, dtype=np.float64)[::-1]
    # volume (x, y, z) as a function of Unity-local (X, Y, Z).
    volume_from_local = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = volume_from_local / extent_xyz[:, None]
    matrix[:3, 3] = 0.5 / n_xyz - origin_xyz / extent_xyz
    return matrix


def write_intensity_volume(
    volume: Volume, manifest: dict[str, Any], out_dir: Path, max_voxels: int
) -> None:
    """Write ``volume.bytes`` and ``volume.json`` (see the module docstring) into ``out_dir``."""
    expected = tuple(int(n) for n in manifest["volume_shape"])
    if volume.shape != expected:
        raise VemvizError(
            f"the volume has shape {volume.shape} but the meshes were made from a volume of "
            f"shape {expected}: pass the image volume the labels were segmented from"
        )
    units = manifest["units"]
    spacing_zyx = np.array(manifest["voxel_size_nm"], dtype=np.float64) * UNIT_PER_NM[units]
    factor = downsample_factor(volume.shape, max_voxels)
    voxels, (low, high) = to_uint8(block_mean(volume.data, factor), volume.dtype)
    reduced_spacing = spacing_zyx * factor
    origin_xyz = (spacing_zyx * (factor - 1) / 2)[::-1]
    header = {
        "format": "vemviz-unity-volume",
        "formatVersion": 1,
        "data": "volume.bytes",
        "dtype": "uint8",
        "shapeZYX": list(voxels.shape),
        "layout": "C order (z, y, x), x fastest: Unity Texture3D(width=x, height=y, depth=z)",
        "downsampleFactor": factor,
        "units": units,
        "spacingZYX": reduced_spacing.tolist(),
        "originXYZ": origin_xyz.tolist(),
        "intensityRange": [low, high],
        "localToUvw": local_to_uvw(voxels.shape, reduced_spacing, origin_xyz).ravel().tolist(),
        "mapping": "(u, v, w, 1) = localToUvw (row-major 4x4) * (X, Y, Z, 1); Unity-local "
        "(X, Y, Z) = volume (-x, z, -y); u, v, w run along volume x, y, z",
    }
    (out_dir / "volume.bytes").write_bytes(np.ascontiguousarray(voxels).tobytes())
    (out_dir / "volume.json").write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
