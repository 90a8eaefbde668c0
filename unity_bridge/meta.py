"""Unity `.meta` files with stable GUIDs.

Unity identifies every asset by the GUID in the `.meta` file beside it; scenes and prefabs
refer to meshes, textures and scripts by that GUID. A GUID that changed on every export would
break those references, so the GUID of an exported file is derived from what it *is*, not from
chance: the first 32 hex digits of md5("vemviz:<dataset name>/<path inside the dataset>"). The
same dataset name and path therefore always get the same GUID, and different paths get
different ones.

The `.meta` files written here are minimal: `fileFormatVersion`, `guid`, and for folders
`folderAsset: yes`. Unity fills in the importer settings (OBJ model importer, text asset, ...)
on first import and keeps the GUID.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_FILE_META = "fileFormatVersion: 2\nguid: {guid}\n"
_FOLDER_META = (
    "fileFormatVersion: 2\n"
    "guid: {guid}\n"
    "folderAsset: yes\n"
    "DefaultImporter:\n"
    "  externalObjects: {{}}\n"
    "  userData: \n"
    "  assetBundleName: \n"
    "  assetBundleVariant: \n"
)


def stable_guid(key: str) -> str:
    """32 lowercase hex digits derived from ``key`` (md5), the same on every run."""
    return hashlib.md5(f"vemviz:{key}".encode()).hexdigest()


def meta_text(guid: str, folder: bool) -> str:
    """The content of a minimal `.meta` file for a file or a folder."""
    return (_FOLDER_META if folder else _FILE_META).format(guid=guid)


def meta_path(asset: Path) -> Path:
    """Where Unity expects the `.meta` file of ``asset`` (``name.ext`` -> ``name.ext.meta``)."""
    return asset.with_name(asset.name + ".meta")


def write_metas(root: Path, key_prefix: str) -> None:
    """Give every file and folder below ``root`` a `.meta` keyed by its path below ``root``.

    ``root`` itself gets none (its meta sits beside it, in the parent folder, and is written
    by the caller). Keys are ``key_prefix/relative/posix/path``.
    """
    assets = sorted(p for p in root.rglob("*") if not p.name.endswith(".meta"))
    for asset in assets:
        key = f"{key_prefix}/{asset.relative_to(root).as_posix()}"
        meta_path(asset).write_text(meta_text(stable_guid(key), asset.is_dir()), encoding="utf-8")
