"""Add-on preferences: where the vemviz core (the numpy 2 environment) lives.

Blender's Python cannot import vemviz, so the add-on runs the core as a subprocess. The
preference holds either the Python of the core environment (``.venv/bin/python``; then
``python -m vemviz`` is run) or the ``vemviz`` executable; when empty, ``vemviz`` on PATH is used.
"""

import shutil
from pathlib import Path

import bpy
from bpy.props import StringProperty


class VemvizPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    core: StringProperty(
        name="vemviz core",
        description=(
            "Python of the vemviz environment (e.g. .venv/bin/python) or the vemviz executable; "
            "empty: vemviz on PATH"
        ),
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context: bpy.types.Context) -> None:
        self.layout.prop(self, "core")


def core_prefix(context: bpy.types.Context) -> list[str]:
    """The command that starts the vemviz CLI, e.g. ``[python, "-m", "vemviz"]``."""
    addon = context.preferences.addons.get(__package__)
    configured = bpy.path.abspath(addon.preferences.core) if addon and addon.preferences else ""
    path = configured or shutil.which("vemviz")
    if not path:
        raise RuntimeError(
            "Set the vemviz core (its Python or the vemviz executable) in the add-on preferences."
        )
    if not Path(path).is_file():
        raise RuntimeError(f"The vemviz core {path} does not exist; fix the add-on preferences.")
    if Path(path).name.lower().startswith("python"):
        return [path, "-m", "vemviz"]
    return [path]


CLASSES = (VemvizPreferences,)
