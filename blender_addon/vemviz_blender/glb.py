"""A small reader for the binary glTF (GLB) files that vemviz writes.

Blender's bundled glTF importer differs between versions (3.4 to 5.0) and can be disabled, so
the add-on reads the few things a vemviz mesh folder needs itself: the 12-byte header, the JSON
and BIN chunks, and for every node with a mesh its triangle primitives (mode 4) with POSITION,
optional NORMAL and optional indices (uint8/uint16/uint32). Node transforms (matrix or
translation/rotation/scale) are applied down the node hierarchy. Only numpy and the standard
library are used, so this module also works outside Blender.

Coordinates are returned as stored in the file (glTF: +Y up). `gltf_to_blender` converts them
to Blender's +Z up convention, ``(X_b, Y_b, Z_b) = (X, -Z, Y)``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GLB_MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
MODE_TRIANGLES = 4

_COMPONENT_DTYPES = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


class GlbError(ValueError):
    """A GLB file that is malformed or uses a feature this reader does not support."""


@dataclass
class GlbMesh:
    """One mesh node: triangles in the file's (glTF) coordinates, node transforms applied."""

    name: str
    positions: np.ndarray  # (N, 3) float32
    normals: np.ndarray | None  # (N, 3) float32 or None
    triangles: np.ndarray  # (M, 3) uint32


def _split_chunks(data: bytes, path: Path) -> tuple[dict, bytes]:
    if len(data) < 20 or data[:4] != GLB_MAGIC:
        raise GlbError(f"{path} is not a binary glTF (GLB) file.")
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise GlbError(f"{path} is glTF version {version}; only version 2 is supported.")
    if length > len(data):
        raise GlbError(f"{path} is truncated ({len(data)} of {length} bytes).")
    gltf: dict | None = None
    binary = b""
    offset = 12
    while offset + 8 <= length:
        chunk_length, chunk_type = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8 : offset + 8 + chunk_length]
        if chunk_type == CHUNK_JSON:
            gltf = json.loads(chunk.decode("utf-8"))
        elif chunk_type == CHUNK_BIN and not binary:
            binary = chunk
        offset += 8 + chunk_length
    if gltf is None:
        raise GlbError(f"{path} has no JSON chunk.")
    return gltf, binary


def _read_accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = gltf["accessors"][index]
    if "sparse" in accessor or "bufferView" not in accessor:
        raise GlbError("sparse or buffer-less accessors are not supported.")
    view = gltf["bufferViews"][accessor["bufferView"]]
    if view.get("buffer", 0) != 0:
        raise GlbError("only the GLB's own binary buffer is supported.")
    dtype = np.dtype(_COMPONENT_DTYPES[accessor["componentType"]]).newbyteorder("<")
    width = _TYPE_SIZES[accessor["type"]]
    count = accessor["count"]
    if count == 0:
        return np.zeros((0, width), dtype=dtype.newbyteorder("="))
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    element = dtype.itemsize * width
    stride = view.get("byteStride", element)
    if start + stride * (count - 1) + element > len(binary):
        raise GlbError("an accessor reaches past the end of the binary chunk.")
    raw = np.frombuffer(binary, dtype=np.uint8, count=stride * (count - 1) + element, offset=start)
    if stride != element:
        rows = np.lib.stride_tricks.as_strided(raw, shape=(count, element), strides=(stride, 1))
        raw = np.ascontiguousarray(rows).ravel()
    return raw.view(dtype).reshape(count, width).astype(dtype.newbyteorder("="))


def _quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def node_matrix(node: dict) -> np.ndarray:
    """The 4x4 local transform of a glTF node (``matrix`` or translation/rotation/scale)."""
    if "matrix" in node:
        return np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T  # column-major
    matrix = np.eye(4)
    rotation = _quaternion_matrix(*node.get("rotation", (0.0, 0.0, 0.0, 1.0)))
    matrix[:3, :3] = rotation * np.asarray(node.get("scale", (1.0, 1.0, 1.0)))[None, :]
    matrix[:3, 3] = node.get("translation", (0.0, 0.0, 0.0))
    return matrix


def _primitive_arrays(
    gltf: dict, binary: bytes, primitive: dict
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    if primitive.get("mode", MODE_TRIANGLES) != MODE_TRIANGLES:
        raise GlbError("only triangle primitives (mode 4) are supported.")
    attributes = primitive["attributes"]
    positions = _read_accessor(gltf, binary, attributes["POSITION"]).astype(np.float32)
    normals = None
    if "NORMAL" in attributes:
        normals = _read_accessor(gltf, binary, attributes["NORMAL"]).astype(np.float32)
    if "indices" in primitive:
        indices = _read_accessor(gltf, binary, primitive["indices"]).astype(np.uint32).ravel()
    else:
        indices = np.arange(len(positions), dtype=np.uint32)
    if len(indices) % 3:
        raise GlbError("a triangle primitive has an index count that is not a multiple of 3.")
    if len(indices) and int(indices.max()) >= len(positions):
        raise GlbError("a triangle index points past the last vertex.")
    return positions, normals, indices.reshape(-1, 3)


def _transform(
    matrix: np.ndarray, positions: np.ndarray, normals: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    if np.allclose(matrix, np.eye(4)):
        return positions, normals
    moved = (positions @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)
    if normals is None:
        return moved, None
    turned = normals @ np.linalg.inv(matrix[:3, :3])  # inverse transpose, applied to rows
    lengths = np.linalg.norm(turned, axis=1, keepdims=True)
    return moved, (turned / np.maximum(lengths, 1e-12)).astype(np.float32)


def _mesh_from_node(gltf: dict, binary: bytes, node: dict, matrix: np.ndarray) -> GlbMesh:
    mesh = gltf["meshes"][node["mesh"]]
    parts = [_primitive_arrays(gltf, binary, p) for p in mesh["primitives"]]
    offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    positions = np.concatenate([p[0] for p in parts])
    normals = None
    if all(p[1] is not None for p in parts):
        normals = np.concatenate([p[1] for p in parts])
    triangles = np.concatenate([p[2] + np.uint32(o) for p, o in zip(parts, offsets, strict=True)])
    positions, normals = _transform(matrix, positions, normals)
    name = node.get("name") or mesh.get("name") or f"mesh {node['mesh']}"
    return GlbMesh(name, positions, normals, triangles)


def read_glb(path: str | Path) -> list[GlbMesh]:
    """Read every mesh node of the default scene of a GLB file (all nodes if it has none)."""
    path = Path(path)
    gltf, binary = _split_chunks(path.read_bytes(), path)
    nodes = gltf.get("nodes", [])
    scenes = gltf.get("scenes", [])
    if scenes:
        roots = scenes[gltf.get("scene", 0)].get("nodes", [])
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    meshes: list[GlbMesh] = []
    stack = [(i, np.eye(4)) for i in reversed(roots)]
    try:
        while stack:
            index, parent = stack.pop()
            node = nodes[index]
            matrix = parent @ node_matrix(node)
            if "mesh" in node:
                meshes.append(_mesh_from_node(gltf, binary, node, matrix))
            stack.extend((c, matrix) for c in reversed(node.get("children", [])))
    except (KeyError, IndexError) as exc:
        raise GlbError(f"{path} has a broken reference ({exc!r}).") from exc
    except GlbError as exc:
        raise GlbError(f"{path}: {exc}") from exc
    return meshes


def gltf_to_blender(vectors: np.ndarray) -> np.ndarray:
    """Convert (N, 3) glTF vectors (+Y up) to Blender's +Z up: (X, Y, Z) -> (X, -Z, Y)."""
    return np.stack([vectors[:, 0], -vectors[:, 2], vectors[:, 1]], axis=1)
