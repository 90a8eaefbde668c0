"""Operators: import a mesh folder, and run the core then import and render its result.

- ``bpy.ops.vemviz.import_meshes(directory=DIR)`` imports a vemviz mesh folder (one object per
  label, manifest colours, physical units, volume centre at the origin).
- ``bpy.ops.vemviz.reconstruct_and_render()`` runs the vemviz core on the panel's input as a
  subprocess. Invoked from the UI it is modal: a timer polls the core's JSON progress lines,
  shows them in the progress indicator and the status bar, and ESC terminates the core. Run
  from a script (``execute``) it waits for the core. On success it imports ``OUT/meshes``,
  stages the scene (engine and device, cut, turntable from the panel) and renders
  ``OUT/render.png`` (with a turntable also ``OUT/render_0001.png`` ...). A core that fails
  is reported with its own error line, and the operator is cancelled (from a script:
  RuntimeError, so ``blender -b --python-exit-code 2`` exits with status 2).
"""

import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty

from . import scene as vscene
from .core import MESH_FOLDER, CoreJob, prepare_core_command
from .preferences import core_prefix

PRESETS = {  # render settings of the panel's presets
    "FAST": {"samples": vscene.DEFAULT_SAMPLES, "resolution": vscene.DEFAULT_RESOLUTION},
    "QUALITY": {"samples": 128, "resolution": (1920, 1440)},
}
RENDER_NAME = "render.png"


class VEMVIZ_OT_import_meshes(bpy.types.Operator):
    """Import a vemviz mesh folder (manifest.json and one GLB per label)"""

    bl_idname = "vemviz.import_meshes"
    bl_label = "Import vemviz Meshes"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Mesh folder", subtype="DIR_PATH")
    transparent_enclosing: BoolProperty(
        name="Transparent enclosing objects",
        description="Make objects that contain other objects (cells) semi-transparent",
        default=False,
    )

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        alpha = vscene.ENCLOSING_ALPHA if self.transparent_enclosing else None
        try:
            folder = vscene.load_manifest(bpy.path.abspath(self.directory))
            objects = vscene.import_mesh_folder(folder, scene=context.scene, enclosing_alpha=alpha)
        except vscene.ManifestError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {len(objects)} objects from {folder.directory}")
        return {"FINISHED"}


def _progress_text(event: dict) -> tuple[str, float | None]:
    """Status-bar text and completed fraction (or None) of one core event."""
    if event.get("event") == "status":
        return str(event.get("message", "")), None
    total = event.get("total")
    completed = int(event.get("completed") or 0)
    if total:
        return f"{event.get('task', '')}: {completed}/{total}", min(completed / total, 1.0)
    return f"{event.get('task', '')}: {completed}", None


class VEMVIZ_OT_reconstruct_and_render(bpy.types.Operator):
    """Run the vemviz pipeline on the input, then import and render the meshes (ESC cancels)"""

    bl_idname = "vemviz.reconstruct_and_render"
    bl_label = "Reconstruct and Render"
    bl_options = {"REGISTER"}

    def _start(self, context: bpy.types.Context) -> bool:
        self._job: CoreJob | None = None
        self._timer: bpy.types.Timer | None = None
        settings = context.scene.vemviz
        if not settings.output_dir:
            self.report({"ERROR"}, "Choose an output folder first.")
            return False
        self._out = Path(bpy.path.abspath(settings.output_dir))
        try:
            command = prepare_core_command(
                core_prefix(context),
                self._out,
                settings.input_value(),
                tuple(settings.voxel_size),
                restore=settings.restore,
                iso=settings.iso,
                segment=settings.segment,
            )
            self._job = CoreJob(command)
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return False
        print("vemviz:", " ".join(command))
        return True

    def _show(self, context: bpy.types.Context) -> None:
        for event in self._job.drain():
            text, fraction = _progress_text(event)
            if event.get("event") == "status":
                self.report({"INFO"}, text)
            if context.workspace is not None:
                context.workspace.status_text_set(f"vemviz: {text}  (Esc cancels)")
            if fraction is not None and context.window is not None:
                context.window_manager.progress_update(fraction * 100)

    def _stop_ui(self, context: bpy.types.Context) -> None:
        window_manager = context.window_manager
        if self._timer is not None:
            window_manager.event_timer_remove(self._timer)
            self._timer = None
        window_manager.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def _finish(self, context: bpy.types.Context, interactive: bool) -> set[str]:
        if self._job.returncode != 0:
            self.report({"ERROR"}, f"vemviz failed: {self._job.error_message()}")
            return {"CANCELLED"}
        settings = context.scene.vemviz
        scene = context.scene
        alpha = vscene.ENCLOSING_ALPHA if settings.transparent_enclosing else None
        try:
            folder = vscene.load_manifest(self._out / MESH_FOLDER)
            objects = vscene.import_mesh_folder(folder, scene=scene, enclosing_alpha=alpha)
            options = {**PRESETS[settings.preset], **settings.scene_options()}
            vscene.stage_scene(scene, objects, folder, **options)
        except (vscene.ManifestError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        png = self._out / RENDER_NAME
        if interactive:  # render in Blender's render window, without blocking the UI
            if settings.turntable:  # frames render_0001.png ... next to render.png
                scene.render.filepath = str(png.with_name(f"{png.stem}_####{png.suffix}"))
                bpy.ops.render.render("INVOKE_DEFAULT", animation=True)
            else:
                scene.render.filepath = str(png)
                bpy.ops.render.render("INVOKE_DEFAULT", write_still=True)
        else:
            if settings.turntable:
                vscene.render_turntable(scene, png)
            vscene.render_still(scene, png)
        self.report({"INFO"}, f"Imported {len(objects)} objects; rendering {png}")
        return {"FINISHED"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not self._start(context):
            return {"CANCELLED"}
        while not self._job.done():
            self._show(context)
            time.sleep(0.1)
        self._show(context)
        return self._finish(context, interactive=False)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if context.window is None:
            return self.execute(context)
        if not self._start(context):
            return {"CANCELLED"}
        window_manager = context.window_manager
        self._timer = window_manager.event_timer_add(0.25, window=context.window)
        window_manager.progress_begin(0, 100)
        window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC":
            self._job.cancel()
            self._stop_ui(context)
            self.report({"WARNING"}, "vemviz cancelled; the core kept no partial output.")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        self._show(context)
        if not self._job.done():
            return {"RUNNING_MODAL"}
        self._stop_ui(context)
        return self._finish(context, interactive=True)


def menu_import(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    self.layout.operator(VEMVIZ_OT_import_meshes.bl_idname, text="vemviz Mesh Folder")


CLASSES = (VEMVIZ_OT_import_meshes, VEMVIZ_OT_reconstruct_and_render)
