"""Export a mesh folder into a Unity project: ``vemviz export-unity MESH_DIR --project DIR``.

Method:
1. Read and check the mesh folder's manifest (`vemviz.manifest.read_manifest`, plus the
   units and the scene file this exporter relies on).
2. If ``DIR`` is not a Unity project yet (no ``ProjectSettings/``) and is missing or empty,
   copy the template project ``UnityProject/`` there, atomically.
3. Build the dataset under a hidden temporary name in ``Assets/VemViz/Datasets/`` (Unity
   ignores names starting with a dot): per label an OBJ + MTL (`unity_bridge.obj`) and the
   GLB copied beside them, ``scene.glb``, ``manifest.json``, ``dataset.json`` (what the C#
   loaders read, see below) and, with a volume, ``volume.bytes`` + ``volume.json``
   (`unity_bridge.intensity`). Every file gets a `.meta` with a GUID derived from the
   dataset name and the file's path (`unity_bridge.meta`), so re-exports keep the GUIDs that
   scenes and prefabs refer to.
4. Swap it in with `vemviz.io.atomic.atomic_path` (two renames): a failure before the swap
   leaves the old dataset untouched, and the dataset folder is never half-written.

``dataset.json`` (keys in camelCase for Unity's JsonUtility): ``name``, ``units``,
``boundsCenter``/``boundsSize`` of the volume in Unity-local axes, ``volume`` (``volume.json``
or ``""``) and ``objects`` (label, name, className, color, opacity, obj, glb, vertices, faces).
Unity-local axes: (X, Y, Z) = volume (-x, z, -y), which is what Unity's OBJ importer makes of
the OBJ files (see `unity_bridge.obj`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from unity_bridge.intensity import UNIT_PER_NM, write_intensity_volume
from unity_bridge.meta import meta_path, meta_text, stable_guid, write_metas
from unity_bridge.obj import write_obj_and_mtl
from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.manifest import read_manifest
from vemviz.volume import Volume

DATASETS = ("Assets", "VemViz", "Datasets")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Unity's own folders, and what using the template in place creates (see UnityProject/.gitignore).
TEMPLATE_IGNORE = (
    "Library", "Temp", "Logs", "obj", "UserSettings", "Screenshots", ".vs", "*.csproj", "*.sln",
    "Datasets", "Datasets.meta", "Generated", "Generated.meta", "StreamingAssets",
    "StreamingAssets.meta",
)  # fmt: skip


def template_dir() -> Path:
    """The template Unity project shipped with vemviz (``UnityProject/``)."""
    import unity_bridge

    return Path(unity_bridge.__file__).resolve().parents[1] / "UnityProject"


def dataset_name(name: str | None, mesh_dir: Path) -> str:
    """``name``, or one made from the mesh folder's name; checked to be a safe folder name."""
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", mesh_dir.resolve().name).strip("._-") or "dataset"
    if not NAME_PATTERN.fullmatch(name):
        raise VemvizError(
            f"dataset name {name!r} must start with a letter or digit and use only letters, "
            "digits, '_', '-' and '.'"
        )
    return name


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def check_for_unity(mesh_dir: Path, manifest: dict[str, Any]) -> None:
    """What this exporter needs beyond `read_manifest`'s checks: known units, the scene file."""
    if manifest.get("units") not in UNIT_PER_NM:
        raise VemvizError(
            f"{mesh_dir}/manifest.json has units {manifest.get('units')!r}; expected one of "
            f"{', '.join(UNIT_PER_NM)}"
        )
    scene = manifest.get("scene")
    if not scene or not (mesh_dir / scene).is_file():
        raise VemvizError(f"{mesh_dir}/manifest.json names scene {scene!r}, which is missing")


def ensure_project(project_dir: Path) -> None:
    """Copy the template project to ``project_dir`` unless it already is a Unity project."""
    if (project_dir / "ProjectSettings").is_dir():
        return
    if project_dir.exists() and any(project_dir.iterdir()):
        raise VemvizError(
            f"{project_dir} is not a Unity project (no ProjectSettings/) and not empty: pass a "
            "Unity project folder, or a new or empty folder to create one"
        )
    template = template_dir()
    if not (template / "ProjectSettings").is_dir():
        raise VemvizError(f"the Unity project template is missing at {template}")
    with atomic_path(project_dir) as temp:
        shutil.copytree(template, temp, ignore=shutil.ignore_patterns(*TEMPLATE_IGNORE))


def ensure_asset_folder(project_dir: Path, parts: tuple[str, ...]) -> Path:
    """Create ``project_dir/parts...`` with a `.meta` for each new folder below Assets."""
    folder = project_dir
    for depth, part in enumerate(parts):
        folder = folder / part
        folder.mkdir(exist_ok=True)
        if depth > 0 and not meta_path(folder).exists():
            key = "project/" + "/".join(parts[: depth + 1])
            _write_text_atomic(meta_path(folder), meta_text(stable_guid(key), folder=True))
    return folder


def _unity_bounds(manifest: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Centre and size of the volume bbox in Unity-local axes (X, Y, Z) = (-x, z, -y)."""
    low, high = manifest["volume_bbox"]["min"], manifest["volume_bbox"]["max"]
    cx, cy, cz = ((a + b) / 2 for a, b in zip(low, high, strict=True))
    sx, sy, sz = (b - a for a, b in zip(low, high, strict=True))
    return [-cx, cz, -cy], [sx, sz, sy]


def _export_object(entry: dict[str, Any], mesh_dir: Path, out: Path) -> dict[str, Any]:
    """Copy one label's GLB, write its OBJ + MTL, and describe it for dataset.json."""
    glb = mesh_dir / entry["file"]
    shutil.copyfile(glb, out / glb.name)
    vertices, faces = write_obj_and_mtl(glb, out, entry["color"], float(entry["opacity"]))
    if (vertices, faces) != (entry["vertices"], entry["faces"]):
        raise VemvizError(
            f"{glb} has {vertices} vertices and {faces} faces but manifest.json says "
            f"{entry['vertices']} and {entry['faces']}: re-run `vemviz mesh`"
        )
    return {
        "label": int(entry["label"]),
        "name": str(entry["name"]),
        "className": str(entry.get("class", "")),
        "color": str(entry["color"]),
        "opacity": float(entry["opacity"]),
        "obj": f"{glb.stem}.obj",
        "glb": glb.name,
        "vertices": vertices,
        "faces": faces,
    }


def _build_dataset(
    out: Path,
    mesh_dir: Path,
    manifest: dict[str, Any],
    name: str,
    volume: Volume | None,
    max_volume_voxels: int,
) -> None:
    shutil.copyfile(mesh_dir / "manifest.json", out / "manifest.json")
    shutil.copyfile(mesh_dir / manifest["scene"], out / Path(manifest["scene"]).name)
    objects = [_export_object(entry, mesh_dir, out) for entry in manifest["objects"]]
    if volume is not None:
        write_intensity_volume(volume, manifest, out, max_volume_voxels)
    center, size = _unity_bounds(manifest)
    dataset = {
        "format": "vemviz-unity-dataset",
        "formatVersion": 1,
        "name": name,
        "units": manifest["units"],
        "coordinateSystem": "Unity-local (X, Y, Z) = volume (-x, z, -y)",
        "boundsCenter": center,
        "boundsSize": size,
        "volume": "volume.json" if volume is not None else "",
        "objects": objects,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    write_metas(out, f"dataset/{name}")


def export_unity(
    mesh_dir: Path,
    project_dir: Path,
    name: str | None = None,
    volume: Volume | None = None,
    max_volume_voxels: int = 256**3,
) -> Path:
    """Export the mesh folder ``mesh_dir`` as dataset ``name`` into Unity project ``project_dir``.

    Returns ``project_dir/Assets/VemViz/Datasets/NAME``. ``volume`` (the image volume the
    labels came from) adds a uint8 copy of at most ``max_volume_voxels`` voxels for textured
    cut faces. Raises `VemvizError` for bad input; see the module docstring for the layout.
    """
    mesh_dir, project_dir = Path(mesh_dir), Path(project_dir)
    manifest = read_manifest(mesh_dir)
    check_for_unity(mesh_dir, manifest)
    name = dataset_name(name, mesh_dir)
    ensure_project(project_dir)
    target = ensure_asset_folder(project_dir, DATASETS) / name
    with atomic_path(target) as temp:
        temp.mkdir()
        _build_dataset(temp, mesh_dir, manifest, name, volume, max_volume_voxels)
    _write_text_atomic(meta_path(target), meta_text(stable_guid(f"dataset/{name}"), folder=True))
    return target
