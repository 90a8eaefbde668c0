"""GLB -> Wavefront OBJ + MTL, the mesh format Unity imports without extra packages.

Method: every mesh node of a label's GLB is read with trimesh (``process=False``, so vertex
and face counts stay exactly those of the manifest), its node transform is applied, and the
nodes are concatenated. The vertices are written *unchanged*, in the glTF axes of the GLB:
OBJ, like glTF, is right-handed with counter-clockwise (outward) front faces, so the file is
the same model as the GLB for any OBJ reader.

Unity convention (documented in UnityProject/README.md and relied upon by the C# loaders):
Unity's OBJ importer converts right-handed files to its left-handed space by negating X and
reversing the triangle winding. A vertex at volume position (x, y, z) (glTF (x, z, -y))
therefore lands at Unity (X, Y, Z) = (-x, z, -y). That map has determinant -1 between a
right-handed and a left-handed frame, i.e. it is a rotation, not a mirror image; the
reversed winding keeps the faces pointing outwards. The runtime OBJ parser in
``Assets/VemViz/Scripts/ObjParser.cs`` does the same, so editor and runtime loads agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

_CHUNK_ROWS = 65536


def load_glb(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, vertex normals, triangles) of every mesh node in a GLB, in glTF axes."""
    scene = trimesh.load_scene(str(path), process=False)
    vertices, normals, faces = [], [], []
    offset = 0
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        mesh = scene.geometry[geometry_name]
        rotation = np.linalg.inv(transform[:3, :3]).T
        node_normals = np.asarray(mesh.vertex_normals, dtype=np.float64) @ rotation.T
        node_normals /= np.maximum(np.linalg.norm(node_normals, axis=1, keepdims=True), 1e-12)
        vertices.append(trimesh.transform_points(np.asarray(mesh.vertices), transform))
        normals.append(node_normals)
        faces.append(np.asarray(mesh.faces, dtype=np.int64) + offset)
        offset += len(mesh.vertices)
    if not vertices:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(vertices), np.concatenate(normals), np.concatenate(faces)


def _rows(row_format: str, array: np.ndarray) -> str:
    """``array`` formatted one row per line with ``row_format`` (fast, chunked)."""
    parts = []
    for start in range(0, len(array), _CHUNK_ROWS):
        chunk = array[start : start + _CHUNK_ROWS]
        parts.append((row_format * len(chunk)) % tuple(chunk.ravel().tolist()))
    return "".join(parts)


def hex_to_rgb(color: str) -> tuple[float, float, float]:
    """``"#3cb44b"`` -> sRGB floats in [0, 1]."""
    value = color.lstrip("#")
    return tuple(int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def obj_text(
    name: str, mtl_file: str, vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray
) -> str:
    """OBJ text: one object ``name`` using material ``name`` from ``mtl_file``."""
    header = (
        "# vemviz OBJ: right-handed glTF axes (X, Y, Z) = volume (x, z, -y), faces CCW outward.\n"
        "# Unity's OBJ importer negates X: Unity (X, Y, Z) = volume (-x, z, -y).\n"
        f"mtllib {mtl_file}\no {name}\nusemtl {name}\n"
    )
    corners = np.repeat(np.asarray(faces, dtype=np.int64) + 1, 2, axis=1)
    return (
        header
        + _rows("v %.8g %.8g %.8g\n", np.asarray(vertices, dtype=np.float64))
        + _rows("vn %.6g %.6g %.6g\n", np.asarray(normals, dtype=np.float64))
        + _rows("f %d//%d %d//%d %d//%d\n", corners)
    )


def mtl_text(name: str, color: str, opacity: float) -> str:
    """MTL text with one material ``name``: diffuse ``color`` (sRGB hex) and ``opacity``."""
    r, g, b = hex_to_rgb(color)
    return (
        f"newmtl {name}\nKa 0 0 0\nKd {r:.6f} {g:.6f} {b:.6f}\nKs 0 0 0\nd {opacity:.6g}\nillum 1\n"
    )


def write_obj_and_mtl(glb: Path, out_dir: Path, color: str, opacity: float) -> tuple[int, int]:
    """Write ``<glb stem>.obj`` and ``.mtl`` into ``out_dir``; returns (vertices, faces)."""
    vertices, normals, faces = load_glb(glb)
    name = glb.stem
    (out_dir / f"{name}.mtl").write_text(mtl_text(name, color, opacity), encoding="utf-8")
    (out_dir / f"{name}.obj").write_text(
        obj_text(name, f"{name}.mtl", vertices, normals, faces), encoding="utf-8"
    )
    return len(vertices), len(faces)
