"""The "VEM" tab of the 3D Viewport's sidebar and the settings it edits (``scene.vemviz``)."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatVectorProperty, StringProperty


class VemvizSettings(bpy.types.PropertyGroup):
    input_path: StringProperty(
        name="Input",
        description="Volume file, folder of slices or OME-Zarr; empty runs the built-in phantom",
        subtype="FILE_PATH",
    )
    voxel_size: FloatVectorProperty(
        name="Voxel size (z, y, x nm)",
        description="Voxel size in nm; 0 takes it from the file's metadata",
        size=3,
        min=0.0,
        default=(0.0, 0.0, 0.0),
    )
    preset: EnumProperty(
        name="Preset",
        items=(
            ("FAST", "Fast", "Quick preview render (960x720, 16 samples)"),
            ("QUALITY", "Quality", "Figure render (1920x1440, 128 samples)"),
        ),
        default="FAST",
    )
    restore: BoolProperty(
        name="Restore", description="Detect and restore damaged slices", default=True
    )
    iso: BoolProperty(name="Iso", description="Isotropic reconstruction along z", default=True)
    segment: BoolProperty(
        name="Segment",
        description="Segment mitochondria (the meshes are made from its labels)",
        default=True,
    )
    transparent_enclosing: BoolProperty(
        name="Transparent cells",
        description="Make objects that contain other objects semi-transparent",
        default=False,
    )
    output_dir: StringProperty(
        name="Output", description="Folder for the pipeline's results", subtype="DIR_PATH"
    )


class VEMVIZ_PT_panel(bpy.types.Panel):
    bl_label = "vemviz"
    bl_idname = "VEMVIZ_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "VEM"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.vemviz
        layout = self.layout
        layout.prop(settings, "input_path")
        layout.prop(settings, "voxel_size")
        row = layout.row(align=True)
        row.enabled = bool(settings.input_path)  # the phantom always runs every stage
        for name in ("restore", "iso", "segment"):
            row.prop(settings, name, toggle=True)
        layout.prop(settings, "preset", expand=True)
        layout.prop(settings, "transparent_enclosing")
        layout.prop(settings, "output_dir")
        layout.operator("vemviz.reconstruct_and_render", icon="RENDER_STILL")
        layout.separator()
        layout.operator("vemviz.import_meshes", icon="IMPORT")


CLASSES = (VemvizSettings, VEMVIZ_PT_panel)
