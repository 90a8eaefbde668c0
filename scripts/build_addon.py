"""Build the Blender add-on zip: ``dist/vemviz_blender-<version>.zip``.

The zip holds the package folder ``vemviz_blender/`` (``__init__.py``, ``blender_manifest.toml``
and the modules), which both Blender 4.2+ (Get Extensions > Install from Disk) and older
Blender (Preferences > Add-ons > Install) accept. The version comes from
``blender_manifest.toml`` and must match ``bl_info["version"]``. Standard library only.

    python scripts/build_addon.py [--out DIST_DIR]
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "blender_addon" / "vemviz_blender"
SKIPPED_PARTS = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def manifest_version(package: Path = PACKAGE) -> str:
    """The extension version, checked against ``bl_info["version"]`` in ``__init__.py``."""
    manifest = tomllib.loads((package / "blender_manifest.toml").read_text(encoding="utf-8"))
    version = str(manifest["version"])
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "bl_info" for t in node.targets
        ):
            bl_version = ".".join(str(v) for v in ast.literal_eval(node.value)["version"])
            if bl_version != version:
                raise SystemExit(
                    f"build_addon: blender_manifest.toml says {version} but bl_info says "
                    f"{bl_version}; make them equal."
                )
            return version
    raise SystemExit(f"build_addon: {package / '__init__.py'} has no bl_info.")


def package_files(package: Path = PACKAGE) -> list[Path]:
    """The files that go into the zip, sorted (no caches or compiled files)."""
    return sorted(
        p
        for p in package.rglob("*")
        if p.is_file()
        and not any(part in SKIPPED_PARTS for part in p.parts)
        and p.suffix not in SKIPPED_SUFFIXES
    )


def build(out_dir: Path = REPO / "dist", package: Path = PACKAGE) -> Path:
    """Write the zip atomically and return its path."""
    version = manifest_version(package)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{package.name}-{version}.zip"
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
    os.close(handle)
    try:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in package_files(package):
                archive.write(path, Path(package.name) / path.relative_to(package))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp made it private; the zip is an ordinary file
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the vemviz Blender add-on zip.")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder")
    args = parser.parse_args(argv)
    target = build(args.out)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
