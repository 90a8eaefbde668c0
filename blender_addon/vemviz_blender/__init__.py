"""vemviz for Blender: import vemviz mesh folders and run the vemviz pipeline from Blender.

Installs as a Blender 4.2+ extension (``blender_manifest.toml``) or as a legacy add-on in
Blender 3.4+ (``bl_info``). It adds File > Import > vemviz Mesh Folder
(``bpy.ops.vemviz.import_meshes``) and the "VEM" sidebar tab of the 3D Viewport with
Reconstruct and Render (``bpy.ops.vemviz.reconstruct_and_render``). Only bpy, the standard
library and numpy are imported; the vemviz core runs as a subprocess in its own environment.
``scripts/render_blender.py`` imports `vemviz_blender.scene` for headless renders.
"""

from __future__ import annotations

import bpy

from . import operators, panel, preferences

bl_info = {
    "name": "vemviz",
    "author": "vemviz developers",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "View3D > Sidebar > VEM; File > Import > vemviz Mesh Folder",
    "description": "Volume electron microscopy to 3D: import and render vemviz mesh folders",
    "category": "Import-Export",
}

CLASSES = (*preferences.CLASSES, *panel.CLASSES, *operators.CLASSES)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.vemviz = bpy.props.PointerProperty(type=panel.VemvizSettings)
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_import)
    del bpy.types.Scene.vemviz
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
