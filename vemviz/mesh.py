"""Surface meshes of labelled objects, in physical units.

For each label id the object's bounding box (``scipy.ndimage.find_objects``) is cut out with a
one-voxel margin of background, so every object that does not leave the volume yields a closed
surface. Marching cubes (scikit-image) runs on that small binary crop with the anisotropic voxel
size as spacing, so vertices land in nanometres directly. The staircase surface is then relaxed
with VTK's windowed-sinc filter (``smooth_taubin``: a Taubin-style band-pass that does not
shrink the object), decimated with quadric error metrics to a face budget, and given consistent
outward normals. trimesh measures volume, area and watertightness and writes GLB.

Coordinates: volume (x, y, z) = voxel index * voxel size, converted to ``units``; GLB files use
glTF's +Y up frame, (X, Y, Z) = (x, z, -y). Colours are a stable function of the label id
(golden-ratio hue steps), so the same object has the same colour in every export.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class MeshOptions:
    smooth_iterations: int = 20
    pass_band: float = 0.1
    decimate: float = 0.5  # fraction of faces to remove
    max_faces: int = 20000  # per object, after decimation
    units: str = "um"
    min_voxels: int = 8


def label_color(label: int) -> str:
    """A stable, distinguishable sRGB hex colour for a label id."""
    hue = (label * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.3 * ((label * 0.381966) % 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.92)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def srgb_to_linear(hex_color: str) -> list[float]:
    values = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    return [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in values]


def marching_surface(mask: np.ndarray, spacing: VoxelSize) -> pv.PolyData:
    """Marching-cubes surface of a padded binary mask, vertices (x, y, z) in nm."""
    verts, faces, _, _ = marching_cubes(mask.astype(np.float32), level=0.5, spacing=spacing)
    return triangles(verts[:, ::-1], faces)


def triangles(points_xyz: np.ndarray, faces: np.ndarray) -> pv.PolyData:
    """A triangle mesh from (n, 3) points and (m, 3) vertex indices."""
    cells = np.hstack([np.full((len(faces), 1), 3), faces]).ravel()
    return pv.PolyData(np.ascontiguousarray(points_xyz, dtype=np.float32), cells)


def refine_surface(poly: pv.PolyData, options: MeshOptions) -> pv.PolyData:
    """Smoothed, decimated surface with consistent outward normals."""
    if options.smooth_iterations > 0:
        poly = poly.smooth_taubin(n_iter=options.smooth_iterations, pass_band=options.pass_band)
    reduction = options.decimate
    if poly.n_cells * (1 - reduction) > options.max_faces:
        reduction = 1 - options.max_faces / poly.n_cells
    if reduction > 0 and poly.n_cells > 64:
        poly = poly.decimate(reduction, volume_preservation=True)
    return poly.compute_normals(
        auto_orient_normals=True, consistent_normals=True, split_vertices=False
    )


def surface(mask: np.ndarray, spacing: VoxelSize, options: MeshOptions) -> pv.PolyData:
    """Smoothed, decimated surface of a padded binary mask, vertices (x, y, z) in nm."""
    return refine_surface(marching_surface(mask, spacing), options)


def to_trimesh(poly: pv.PolyData, scale: float) -> trimesh.Trimesh:
    faces = poly.faces.reshape(-1, 4)[:, 1:]
    mesh = trimesh.Trimesh(poly.points / scale, faces, process=True)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    return mesh


def _gltf_mesh(mesh: trimesh.Trimesh, color: str, opacity: float) -> trimesh.Trimesh:
    out = mesh.copy()
    out.apply_transform(
        np.block([[TO_GLTF, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])
    )
    material = trimesh.visual.material.PBRMaterial(
        baseColorFactor=[*srgb_to_linear(color), opacity],
        metallicFactor=0.0,
        roughnessFactor=0.6,
        alphaMode="BLEND" if opacity < 1 else "OPAQUE",
        doubleSided=False,
    )
    out.visual = trimesh.visual.TextureVisuals(material=material)
    return out


def label_surfaces(
    labels: np.ndarray, voxel_size_nm: VoxelSize, options: MeshOptions
) -> Iterator[tuple[int, pv.PolyData | None]]:
    """(label, surface in nm) for every label; None for labels below ``options.min_voxels``."""
    boxes = ndi.find_objects(labels)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        crop = labels[box] == i + 1
        if np.count_nonzero(crop) < options.min_voxels:
            yield i + 1, None
            continue
        origin = np.array([(s.start - 1) * v for s, v in zip(box, voxel_size_nm, strict=True)])
        poly = surface(np.pad(crop, 1), voxel_size_nm, options)
        poly.points += origin[::-1]
        yield i + 1, poly


def mesh_labels(
    labels: np.ndarray,
    voxel_size_nm: VoxelSize,
    out_dir: str | Path,
    *,
    class_name: str = "object",
    opacity: float = 1.0,
    options: MeshOptions | None = None,
    write_ply: bool = False,
) -> dict[str, Any]:
    """Mesh every non-zero label of ``labels`` into ``out_dir``; returns the manifest."""
    options = options or MeshOptions()
    check_options(options)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise VemvizError(f"labels must be an integer volume, got {labels.dtype}")
    if labels.ndim != 3:
        raise VemvizError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    count = sum(box is not None for box in ndi.find_objects(labels))
    if not count:
        raise VemvizError("the label volume is empty (no non-zero voxels): nothing to mesh")
    return write_meshes(
        label_surfaces(labels, voxel_size_nm, options), count, out_dir, labels.shape,
        voxel_size_nm, class_name=class_name, opacity=opacity, options=options,
        write_ply=write_ply,
    )  # fmt: skip


def check_options(options: MeshOptions) -> None:
    if options.units not in NM_PER_UNIT:
        raise VemvizError(f"units must be one of {', '.join(NM_PER_UNIT)}, got {options.units!r}")


def write_meshes(
    surfaces: Iterable[tuple[int, pv.PolyData | None]],
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
    """Write one GLB (and PLY) per (label, surface in nm), the scene and the manifest."""
    scale = NM_PER_UNIT[options.units]
    objects = []
    scene = trimesh.Scene()
    with atomic_path(out_dir) as temp:
        temp.mkdir()
        for label, poly in track(surfaces, f"meshing {count} labels", total=count):
            if poly is None:
                continue
            mesh = to_trimesh(poly, scale)
            color = label_color(label)
            name = f"{class_name} {label}"
            gltf = _gltf_mesh(mesh, color, opacity)
            file = f"label_{label:05d}.glb"
            gltf.export(temp / file, file_type="glb", include_normals=True)
            ply = None
            if write_ply:
                ply = f"label_{label:05d}.ply"
                mesh.export(temp / ply, file_type="ply")
            scene.add_geometry(gltf, node_name=name, geom_name=name)
            objects.append({
                "label": int(label), "name": name, "class": class_name, "color": color,
                "opacity": opacity, "file": file, "ply": ply,
                "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                "volume": float(abs(mesh.volume)) if mesh.is_watertight else None,
                "surface_area": float(mesh.area), "watertight": bool(mesh.is_watertight),
                "bbox_min": mesh.bounds[0].round(6).tolist(),
                "bbox_max": mesh.bounds[1].round(6).tolist(),
            })  # fmt: skip
        if not objects:
            raise VemvizError(
                f"every label is smaller than {options.min_voxels} voxels: nothing to mesh"
            )
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
            "objects": objects,
        }
        write_manifest(temp, manifest)
    return manifest
