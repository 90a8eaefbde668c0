"""Surface meshes of labelled objects, in physical units.

One pass of ``scipy.ndimage.find_objects`` gives every label's bounding box; each object is then
meshed on its own box, cut out with a one-voxel margin of background, so no step touches the
whole volume per label and every object (also one cut by the volume's edge) yields a closed
surface. Per object:

1. Marching cubes (scikit-image, Lewiner) on the small binary crop at level 0.5 with the
   anisotropic voxel size as spacing, so vertices land in nanometres directly. An object whose
   surface would exceed ``COARSEN_LIMIT`` times the face budget (marching cubes makes exactly
   two triangles per exposed voxel face, so this is known beforehand) is meshed on the means
   of f^3 voxel blocks instead, its partial-volume fraction, with spacing f times the voxel.
2. VTK's windowed-sinc filter (``smooth_taubin``): a Taubin-style low-pass that removes the
   voxel staircase without shrinking the object.
3. Quadric edge-collapse decimation (``fast_simplification``) to the face budget
   (``decimate`` removes that fraction of faces, at most ``max_faces`` remain). Collapsing a
   thin process can pinch the surface into non-manifold edges; `is_closed` checks the result
   and, when the surface opened, the budget is doubled and decimation repeated (the smoothed,
   undecimated surface is the last resort), so the surface stays closed.
4. Faces are wound so that the signed volume is positive: outward normals.

Thick sections (``interpolate_z``; z spacing at least `MIN_SECTION_RATIO` times the in-plane
one, as in serial-section TEM): marching cubes on the sections themselves gives a terrace per
section, too tall for smoothing to remove without eroding the object. Before step 1 the object
is then resampled along z by shape-based interpolation (`interpolate_sections`): each section's
outline becomes its signed in-plane distance map, the maps are interpolated linearly between
sections at about the in-plane spacing, and the surface is taken where the interpolated
distance is zero, so outlines morph from one section into the next. Where the object ends, the
section beyond counts as one section thickness outside everywhere, which closes the object in
a rounded cap within that section instead of a flat step. The block path (`vemviz.blockmesh`)
then meshes each object on its own box, read from the store, with the same workers.

Objects are meshed in parallel worker processes (``workers``; forked, so they share the label
volume without copying it), largest bounding box first; the main process writes the files as
results arrive. Closedness, volume and area are computed with numpy; trimesh writes GLB with
vertex normals.

Coordinates: volume (x, y, z) = voxel index * voxel size, converted to ``units``; GLB files use
glTF's +Y up frame, (X, Y, Z) = (x, z, -y). Colours are a stable function of the label id
(golden-ratio hue steps), so the same object has the same colour in every export.
"""

from __future__ import annotations

import colorsys
import math
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fast_simplification
import numpy as np
import pyvista as pv
import trimesh
from scipy import ndimage as ndi
from skimage.measure import marching_cubes

from vemviz import __version__
from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.manifest import SCHEMA_VERSION, write_manifest
from vemviz.progress import track
from vemviz.volume import VoxelSize

NM_PER_UNIT = {"nm": 1.0, "um": 1000.0}
# volume (x, y, z) -> glTF (X, Y, Z) = (x, z, -y): a proper rotation, so winding is kept.
COORDINATE_SYSTEM = "glb: (X, Y, Z) = volume (x, z, -y); bbox values: volume (x, y, z)"
TO_GLTF = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
MIN_DECIMATED_FACES = 64  # smaller surfaces are kept as marching cubes made them
COARSEN_LIMIT = 8  # x max_faces: above it, marching cubes runs on coarser blocks
PARALLEL_MIN_OBJECTS = 8
# Marching cubes level: a hair below 1/2, so that no vertex lands exactly on a sample of a
# block-mean field (4/8 = 0.5), which would give degenerate, non-manifold triangles.
LEVEL = 0.5 - 1e-3  # fewer objects are meshed in this process
MIN_SECTION_RATIO = 2.0  # z / in-plane spacing from which `interpolate_z` resamples along z


@dataclass(frozen=True)
class MeshOptions:
    smooth_iterations: int = 20
    pass_band: float = 0.1
    decimate: float = 0.5  # fraction of faces to remove
    max_faces: int = 20000  # per object, after decimation
    units: str = "um"
    min_voxels: int = 1  # smaller objects are skipped
    workers: int = 0  # processes; 0: one per available CPU core
    interpolate_z: bool = False  # shape-based interpolation between thick sections


def section_steps(spacing: VoxelSize, options: MeshOptions) -> int:
    """Samples per section along z: the z / in-plane spacing ratio, rounded, when thick
    sections are interpolated (`MeshOptions.interpolate_z`), else 1."""
    ratio = spacing[0] / min(spacing[1], spacing[2])
    return max(1, round(ratio)) if options.interpolate_z and ratio >= MIN_SECTION_RATIO else 1


@dataclass
class Surface:
    """A closed triangle surface: vertices (x, y, z) in nm, faces wound outwards."""

    label: int
    points: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (M, 3) int32
    closed: bool


def label_color(label: int) -> str:
    """A stable, distinguishable sRGB hex colour for a label id."""
    hue = (label * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.3 * ((label * 0.381966) % 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.92)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def srgb_to_linear(hex_color: str) -> list[float]:
    values = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    return [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in values]


def is_closed(faces: np.ndarray) -> bool:
    """Whether every directed edge occurs once and its reverse once.

    That is a closed, edge-manifold surface with consistently wound faces (watertight and
    orientable, as trimesh's ``is_watertight`` and ``is_winding_consistent`` together).
    """
    if len(faces) == 0:
        return False
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    n = int(edges.max()) + 1
    forward = np.sort(edges[:, 0] * n + edges[:, 1])
    if np.any(forward[1:] == forward[:-1]):
        return False
    return bool(np.array_equal(forward, np.sort(edges[:, 1] * n + edges[:, 0])))


def clean(points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop faces with a repeated vertex and unused vertices; number vertices by first use."""
    a, b, c = faces.T
    faces = faces[(a != b) & (b != c) & (a != c)]
    used, first, inverse = np.unique(faces.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return points[used[order]], rank[inverse].reshape(faces.shape).astype(np.int32)


def signed_volume(points: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed surface; positive when its faces are wound outwards."""
    a, b, c = (points[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def surface_area(points: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (points[faces[:, i]] for i in range(3))
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2.0)


def smooth(points: np.ndarray, faces: np.ndarray, iterations: int, pass_band: float) -> np.ndarray:
    """Windowed-sinc (Taubin) smoothing of the vertices; the faces are unchanged."""
    cells = np.hstack([np.full((len(faces), 1), 3, dtype=np.int64), faces]).ravel()
    poly = pv.PolyData(points, cells)
    return np.asarray(poly.smooth_taubin(n_iter=iterations, pass_band=pass_band).points)


def decimate_closed(
    points: np.ndarray, faces: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to about ``target`` faces that keeps a closed surface closed.

    When a collapse opens the surface (a thin process pinched to non-manifold edges), the
    budget doubles and decimation starts again from the input; the input itself is the last
    resort.
    """
    budget = target
    while budget < len(faces):
        reduced, triangles = fast_simplification.simplify(points, faces, target_count=budget)
        reduced, triangles = clean(np.asarray(reduced), np.asarray(triangles))
        if is_closed(triangles):
            return reduced, triangles
        budget *= 2
    return points, faces


def exposed_faces(mask: np.ndarray) -> int:
    """Voxel faces between the object and background; marching cubes makes two triangles each."""
    return sum(int(np.count_nonzero(np.diff(mask, axis=axis))) for axis in range(mask.ndim))


def coarsening(faces: int, limit: int) -> int:
    """The smallest block size that brings ``faces`` marching-cubes faces under ``limit``."""
    return max(1, math.ceil(math.sqrt(faces / limit))) if limit > 0 else 1


def block_mean(mask: np.ndarray, factor: int | tuple[int, int, int]) -> np.ndarray:
    """Mean of ``mask`` over blocks of ``factor`` voxels per axis (one number: a cube),
    zero-padded at the far end, as float32."""
    factors = (factor,) * 3 if isinstance(factor, int) else tuple(factor)
    if factors == (1, 1, 1):
        return mask.astype(np.float32)
    shape = [-(-s // f) * f for s, f in zip(mask.shape, factors, strict=True)]
    padded = np.zeros(shape, dtype=np.float32)
    padded[tuple(slice(0, s) for s in mask.shape)] = mask
    split = [n for s, f in zip(shape, factors, strict=True) for n in (s // f, f)]
    return padded.reshape(split).mean(axis=(1, 3, 5))


def interpolate_sections(field: np.ndarray, steps: int, cap: float) -> np.ndarray:
    """Shape-based interpolation of an object ``field`` (z, y, x) to ``steps`` samples per
    section along z, as a field in [0, 1] whose `LEVEL` contour is the interpolated outline.

    A section's signed distance is in in-plane pixels (negative inside, +-1 on the pixels either
    side of the outline; the field needs a background margin in y and x); a section without
    the object is ``cap`` pixels outside everywhere. Output sample ``k`` lies at section
    ``k / steps``.
    """
    inside = field > LEVEL
    distance = np.full(field.shape, np.float32(cap))
    for z in np.flatnonzero(inside.any(axis=(1, 2))):
        distance[z] = ndi.distance_transform_edt(~inside[z]) - ndi.distance_transform_edt(inside[z])
    position = np.arange((field.shape[0] - 1) * steps + 1) / steps
    lower = np.minimum(position.astype(int), field.shape[0] - 2)
    fraction = (position - lower).astype(np.float32)[:, None, None]
    fine = (1 - fraction) * distance[lower] + fraction * distance[lower + 1]
    return np.clip(0.5 - 0.5 * fine, 0.0, 1.0)


def object_surface(
    field: np.ndarray, origin_nm: np.ndarray, spacing: VoxelSize, options: MeshOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Surface at `LEVEL` of a field with a background margin: (x, y, z) nm points, faces."""
    verts, faces, _, _ = marching_cubes(field, level=LEVEL, spacing=spacing)
    points = verts[:, ::-1].astype(np.float64) + origin_nm[::-1]
    return refine(points, faces.astype(np.int32), options)


def refine(
    points: np.ndarray, faces: np.ndarray, options: MeshOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth, decimate (keeping the surface closed) and wind the faces outwards."""
    if options.smooth_iterations > 0:
        points = smooth(points, faces, options.smooth_iterations, options.pass_band)
    target = min(round(len(faces) * (1.0 - options.decimate)), options.max_faces)
    if options.decimate > 0 and len(faces) > MIN_DECIMATED_FACES:
        points, faces = decimate_closed(points, faces, max(target, MIN_DECIMATED_FACES))
    if signed_volume(points, faces) < 0:
        faces = faces[:, ::-1]
    return clean(points, faces)


def label_surface(
    labels: np.ndarray,
    box: tuple[slice, ...],
    label: int,
    spacing: VoxelSize,
    options: MeshOptions,
) -> Surface | None:
    """Mesh one label on its bounding box plus a background margin (None if too small);
    ``labels`` is an array, or anything that returns one for ``labels[box]`` (the block path
    reads each object's box from the store).

    An object whose full-resolution surface would exceed ``COARSEN_LIMIT`` times the face
    budget is meshed on the mean of ``f``^3 voxel blocks instead (its partial-volume fraction,
    still at level 0.5), so decimation never has to remove more than about 7/8 of the faces;
    interpolated thick sections are coarsened in-plane only (``1 x f x f``).
    """
    crop = labels[box] == label
    if np.count_nonzero(crop) < options.min_voxels:
        return None
    steps = section_steps(spacing, options)  # interpolated sections have ~steps x the faces
    factor = coarsening(2 * steps * exposed_faces(np.pad(crop, 1)),
                        COARSEN_LIMIT * options.max_faces)  # fmt: skip
    blocks = np.array((1, factor, factor) if steps > 1 else (factor,) * 3)  # never join sections
    field = np.pad(block_mean(crop, tuple(blocks)), 1)
    start = np.array([s.start for s in box], dtype=np.float64)
    voxel = np.asarray(spacing, dtype=np.float64)
    origin = (start + (blocks - 1) / 2 - blocks) * voxel  # centre of the margin block
    sampling = voxel * blocks
    if steps > 1:
        ratio = sampling[0] / min(sampling[1], sampling[2])  # section thickness in pixels
        steps = max(1, round(ratio))
        field = interpolate_sections(field, steps, cap=ratio)
        sampling[0] /= steps
    points, faces = object_surface(field, origin, tuple(sampling), options)
    return Surface(label, points, faces, is_closed(faces))


_WORKER: dict[str, Any] = {}


def _init_worker(
    labels: np.ndarray,
    boxes: list[tuple[slice, ...] | None],
    spacing: VoxelSize,
    options: MeshOptions,
) -> None:
    # the parent stops the work on Ctrl-C / SIGTERM; workers just finish their object
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER.update(labels=labels, boxes=boxes, spacing=spacing, options=options)


def _worker_surface(label: int) -> Surface | None:
    w = _WORKER
    return label_surface(w["labels"], w["boxes"][label - 1], label, w["spacing"], w["options"])


def worker_count(requested: int, objects: int) -> int:
    """Processes to use: ``requested`` (0 = available CPU cores), at most one per object."""
    if requested <= 0:
        requested = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(requested, objects if objects >= PARALLEL_MIN_OBJECTS else 1))


def by_box_size(ids: list[int], boxes: list[tuple[slice, ...] | None]) -> list[int]:
    """Label ids, largest bounding box first (so the workers finish together)."""
    return sorted(ids, key=lambda i: -math.prod(s.stop - s.start for s in boxes[i - 1]))


@contextmanager
def surface_mapper(
    labels: np.ndarray,
    boxes: list[tuple[slice, ...] | None],
    spacing: VoxelSize,
    options: MeshOptions,
    objects: int,
) -> Iterator[Callable[[list[int]], Iterator[Surface | None]]]:
    """A function from label ids to their surfaces (in order), in worker processes if useful.

    The workers are started here, before a progress display starts its thread, and stopped on
    leaving (also on Ctrl-C: they are terminated, not waited for).
    """
    workers = worker_count(options.workers, objects)
    if workers == 1:
        yield lambda ids: (label_surface(labels, boxes[i - 1], i, spacing, options) for i in ids)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    pool = context.Pool(workers, _init_worker, (labels, boxes, spacing, options))
    try:
        yield lambda ids: pool.imap(_worker_surface, ids)
    finally:
        pool.terminate()
        pool.join()


def _gltf_mesh(surface: Surface, scale: float, color: str, opacity: float) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(
        baseColorFactor=[*srgb_to_linear(color), opacity],
        metallicFactor=0.0,
        roughnessFactor=0.6,
        alphaMode="BLEND" if opacity < 1 else "OPAQUE",
        doubleSided=False,
    )
    vertices = (surface.points / scale) @ TO_GLTF.T
    visual = trimesh.visual.TextureVisuals(material=material)
    return trimesh.Trimesh(vertices, surface.faces, visual=visual, process=False)


def _write_object(
    folder: Path,
    surface: Surface,
    scale: float,
    class_name: str,
    opacity: float,
    write_ply: bool,
) -> tuple[dict[str, Any], trimesh.Trimesh]:
    """Write one object's GLB (and PLY); return its manifest entry and its glTF mesh."""
    label = surface.label
    color = label_color(label)
    name = f"{class_name} {label}"
    gltf = _gltf_mesh(surface, scale, color, opacity)
    file = f"label_{label:05d}.glb"
    gltf.export(folder / file, file_type="glb", include_normals=True)
    points = surface.points / scale
    ply = None
    if write_ply:
        ply = f"label_{label:05d}.ply"
        trimesh.Trimesh(points, surface.faces, process=False).export(folder / ply)
    entry = {
        "label": int(label), "name": name, "class": class_name, "color": color,
        "opacity": opacity, "file": file, "ply": ply,
        "vertices": int(len(points)), "faces": int(len(surface.faces)),
        "volume": abs(signed_volume(points, surface.faces)) if surface.closed else None,
        "surface_area": surface_area(points, surface.faces), "watertight": surface.closed,
        "bbox_min": points.min(axis=0).round(6).tolist(),
        "bbox_max": points.max(axis=0).round(6).tolist(),
    }  # fmt: skip
    return entry, gltf


def mesh_labels(
    labels: np.ndarray,
    voxel_size_nm: VoxelSize,
    out_dir: str | Path,
    *,
    class_name: str = "object",
    opacity: float = 1.0,
    options: MeshOptions | None = None,
    write_ply: bool = False,
    largest: int | None = None,
) -> dict[str, Any]:
    """Mesh every non-zero label of ``labels`` into ``out_dir``; returns the manifest.

    ``largest`` meshes only that many labels, those with the most voxels (for figures).
    """
    options = options or MeshOptions()
    check_options(options)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise VemvizError(f"labels must be an integer volume, got {labels.dtype}")
    if labels.ndim != 3:
        raise VemvizError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    labels = np.ascontiguousarray(labels.view(np.uint8) if labels.dtype == bool else labels)
    boxes = ndi.find_objects(labels)
    ids = [i + 1 for i, box in enumerate(boxes) if box is not None]
    if not ids:
        raise VemvizError("the label volume is empty (no non-zero voxels): nothing to mesh")
    if largest is not None:
        if largest < 1:
            raise VemvizError(f"largest must be at least 1, got {largest}")
        values, counts = np.unique(labels[labels != 0], return_counts=True)
        ids = sorted(int(v) for v in values[np.argsort(-counts, kind="stable")[:largest]])
    spacing = tuple(float(v) for v in voxel_size_nm)
    with surface_mapper(labels, boxes, spacing, options, len(ids)) as surfaces:
        return write_meshes(
            surfaces(by_box_size(ids, boxes)), len(ids), out_dir, labels.shape, spacing,
            class_name=class_name, opacity=opacity, options=options, write_ply=write_ply,
        )  # fmt: skip


def check_options(options: MeshOptions) -> None:
    if options.units not in NM_PER_UNIT:
        raise VemvizError(f"units must be one of {', '.join(NM_PER_UNIT)}, got {options.units!r}")


def write_meshes(
    surfaces: Iterable[Surface | None],
    count: int,
    out_dir: str | Path,
    volume_shape: tuple[int, ...],
    voxel_size_nm: VoxelSize,
    *,
    class_name: str = "object",
    opacity: float = 1.0,
    options: MeshOptions,
    write_ply: bool = False,
) -> dict[str, Any]:
    """Write one GLB (and PLY) per surface as it arrives, the scene and the manifest."""
    scale = NM_PER_UNIT[options.units]
    entries = {}
    meshes = {}
    with atomic_path(out_dir) as temp:
        temp.mkdir()
        for surface in track(surfaces, f"meshing {count} labels", total=count):
            if surface is not None:
                entries[surface.label], meshes[surface.label] = _write_object(
                    temp, surface, scale, class_name, opacity, write_ply
                )
        if not entries:
            raise VemvizError(
                f"every label is smaller than {options.min_voxels} voxels: nothing to mesh"
            )
        scene = trimesh.Scene()
        for label in sorted(meshes):
            name = entries[label]["name"]
            scene.add_geometry(meshes[label], node_name=name, geom_name=name)
        scene.export(temp / "scene.glb", file_type="glb", include_normals=True)
        extent = [
            (s - 1) * v / scale
            for s, v in zip(volume_shape[::-1], voxel_size_nm[::-1], strict=True)
        ]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "generator": f"vemviz {__version__}",
            "units": options.units,
            "voxel_size_nm": [float(v) for v in voxel_size_nm],
            "volume_shape": [int(s) for s in volume_shape],
            "volume_bbox": {"min": [0.0, 0.0, 0.0], "max": [round(e, 6) for e in extent]},
            "coordinate_system": COORDINATE_SYSTEM,
            "scene": "scene.glb",
            "objects": [entries[label] for label in sorted(entries)],
        }
        write_manifest(temp, manifest)
    return manifest
