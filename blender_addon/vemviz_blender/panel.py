"""The "VEM" tab of the 3D Viewport's sidebar and the settings it edits (``scene.vemviz``)."""

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    StringProperty,
)

from . import scene as vscene


class VemvizSettings(bpy.types.PropertyGroup):
    input_kind: EnumProperty(
        name="Input kind",
        items=(
            ("FILE", "File", "A volume file: TIFF, OME-TIFF, MRC, NumPy"),
            ("FOLDER", "Folder / Zarr", "A folder of TIFF/PNG slices, or an (OME-)Zarr store"),
        ),
        default="FILE",
    )
    input_path: StringProperty(
        name="Input",
        description="Volume file; empty runs the built-in phantom",
        subtype="FILE_PATH",
    )
    input_folder: StringProperty(
        name="Input",
        description="Folder of slices or (OME-)Zarr store; empty runs the built-in phantom",
        subtype="DIR_PATH",
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
    engine: EnumProperty(
        name="Engine",
        items=(
            ("CYCLES", "Cycles", "Path tracing (CPU or GPU)"),
            ("EEVEE", "EEVEE", "Real-time engine (needs a display or EGL)"),
            ("WORKBENCH", "Workbench", "Solid shading preview"),
        ),
        default=vscene.DEFAULT_ENGINE,
    )
    device: EnumProperty(
        name="Device",
        items=(("CPU", "CPU", "Render on the CPU"), ("GPU", "GPU", "First GPU found, else CPU")),
        default="CPU",
    )
    cut_axis: EnumProperty(
        name="Cut",
        description="Cut the model with a plane across this volume axis to show the inside",
        items=(("NONE", "None", "No cut"), ("X", "x", ""), ("Y", "y", ""), ("Z", "z", "")),
        default="NONE",
    )
    cut_position: FloatProperty(
        name="Position", description="Plane position along the axis (0..1)", min=0.0, max=1.0,
        default=0.5,
    )  # fmt: skip
    turntable: BoolProperty(name="Turntable", description="Animate an orbit", default=False)
    turntable_frames: IntProperty(name="Frames", min=2, max=10000, default=120)

    def input_value(self) -> str:
        """The chosen input path (file, or folder / Zarr), absolute; empty for the phantom."""
        value = self.input_path if self.input_kind == "FILE" else self.input_folder
        return bpy.path.abspath(value) if value else ""

    def scene_options(self) -> dict:
        """Keyword arguments of `scene.stage_scene` for the render settings chosen here."""
        cut = None
        if self.cut_axis != "NONE":
            cut = ("XYZ".index(self.cut_axis), float(self.cut_position))
        return {
            "engine": self.engine,
            "device": self.device,
            "cut": cut,
            "turntable": self.turntable_frames if self.turntable else None,
        }


class VEMVIZ_PT_panel(bpy.types.Panel):
    bl_label = "vemviz"
    bl_idname = "VEMVIZ_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "VEM"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.vemviz
        layout = self.layout
        layout.prop(settings, "input_kind", expand=True)
        layout.prop(settings, "input_path" if settings.input_kind == "FILE" else "input_folder")
        layout.prop(settings, "voxel_size")
        row = layout.row(align=True)
        row.enabled = bool(settings.input_value())  # the phantom always runs every stage
        for name in ("restore", "iso", "segment"):
            row.prop(settings, name, toggle=True)
        layout.prop(settings, "preset", expand=True)
        layout.prop(settings, "output_dir")
        box = layout.box()
        box.prop(settings, "engine")
        if settings.engine == "CYCLES":
            box.prop(settings, "device", expand=True)
        row = box.row(align=True)
        row.prop(settings, "cut_axis")
        sub = row.row(align=True)
        sub.enabled = settings.cut_axis != "NONE"
        sub.prop(settings, "cut_position", slider=True)
        row = box.row(align=True)
        row.prop(settings, "turntable")
        sub = row.row(align=True)
        sub.enabled = settings.turntable
        sub.prop(settings, "turntable_frames")
        box.prop(settings, "transparent_enclosing")
        layout.operator("vemviz.reconstruct_and_render", icon="RENDER_STILL")
        layout.separator()
        layout.operator("vemviz.import_meshes", icon="IMPORT")


CLASSES = (VemvizSettings, VEMVIZ_PT_panel)
