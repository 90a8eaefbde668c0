"""The mesh folder's ``manifest.json`` (schema in docs/manifest.md).

One place defines the schema version and checks a manifest, so the CLI, the render wrapper and
the Unity bridge reject the same bad folders with the same messages. (The Blender add-on cannot
import the core and keeps its own small reader of the same schema.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vemviz.errors import VemvizError
from vemviz.io.atomic import write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    return write_json(Path(folder) / MANIFEST, manifest)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Load and check a mesh folder's manifest: known schema, objects listed, files present."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise VemvizError(f"{folder} is not a vemviz mesh folder: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VemvizError(f"{path} is not valid JSON: {exc}") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise VemvizError(
            f"{path} has schema_version {version!r}; this vemviz reads version {SCHEMA_VERSION}"
        )
    objects = manifest.get("objects")
    if not objects:
        raise VemvizError(f"{path} lists no objects")
    for obj in objects:
        if not (folder / obj["file"]).exists():
            raise VemvizError(f"{path} names {obj['file']}, which is missing from {folder}")
    return manifest
