"""Segmentation of mitochondria and cells into instance labels: learned and classical.

Mitochondria (``target="mito"``): EM stains them darker than cytoplasm and much thicker than
membranes. The volume is smoothed with an anisotropic Gaussian (sigma given in nm, so slices of
any thickness are treated alike), thresholded between the cytoplasm and organelle intensity
levels (Otsu on the smoothed image), opened with a ball of physical radius to remove thin dark
membranes, and cleaned of objects below a physical volume (nm^3). Touching objects are split by
a watershed on the anisotropic distance transform, seeded at its regional maxima; regions are
joined again where there is no neck between them (`split_touching`).

Cells (``target="cells"``): membranes are thin dark sheets. Voxels darker than the membrane
threshold form the boundary map; the interior distance transform (in nm) seeds one marker per
cell at its h-maxima, and a seeded watershed on the smoothed intensity grows the markers to a
dense labelling; regions smaller than a minimum volume are merged into their neighbours.

Learned models (`segment_learned`, the default of the CLI): a U-Net (`vemviz.unet`, trained
by `vemviz.train`) predicts per image plane a probability -- of mitochondrion, or of cell
boundary. Planes are resampled from the voxel size to the model's pixel size, so one model
serves microscopes of different resolution, and predicted in a fixed grid of tiles, each from a
window with context around it (`unet.predict_planes`; blocks of a larger-than-memory volume
then give exactly the whole volume's values). Intensities are mapped by the 1st and 99th
percentiles of (at most ~128) imaged slices, counted in a histogram (`intensity_range`). Anisotropic
volumes are predicted slice by slice (xy); when the voxels are near-isotropic, the xy, xz and yz
planes are all predicted and the three probability volumes averaged, which gives every voxel
3D context. Mitochondria are the voxels above 0.5, split into touching instances by the
distance-transform watershed above and cleaned of objects below a physical volume. Cells are
grown by a seeded watershed on the boundary probability from seeds at the maxima of the
distance (nm) to the nearest boundary, then agglomerated: neighbouring regions are merged,
lowest first, while the mean boundary probability along their shared faces stays below a
threshold (region adjacency graph, mean-affinity agglomeration). Uncertain voxels (probability
between 0.3 and 0.7) are counted and the slices with most of them reported.

Prompts select objects: positive points keep the instance under them, negative points remove
it, boxes keep the instances mostly inside them. The instances are 3D, so an object picked on
one slice comes with all of its extent through z.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from vemviz.errors import VemvizError
from vemviz.intensity import count_values, range_from_counts
from vemviz.volume import VoxelSize

if TYPE_CHECKING:
    from vemviz.unet import UNet

TARGETS = ("mito", "cells")
NORMALISATION_SLICES = 64


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


def normalisation_slices(imaged: np.ndarray) -> np.ndarray:
    """Indices of the slices whose intensities set the normalisation: every k-th imaged slice,
    k chosen so that 64 to 127 of them are used."""
    index = np.flatnonzero(imaged)
    return index[:: max(len(index) // NORMALISATION_SLICES, 1)]


def intensity_range(image: np.ndarray, imaged: np.ndarray | None = None) -> tuple[float, float]:
    """1st and 99th intensity percentiles of a 3D image's `normalisation_slices` (``imaged``:
    its imaged slices, found when None) or of a whole 2D image."""
    sample = image
    if image.ndim == 3:
        imaged = imaged_slices(image) if imaged is None else imaged
        if imaged.any():
            sample = image[normalisation_slices(imaged)]
    counts, value_range = count_values(sample)
    return range_from_counts(counts, sample.dtype, value_range)


def normalize_intensity(
    image: np.ndarray, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Intensity mapped to about [-0.5, 0.5] by ``value_range`` (default `intensity_range`)."""
    lo, hi = intensity_range(image) if value_range is None else value_range
    return ((image.astype(np.float32) - lo) / max(float(hi - lo), 1e-6) - 0.5).astype(np.float32)


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another label, or unlabelled (0): the cell boundaries."""
    boundary = labels == 0
    for axis in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        differ = labels[tuple(a)] != labels[tuple(b)]
        boundary[tuple(a)] |= differ
        boundary[tuple(b)] |= differ
    return boundary


def _box_maximum(values: np.ndarray, radius_nm: float, voxel_size_nm: VoxelSize) -> np.ndarray:
    """Maximum over a box of half-width ``radius_nm`` (separable, so fast for large radii)."""
    size = tuple(2 * max(int(radius_nm // v), 0) + 1 for v in voxel_size_nm)
    return ndi.maximum_filter(values, size=size)


def _min_voxels(volume_nm3: float, voxel_size_nm: VoxelSize) -> int:
    return max(int(volume_nm3 / float(np.prod(voxel_size_nm))), 1)


# Two watershed regions of one object stay apart only where the neck between them is narrower
# than this fraction of the thinner one's largest inscribed radius. On the demo's reconstructed
# phantom an elongated mitochondrion whose ridge undulates gave up to 3 regions with saddles at
# 0.92-0.96 of their peaks (12 objects for 8 mitochondria); touching balls meet far lower.
NECK_RATIO = 0.7


def split_touching(
    mask: np.ndarray, voxel_size_nm: VoxelSize, min_separation_nm: float
) -> np.ndarray:
    """Instance labels for a binary mask: watershed on the distance transform (nm) from its
    maxima at least ``min_separation_nm`` apart and deeper than half that; neighbouring
    regions whose saddle (the largest distance on their shared faces) reaches `NECK_RATIO` of
    the smaller of their peaks are joined again. Parts of the mask thinner than the separation
    hold no such maximum and are left out (membrane fragments, for mitochondria), unless no
    part holds one: then the connected parts are the instances."""
    distance = ndi.distance_transform_edt(mask, sampling=voxel_size_nm)
    peaks = (distance == _box_maximum(distance, min_separation_nm, voxel_size_nm)) & mask
    peaks &= distance > 0.5 * min_separation_nm
    markers = connected_components(peaks, connectivity=3)
    if markers.max() == 0:
        return connected_components(mask, connectivity=1).astype(np.uint32)
    labels = watershed(-distance, markers, mask=mask).astype(np.uint32)
    return _join_without_neck(labels, distance)


def _join_without_neck(labels: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """`split_touching`'s joining of regions with no neck between them, numbered 1..N."""
    n = int(labels.max()) + 1
    if n <= 2:
        return labels
    first, second, face_a, face_b, inverse = _faces(labels, distance)
    saddle = np.zeros(len(first))
    np.maximum.at(saddle, inverse, np.minimum(face_a, face_b))
    peaks = ndi.maximum(distance, labels, index=np.arange(n))
    join = saddle >= NECK_RATIO * np.minimum(peaks[first], peaks[second])
    graph = coo_matrix((np.ones(join.sum()), (first[join], second[join])), shape=(n, n))
    _, component = graph_components(graph, directed=False)
    return _drop_small(component[labels].astype(np.uint32) * (labels > 0), 1)


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


def check_prompts(prompts: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Raise if a prompt point or box slice lies outside a volume of ``shape``."""
    for point in prompts.get("points", []):
        z, y, x = (int(point[k]) for k in "zyx")
        if not (0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]):
            raise VemvizError(f"prompt point {(z, y, x)} lies outside the volume {tuple(shape)}")
    for box in prompts.get("boxes", []):
        if not 0 <= int(box["z"]) < shape[0]:
            raise VemvizError(f"prompt box on slice {box['z']} lies outside the volume "
                              f"({shape[0]} slices)")  # fmt: skip


def prompted_objects(
    plane: Callable[[int], np.ndarray], shape: tuple[int, ...], prompts: dict[str, Any]
) -> list[int]:
    """Ids of the instances chosen by positive points and boxes, minus those under negative
    points, from the label planes ``plane(z)`` of a volume of ``shape``.

    A box chooses the objects with at least half of their area on its slice inside it.
    """
    check_prompts(prompts, shape)
    keep: set[int] = set()
    drop: set[int] = set()
    for point in prompts.get("points", []):
        z, y, x = (int(point[k]) for k in "zyx")
        (keep if point.get("positive", True) else drop).add(int(plane(z)[y, x]))
    for box in prompts.get("boxes", []):
        labels = plane(int(box["z"]))
        window = labels[int(box["y0"]) : int(box["y1"]), int(box["x0"]) : int(box["x1"])]
        ids, counts = np.unique(window[window > 0], return_counts=True)
        keep.update(
            int(i)
            for i, c in zip(ids, counts, strict=True)
            if c >= 0.5 * np.count_nonzero(labels == i)
        )
    keep -= drop | {0}
    if not keep:
        raise VemvizError("the prompts select no object: no positive point or box lies on one")
    return sorted(keep)


def select_by_prompts(labels: np.ndarray, prompts: dict[str, Any]) -> np.ndarray:
    """Keep the instances chosen by the prompts (`prompted_objects`), numbered 1..K."""
    selected = np.where(np.isin(labels, prompted_objects(labels.__getitem__, labels.shape,
                                                         prompts)), labels, 0)  # fmt: skip
    return _drop_small(selected, 1)


def plane_axes(voxel_size_nm: VoxelSize, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Plane normals to predict along: all three for near-isotropic volumes, else z only."""
    isotropic = max(voxel_size_nm) <= 1.5 * min(voxel_size_nm)
    return (0, 1, 2) if isotropic and min(shape) >= 16 else (0,)


def _plane_geometry(
    axis: int, voxel_size_nm: VoxelSize, model: UNet
) -> tuple[tuple[int, int], tuple[float, float], int]:
    """For planes normal to ``axis``: their two axes, pixel size, and the slices of context
    taken on each side along the normal (0 for slices thicker than twice the model's pixel,
    which see their own plane repeated)."""
    others = tuple(i for i in range(3) if i != axis)
    pixel = (voxel_size_nm[others[0]], voxel_size_nm[others[1]])
    flat = voxel_size_nm[axis] > 2 * model.config.pixel_nm
    return others, pixel, 0 if flat else model.config.context // 2  # type: ignore[return-value]


def prediction_box(
    box: tuple[slice, ...], voxel_size_nm: VoxelSize, shape: tuple[int, ...], model: UNet,
    tile: int = 256,
) -> tuple[slice, ...]:  # fmt: skip
    """The part of a volume of ``shape`` that `predict_probabilities` needs to give ``box``
    exactly as from the whole volume: whole tiles with their context in every predicted plane,
    and the model's slices of context along the planes' normal."""
    from vemviz.unet import tile_geometry, tile_grid

    need = [[b.start, b.stop] for b in box]
    for axis in plane_axes(voxel_size_nm, shape):
        others, pixel, half = _plane_geometry(axis, voxel_size_nm, model)
        cores, halos = tile_geometry(pixel, model.config.pixel_nm, tile)
        for o, core, halo in zip(others, cores, halos, strict=True):
            windows = [
                (w0, w1)
                for c0, c1, w0, w1 in tile_grid(shape[o], core, halo)
                if c1 > box[o].start and c0 < box[o].stop
            ]
            need[o][0] = min(need[o][0], min(w0 for w0, _ in windows))
            need[o][1] = max(need[o][1], max(w1 for _, w1 in windows))
        need[axis] = [
            min(need[axis][0], box[axis].start - half),
            max(need[axis][1], box[axis].stop + half),
        ]
    return tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(need, shape, strict=True))


def predict_probabilities(
    image: np.ndarray,
    voxel_size_nm: VoxelSize,
    model: UNet,
    *,
    tile: int = 256,
    batch: int = 4,
    value_range: tuple[float, float] | None = None,
    imaged: np.ndarray | None = None,
    origin: tuple[int, int, int] = (0, 0, 0),
    volume_shape: tuple[int, int, int] | None = None,
    area: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """Per-voxel probability (float32) predicted by ``model``, fused over planes.

    By default ``image`` is the whole volume and the result has its shape. For a block of a
    larger volume, ``origin`` is the block's position in a volume of ``volume_shape``,
    ``value_range`` the volume's `intensity_range`, ``imaged`` its imaged slices (per slice of
    the volume; blank slices get 0), and the result covers ``area`` (a box in volume
    coordinates whose `prediction_box` the block contains), with exactly the values the whole
    volume would give there.
    """
    import torch

    from vemviz.progress import track
    from vemviz.unet import predict_planes

    if image.ndim != 3:
        raise VemvizError(f"segmentation needs a (z, y, x) volume; got {image.ndim}D {image.shape}")
    shape = tuple(volume_shape or image.shape)
    area = area or tuple(slice(o, o + n) for o, n in zip(origin, image.shape, strict=True))
    if imaged is None:
        imaged = np.zeros(shape[0], bool)
        imaged[origin[0] : origin[0] + image.shape[0]] = imaged_slices(image)
    if not imaged.any():
        raise VemvizError("the volume is blank (every slice constant): nothing to segment")
    if value_range is None:
        value_range = intensity_range(image, imaged[origin[0] : origin[0] + image.shape[0]])
    normalized = normalize_intensity(image, value_range)
    axes = plane_axes(voxel_size_nm, shape)
    total = np.zeros(tuple(a.stop - a.start for a in area), np.float32)
    for axis in axes:
        planes = np.moveaxis(normalized, axis, 0)
        (o0, o1), pixel, half = _plane_geometry(axis, voxel_size_nm, model)
        count = shape[axis]
        wanted = range(area[axis].start, area[axis].stop)
        extent = (len(wanted), area[o0].stop - area[o0].start, area[o1].stop - area[o1].start)
        out = np.empty(extent, np.float32)
        for start in track(
            range(0, len(wanted), batch), f"{model.config.target} planes (axis {'zyx'[axis]})"
        ):
            stack = [
                [
                    planes[int(np.clip(g + d, 0, count - 1)) - origin[axis]]
                    for d in range(-half, half + 1)
                ]
                if half
                else [planes[g - origin[axis]]] * model.config.context
                for g in wanted[start : start + batch]
            ]
            x = torch.from_numpy(np.asarray(stack, np.float32))
            out[start : start + len(stack)] = predict_planes(
                model, x, pixel, tile=tile, offset=(origin[o0], origin[o1]),
                full=(shape[o0], shape[o1]),
                area=(area[o0].start, area[o0].stop, area[o1].start, area[o1].stop),
            ).numpy()  # fmt: skip
        total += np.moveaxis(out, 0, axis)
    total /= len(axes)
    total[~imaged[area[0]]] = 0.0
    return total


def instances_from_probabilities(
    probabilities: np.ndarray, voxel_size_nm: VoxelSize, target: str
) -> np.ndarray:
    """Instance labels from a model's probabilities: of mitochondrion, or of cell boundary."""
    if target == "mito":
        return mito_instances(probabilities, voxel_size_nm)
    return cells_from_boundaries(probabilities, voxel_size_nm)


def uncertainty_report(probabilities: np.ndarray, low: float = 0.3, high: float = 0.7) -> dict:
    """How much of the prediction is undecided, and where (the z slices with most of it)."""
    uncertain = (probabilities > low) & (probabilities < high)
    decided = np.count_nonzero(probabilities >= high)
    per_slice = uncertain.reshape(uncertain.shape[0], -1).mean(axis=1)
    worst = np.argsort(per_slice)[::-1][:3]
    return {
        "uncertain_fraction": float(uncertain.mean()),
        "uncertain_per_confident": float(np.count_nonzero(uncertain) / max(decided, 1)),
        "most_uncertain_slices": [
            {"z": int(z), "fraction": round(float(per_slice[z]), 4)} for z in worst
        ],
    }


def _physical_min_voxels(min_volume_nm3: float, voxel_size_nm: VoxelSize, depth: int) -> int:
    """Voxels of a cube of ``min_volume_nm3``, its z side clipped to the stack's thickness."""
    side = min_volume_nm3 ** (1 / 3)
    volume = side * side * min(side, depth * voxel_size_nm[0])
    return _min_voxels(volume, voxel_size_nm)


def mito_instances(
    probabilities: np.ndarray,
    voxel_size_nm: VoxelSize,
    *,
    threshold: float = 0.5,
    min_volume_nm3: float = 5e5,
    min_separation_nm: float = 120.0,
) -> np.ndarray:
    """Mitochondria instances (uint32) from a foreground probability."""
    min_voxels = _physical_min_voxels(min_volume_nm3, voxel_size_nm, probabilities.shape[0])
    mask = remove_small_objects(probabilities > threshold, max_size=min_voxels)
    labels = split_touching(mask, voxel_size_nm, min_separation_nm)
    return _drop_small(labels, min_voxels)


def _faces(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every face between voxels of two different regions (0 is no region): the region pairs
    (``first < second``, one entry per pair), ``values`` on the two sides of each face, and
    each face's index into the pairs."""
    n = int(labels.max()) + 1
    keys, side_a, side_b = [], [], []
    for axis in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        differ = (la != lb) & (la > 0) & (lb > 0)
        la, lb = la[differ].astype(np.int64), lb[differ].astype(np.int64)
        keys.append(np.minimum(la, lb) * n + np.maximum(la, lb))
        side_a.append(values[tuple(a)][differ])
        side_b.append(values[tuple(b)][differ])
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    return unique // n, unique % n, np.concatenate(side_a), np.concatenate(side_b), inverse


def _region_graph(labels: np.ndarray, boundary: np.ndarray) -> tuple[np.ndarray, ...]:
    """Edges (a < b) between touching regions with the sum and count of boundary values."""
    first, second, side_a, side_b, inverse = _faces(labels, boundary)
    sums = np.bincount(inverse, weights=0.5 * (side_a + side_b))
    counts = np.bincount(inverse).astype(np.float64)
    return first, second, sums, counts


def agglomerate(labels: np.ndarray, boundary: np.ndarray, threshold: float) -> np.ndarray:
    """Merge neighbouring regions, lowest mean boundary first, while that mean < ``threshold``."""
    if labels.max() < 2:
        return labels
    first, second, sums, counts = _region_graph(labels, boundary)
    adjacency: dict[int, dict[int, list[float]]] = {}
    heap = []
    for a, b, s, c in zip(first.tolist(), second.tolist(), sums.tolist(), counts.tolist(),
                          strict=True):  # fmt: skip
        adjacency.setdefault(a, {})[b] = [s, c]
        adjacency.setdefault(b, {})[a] = [s, c]
        heap.append((s / c, a, b))
    heapq.heapify(heap)
    parent = np.arange(int(labels.max()) + 1)
    while heap:
        mean, a, b = heapq.heappop(heap)
        if mean >= threshold:
            break
        if parent[a] != a or parent[b] != b or b not in adjacency[a]:
            continue
        s, c = adjacency[a][b]
        if abs(s / c - mean) > 1e-12:
            continue
        if len(adjacency[a]) < len(adjacency[b]):
            a, b = b, a
        parent[b] = a
        del adjacency[a][b]
        for other, (s, c) in adjacency.pop(b).items():
            if other == a:
                continue
            del adjacency[other][b]
            edge = adjacency[a].setdefault(other, [0.0, 0.0])
            edge[0] += s
            edge[1] += c
            adjacency[other][a] = edge
            heapq.heappush(heap, (edge[0] / edge[1], min(a, other), max(a, other)))
    roots = parent.copy()
    for i in range(len(roots)):
        r = i
        while roots[r] != r:
            r = roots[r]
        roots[i] = r
    return _drop_small(roots[labels].astype(np.uint32), 1)


def cells_from_boundaries(
    boundary: np.ndarray,
    voxel_size_nm: VoxelSize,
    *,
    seed_distance_nm: float = 40.0,
    merge_threshold: float = 0.5,
    min_volume_nm3: float = 2e5,
) -> np.ndarray:
    """Dense cell instances (uint32): seeded watershed on ``boundary`` plus agglomeration."""
    interior = boundary < 0.5
    distance = ndi.distance_transform_edt(interior, sampling=voxel_size_nm)
    peaks = (distance == _box_maximum(distance, seed_distance_nm, voxel_size_nm)) & interior
    markers = connected_components(peaks, connectivity=3)
    if markers.max() == 0:
        raise VemvizError("no cell interiors found: the boundary prediction covers everything")
    labels = watershed(boundary, markers).astype(np.uint32)
    labels = agglomerate(labels, boundary, merge_threshold)
    min_voxels = _physical_min_voxels(min_volume_nm3, voxel_size_nm, boundary.shape[0])
    return _merge_small(labels, min_voxels)


def segment_learned(
    image: np.ndarray, voxel_size_nm: VoxelSize, model: UNet
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Instance labels, a report and the probability volume predicted by ``model``."""
    probabilities = predict_probabilities(image, voxel_size_nm, model)
    labels = instances_from_probabilities(probabilities, voxel_size_nm, model.config.target)
    report = {
        "method": "learned",
        "model_pixel_nm": model.config.pixel_nm,
        "planes": ["zyx"[a] for a in plane_axes(voxel_size_nm, image.shape)],
        "objects": int(labels.max()),
        **uncertainty_report(probabilities),
    }
    return labels, report, probabilities


def segment(
    image: np.ndarray, voxel_size_nm: VoxelSize, target: str, **options: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Instance labels for ``target`` ("mito" or "cells") by the classical methods; ``options``
    go to its function."""
    if target == "mito":
        return segment_mito(image, voxel_size_nm, **options)
    if target == "cells":
        return segment_cells(image, voxel_size_nm, **options)
    raise VemvizError(f"unknown segmentation target {target!r}; choose one of {', '.join(TARGETS)}")
