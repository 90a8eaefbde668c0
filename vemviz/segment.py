"""Segmentation of mitochondria and cells into instance labels (classical baseline).

Mitochondria (``target="mito"``): EM stains them darker than cytoplasm and much thicker than
membranes. The volume is smoothed with an anisotropic Gaussian (sigma given in nm, so slices of
any thickness are treated alike), thresholded between the cytoplasm and organelle intensity
levels (Otsu on the smoothed image), opened with a ball of physical radius to remove thin dark
membranes, and cleaned of objects below a physical volume (nm^3). Touching objects are split by
a watershed on the anisotropic distance transform, seeded at its regional maxima.

Cells (``target="cells"``): membranes are thin dark sheets. Voxels darker than the membrane
threshold form the boundary map; the interior distance transform (in nm) seeds one marker per
cell at its h-maxima, and a seeded watershed on the smoothed intensity grows the markers to a
dense labelling; regions smaller than a minimum volume are merged into their neighbours.

Prompts select objects: positive points keep the instance under them, negative points remove
it, boxes keep the instances mostly inside them. Learned models replace these methods in a
later version; this module keeps the same interface.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from vemviz.errors import VemvizError
from vemviz.volume import VoxelSize

TARGETS = ("mito", "cells")


def _sigma_voxels(sigma_nm: float, voxel_size_nm: VoxelSize) -> tuple[float, ...]:
    return tuple(min(sigma_nm / v, 4.0) if sigma_nm / v >= 0.3 else 0.0 for v in voxel_size_nm)


def _ball(radius_nm: float, voxel_size_nm: VoxelSize) -> np.ndarray:
    half = [max(int(radius_nm // v), 0) for v in voxel_size_nm]
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * v for h, v in zip(half, voxel_size_nm, strict=True)], indexing="ij"
    )
    return sum(g**2 for g in grids) <= radius_nm**2


def imaged_slices(image: np.ndarray) -> np.ndarray:
    """Boolean per z slice: False for blank (constant) slices, which must not bias thresholds."""
    return image.reshape(image.shape[0], -1).std(axis=1) > 1e-3 * max(float(np.ptp(image)), 1.0)


def _box_maximum(values: np.ndarray, radius_nm: float, voxel_size_nm: VoxelSize) -> np.ndarray:
    """Maximum over a box of half-width ``radius_nm`` (separable, so fast for large radii)."""
    size = tuple(2 * max(int(radius_nm // v), 0) + 1 for v in voxel_size_nm)
    return ndi.maximum_filter(values, size=size)


def _min_voxels(volume_nm3: float, voxel_size_nm: VoxelSize) -> int:
    return max(int(volume_nm3 / float(np.prod(voxel_size_nm))), 1)


def split_touching(
    mask: np.ndarray, voxel_size_nm: VoxelSize, min_separation_nm: float
) -> np.ndarray:
    """Instance labels for a binary mask: watershed on the distance transform (nm)."""
    distance = ndi.distance_transform_edt(mask, sampling=voxel_size_nm)
    peaks = (distance == _box_maximum(distance, min_separation_nm, voxel_size_nm)) & mask
    peaks &= distance > 0.5 * min_separation_nm
    markers = connected_components(peaks, connectivity=3)
    if markers.max() == 0:
        return connected_components(mask, connectivity=1).astype(np.uint32)
    labels = watershed(-distance, markers, mask=mask)
    return labels.astype(np.uint32)


def smooth_mito(image: np.ndarray, voxel_size_nm: VoxelSize, smooth_nm: float = 12.0) -> np.ndarray:
    """The anisotropic Gaussian smoothing that `segment_mito` thresholds (float32)."""
    return ndi.gaussian_filter(image.astype(np.float32), _sigma_voxels(smooth_nm, voxel_size_nm))


def segment_mito(
    image: np.ndarray,
    voxel_size_nm: VoxelSize,
    *,
    smooth_nm: float = 12.0,
    opening_nm: float = 40.0,
    min_volume_nm3: float = 1.5e6,
    threshold: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Mitochondria instance labels (uint32) and a report with the threshold used.

    ``threshold`` (on the smoothed image) replaces Otsu's, e.g. one computed over a whole
    volume that is segmented block by block.
    """
    smooth = smooth_mito(image, voxel_size_nm, smooth_nm)
    if threshold is None:
        threshold = float(threshold_otsu(smooth[imaged_slices(image)]))
    mask = smooth < threshold
    mask = ndi.binary_opening(mask, structure=_ball(opening_nm, voxel_size_nm))
    mask = remove_small_objects(mask, max_size=_min_voxels(min_volume_nm3, voxel_size_nm))
    labels = split_touching(mask, voxel_size_nm, min_separation_nm=2.5 * opening_nm)
    labels = _drop_small(labels, _min_voxels(min_volume_nm3, voxel_size_nm))
    return labels, {"threshold": threshold, "objects": int(labels.max())}


def segment_cells(
    image: np.ndarray,
    voxel_size_nm: VoxelSize,
    *,
    smooth_nm: float = 10.0,
    seed_distance_nm: float = 250.0,
    min_volume_nm3: float = 2e7,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Dense cell instance labels (uint32) by seeded watershed from membrane distance."""
    smooth = ndi.gaussian_filter(image.astype(np.float32), _sigma_voxels(smooth_nm, voxel_size_nm))
    low, high = np.percentile(smooth[imaged_slices(image)], [2, 60])
    membrane = smooth < low + 0.45 * (high - low)
    interior = ~membrane
    distance = ndi.distance_transform_edt(interior, sampling=voxel_size_nm)
    peaks = (distance == _box_maximum(distance, seed_distance_nm, voxel_size_nm)) & (
        distance > seed_distance_nm / 2
    )
    markers = connected_components(peaks, connectivity=3)
    labels = watershed(-smooth, markers).astype(np.uint32)
    labels = _merge_small(labels, _min_voxels(min_volume_nm3, voxel_size_nm))
    return labels, {
        "membrane_threshold": float(low + 0.45 * (high - low)),
        "objects": int(labels.max()),
    }


def _drop_small(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    lookup = np.zeros(len(sizes), dtype=np.uint32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lookup[labels]


def _merge_small(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Give regions below ``min_voxels`` to the neighbour they share most boundary with."""
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero((sizes > 0) & (sizes < min_voxels))
    if len(small) == 0 or len(small) == np.count_nonzero(sizes):
        return _drop_small(labels, 1)
    boxes = ndi.find_objects(labels)
    lookup = np.arange(len(sizes), dtype=np.uint32)
    for region in small:
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[region - 1])
        crop = labels[box]
        grown = ndi.grey_dilation(crop, size=(1, 3, 3))
        touching = grown[(crop == region) & (grown != region)]
        if touching.size:
            lookup[region] = np.bincount(touching).argmax()
    return _drop_small(lookup[labels], 1)


def read_prompts(path: Path) -> dict[str, Any]:
    """Load a prompts file.

    Format: ``{"points": [{"z", "y", "x", "positive"}], "boxes": [{"z", "y0", "x0", "y1", "x1"}]}``
    in voxel indices.
    """
    try:
        prompts = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VemvizError(f"cannot read prompts {path}: {exc}") from exc
    if not isinstance(prompts, dict) or not (prompts.get("points") or prompts.get("boxes")):
        raise VemvizError(f"{path} holds no prompts: expected 'points' and/or 'boxes' lists")
    return prompts


def select_by_prompts(labels: np.ndarray, prompts: dict[str, Any]) -> np.ndarray:
    """Keep the instances chosen by positive points and boxes, minus those under negative points."""
    keep: set[int] = set()
    drop: set[int] = set()
    for point in prompts.get("points", []):
        z, y, x = (int(point[k]) for k in "zyx")
        if not (0 <= z < labels.shape[0] and 0 <= y < labels.shape[1] and 0 <= x < labels.shape[2]):
            raise VemvizError(f"prompt point {(z, y, x)} lies outside the volume {labels.shape}")
        (keep if point.get("positive", True) else drop).add(int(labels[z, y, x]))
    for box in prompts.get("boxes", []):
        window = labels[
            int(box["z"]), int(box["y0"]) : int(box["y1"]), int(box["x0"]) : int(box["x1"])
        ]
        ids, counts = np.unique(window[window > 0], return_counts=True)
        keep.update(
            int(i)
            for i, c in zip(ids, counts, strict=True)
            if c >= 0.5 * np.count_nonzero(labels[int(box["z"])] == i)
        )
    keep -= drop | {0}
    if not keep:
        raise VemvizError("the prompts select no object: no positive point or box lies on one")
    selected = np.where(np.isin(labels, sorted(keep)), labels, 0)
    return _drop_small(selected, 1)


def segment(
    image: np.ndarray, voxel_size_nm: VoxelSize, target: str, **options: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Instance labels for ``target`` ("mito" or "cells"); ``options`` go to its function."""
    if target == "mito":
        return segment_mito(image, voxel_size_nm, **options)
    if target == "cells":
        return segment_cells(image, voxel_size_nm, **options)
    raise VemvizError(f"unknown segmentation target {target!r}; choose one of {', '.join(TARGETS)}")
