"""Build a Blender scene from a vemviz mesh folder and render it.

Shared by the add-on's operators and by ``scripts/render_blender.py``:

- `load_manifest` checks a mesh folder (``manifest.json`` schema_version 1, see
  ``docs/manifest.md``) and raises `ManifestError` with a one-line message when it is unusable.
- `import_mesh_folder` creates one object per label in a collection named after the folder,
  with a Principled BSDF material in the manifest colour and opacity, in physical units, with
  the volume centre at the world origin (volume x, y, z = Blender X, Y, Z; z points up).
- `stage_scene` adds a camera that frames everything, three-point lighting, a neutral grey
  background, an optional cutting plane and an optional turntable; `render_still` and
  `render_turntable` write PNGs atomically.

Runs on Blender 3.4 through 5.0: engine ids, material blend settings, Principled BSDF input
names and ``use_nodes`` differ between versions and are looked up defensively.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

from .glb import GlbError, gltf_to_blender, read_glb

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINES = {
    "CYCLES": ("CYCLES",),
    "EEVEE": ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"),  # 3.4 and 4.5+ / 4.2-4.4
    "WORKBENCH": ("BLENDER_WORKBENCH",),
}
DEFAULT_ENGINE = "CYCLES"
DEVICES = ("CPU", "GPU")
GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI")
DEFAULT_SAMPLES = 16
DEFAULT_RESOLUTION = (960, 720)
BACKGROUND = (0.22, 0.23, 0.25)  # linear; a mid grey, slightly cool
VIEW_DIRECTION = (1.0, -1.35, 0.95)  # from the scene centre towards the camera
ENCLOSING_ALPHA = 0.3
SPECULAR_INPUTS = ("Specular IOR Level", "Specular")  # 4.0+ / 3.x Principled BSDF


class ManifestError(ValueError):
    """A mesh folder that cannot be imported (one-line message for the user)."""


@dataclass
class MeshFolder:
    """A checked mesh folder: its manifest entries and the volume geometry."""

    directory: Path
    units: str
    objects: list[dict]
    bbox_min: Vector
    bbox_max: Vector

    @property
    def centre(self) -> Vector:
        return (self.bbox_min + self.bbox_max) / 2


def load_manifest(directory: str | os.PathLike[str]) -> MeshFolder:
    """Read and check ``DIR/manifest.json``; raise `ManifestError` when it is unusable."""
    directory = Path(directory).expanduser().resolve()
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(f"Mesh folder {directory} does not exist.")
    if not path.is_file():
        raise ManifestError(
            f"{directory} has no {MANIFEST_NAME}; point to a folder written by `vemviz mesh`."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}).") from exc
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema_version {version!r}; this add-on reads version {SCHEMA_VERSION}"
            " (update vemviz_blender)."
        )
    objects = manifest.get("objects")
    if not isinstance(objects, list):
        raise ManifestError(f"{path} has no 'objects' list.")
    for entry in objects:
        file = entry.get("file") if isinstance(entry, dict) else None
        if not file or not (directory / file).is_file():
            raise ManifestError(f"{path} lists {file!r}, which is missing from {directory}.")
    bbox = manifest.get("volume_bbox") or {}
    try:
        lo, hi = Vector(bbox["min"]), Vector(bbox["max"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path} has no valid volume_bbox.") from exc
    return MeshFolder(directory, str(manifest.get("units", "um")), objects, lo, hi)


def srgb_to_linear(color: str) -> tuple[float, float, float]:
    """Convert an sRGB hex colour ``#rrggbb`` to linear RGB in 0..1."""
    text = color.lstrip("#")
    if len(text) != 6:
        raise ManifestError(f"Colour {color!r} is not of the form #rrggbb.")
    srgb = [int(text[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in srgb]
    return linear[0], linear[1], linear[2]


def _node_tree(owner: bpy.types.Material | bpy.types.World) -> bpy.types.NodeTree:
    """The shader node tree, enabling nodes only where needed (``use_nodes`` is gone in 6.0)."""
    if owner.node_tree is None:
        owner.use_nodes = True
    return owner.node_tree


def _set_input(node: bpy.types.Node, names: Sequence[str], value: object) -> None:
    for name in names:
        socket = node.inputs.get(name)
        if socket is not None:
            socket.default_value = value
            return


def make_material(name: str, rgb: Sequence[float], alpha: float) -> bpy.types.Material:
    """A Principled BSDF material with linear ``rgb`` and ``alpha`` (blended when < 1)."""
    material = bpy.data.materials.new(name)
    tree = _node_tree(material)
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    rgba = (*rgb, 1.0)
    _set_input(bsdf, ("Base Color",), rgba)
    _set_input(bsdf, ("Roughness",), 0.45)
    _set_input(bsdf, SPECULAR_INPUTS, 0.3)
    _set_input(bsdf, ("Alpha",), alpha)
    material.diffuse_color = (*rgb, alpha)  # Workbench and the solid viewport
    if alpha < 1.0:
        if hasattr(material, "surface_render_method"):  # 4.2+
            material.surface_render_method = "BLENDED"
        else:
            material.blend_method = "BLEND"
            material.shadow_method = "HASHED"
        material.use_backface_culling = False
        material.show_transparent_back = False
    return material


def _build_mesh(name: str, positions: np.ndarray, triangles: np.ndarray) -> bpy.types.Mesh:
    """A smooth-shaded triangle mesh (Blender's own normals, which a cut keeps consistent)."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(positions))
    mesh.vertices.foreach_set("co", positions.astype(np.float32).ravel())
    mesh.loops.add(triangles.size)
    mesh.loops.foreach_set("vertex_index", triangles.astype(np.int32).ravel())
    mesh.polygons.add(len(triangles))
    mesh.polygons.foreach_set("loop_start", np.arange(0, triangles.size, 3, dtype=np.int32))
    if not bpy.types.MeshPolygon.bl_rna.properties["loop_total"].is_readonly:
        mesh.polygons.foreach_set("loop_total", np.full(len(triangles), 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    mesh.validate(clean_customdata=False)
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), dtype=bool))
    mesh.update()
    return mesh


def _set_units(scene: bpy.types.Scene, units: str) -> None:
    settings = scene.unit_settings
    settings.system = "METRIC"
    if units == "nm":
        settings.scale_length = 1e-9
        settings.length_unit = "ADAPTIVE"
    else:
        settings.scale_length = 1e-6
        settings.length_unit = "MICROMETERS"


def nesting_levels(bounds: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    """For each box, 0 if it contains no other box, else 1 + the largest level it contains.

    A cell around a nucleus around a nucleolus gets 2, the nucleus 1, the nucleolus 0.
    """
    order = sorted(range(len(bounds)), key=lambda i: float(np.prod(bounds[i][1] - bounds[i][0])))
    levels = [0] * len(bounds)
    for rank, i in enumerate(order):
        lo, hi = bounds[i]
        inner = [
            levels[j] + 1
            for j in order[:rank]
            if np.all(lo <= bounds[j][0]) and np.all(bounds[j][1] <= hi)
        ]
        levels[i] = max(inner, default=0)
    return levels


def import_mesh_folder(
    folder: MeshFolder,
    *,
    scene: bpy.types.Scene | None = None,
    enclosing_alpha: float | None = None,
) -> list[bpy.types.Object]:
    """Import every object of a checked mesh folder into a collection named after the folder.

    ``enclosing_alpha`` (e.g. 0.3) makes objects whose box contains another object's box
    semi-transparent so that the organelles inside a cell stay visible.
    """
    scene = scene or bpy.context.scene
    centre = np.array(folder.centre)
    parts = []
    for entry in folder.objects:
        try:
            meshes = read_glb(folder.directory / entry["file"])
        except (OSError, GlbError) as exc:
            raise ManifestError(f"Cannot read {entry['file']}: {exc}") from exc
        if not meshes:
            continue
        positions = [gltf_to_blender(m.positions) - centre for m in meshes]
        offsets = np.cumsum([0] + [len(p) for p in positions[:-1]])
        triangles = [m.triangles + np.uint32(o) for m, o in zip(meshes, offsets, strict=True)]
        parts.append((entry, np.concatenate(positions), np.concatenate(triangles)))
    if not parts:
        raise ManifestError(f"No objects were imported from {folder.directory}.")
    bounds = [(p.min(axis=0), p.max(axis=0)) for _, p, _ in parts]
    levels = nesting_levels(bounds)
    collection = bpy.data.collections.new(folder.directory.name)
    scene.collection.children.link(collection)
    objects = []
    for (entry, positions, triangles), level in zip(parts, levels, strict=True):
        name = str(entry.get("name") or f"label {entry.get('label')}")
        mesh = _build_mesh(name, positions, triangles)
        alpha = float(entry.get("opacity", 1.0))
        if enclosing_alpha is not None and level > 0:
            alpha = min(alpha, enclosing_alpha)
        color = srgb_to_linear(str(entry.get("color", "#b4b4b4")))
        mesh.materials.append(make_material(name, color, alpha))
        obj = bpy.data.objects.new(name, mesh)
        obj["vemviz_label"] = int(entry.get("label", 0))
        obj["vemviz_class"] = str(entry.get("class", ""))
        obj["vemviz_color"] = str(entry.get("color", ""))
        collection.objects.link(obj)
        objects.append(obj)
    _set_units(scene, folder.units)
    return objects


def world_vertices(objects: Sequence[bpy.types.Object]) -> np.ndarray:
    """All vertices of the objects' evaluated meshes (modifiers such as a cut applied), (N, 3)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    arrays = [np.zeros((0, 3))]
    for obj in objects:
        evaluated = obj.evaluated_get(depsgraph)
        mesh = evaluated.to_mesh()
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        evaluated.to_mesh_clear()
        matrix = np.array(obj.matrix_world)
        arrays.append(co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3])
    return np.concatenate(arrays)


def world_bounds(objects: Sequence[bpy.types.Object]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world-space bounds (min, max) of the objects' evaluated vertices."""
    points = world_vertices(objects)
    if not len(points):
        raise ManifestError("The imported objects have no vertices.")
    return points.min(axis=0), points.max(axis=0)


def _fit_distance(local: np.ndarray, tan_x: float, tan_y: float) -> float:
    """Camera distance that keeps camera-space points (x right, y up, z back) in view."""
    reach = np.maximum(np.abs(local[:, 0]) / tan_x, np.abs(local[:, 1]) / tan_y)
    return float(np.max(local[:, 2] + reach))


def _z_rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def add_camera(
    scene: bpy.types.Scene,
    objects: Sequence[bpy.types.Object],
    *,
    orbit: bool = False,
    margin: float = 1.06,
) -> bpy.types.Object:
    """A perspective camera looking from the front-right-above, fitted tightly to the objects.

    With ``orbit`` the distance also fits every view of a turntable around the vertical axis.
    """
    points = world_vertices(objects)
    if not len(points):
        raise ManifestError("The imported objects have no vertices.")
    data = bpy.data.cameras.new("vemviz camera")
    data.lens = 50
    data.sensor_fit = "AUTO"  # data.angle spans the longer side of the image
    width, height = scene.render.resolution_x, scene.render.resolution_y
    tan_long = math.tan(data.angle / 2)
    tan_short = tan_long * min(width, height) / max(width, height)
    tan_x, tan_y = (tan_long, tan_short) if width >= height else (tan_short, tan_long)
    back = np.array(Vector(VIEW_DIRECTION).normalized())
    rotation = (-Vector(back)).to_track_quat("-Z", "Y")
    axes = np.array(rotation.to_matrix())  # columns: camera x (right), y (up), z (back)
    centre = points.mean(axis=0)
    local = (points - centre) @ axes
    if orbit:
        turns = [_z_rotation(a) for a in np.linspace(0, 2 * math.pi, 12, endpoint=False)]
        distance = max(_fit_distance(local @ (axes.T @ t @ axes), tan_x, tan_y) for t in turns)
    else:
        shift = (local.max(axis=0) + local.min(axis=0)) / 2
        shift[2] = 0.0
        centre = centre + axes @ shift
        distance = _fit_distance(local - shift, tan_x, tan_y)
    distance *= margin
    data.clip_start = distance / 100
    data.clip_end = distance * 10
    camera = bpy.data.objects.new("vemviz camera", data)
    camera.location = Vector(centre + back * distance)
    camera.rotation_euler = rotation.to_euler()
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def add_lights(scene: bpy.types.Scene, camera: bpy.types.Object) -> list[bpy.types.Object]:
    """Three-point lighting from sun lamps (scale-free: works for um and nm scenes alike)."""
    rotation = camera.rotation_euler.to_matrix()
    # (name, direction in camera space towards the light, strength, soft angle in degrees)
    setups = [
        ("key", Vector((-1.0, 1.0, 1.2)), 2.5, 8.0),
        ("fill", Vector((1.2, 0.2, 0.8)), 1.0, 20.0),
        ("rim", Vector((0.3, 1.2, -1.5)), 2.0, 5.0),
    ]
    lights = []
    for name, direction, strength, angle in setups:
        data = bpy.data.lights.new(f"vemviz {name}", "SUN")
        data.energy = strength
        data.angle = math.radians(angle)
        light = bpy.data.objects.new(f"vemviz {name}", data)
        towards = rotation @ direction.normalized()
        light.rotation_euler = (-towards).to_track_quat("-Z", "Y").to_euler()
        scene.collection.objects.link(light)
        lights.append(light)
    return lights


def set_background(scene: bpy.types.Scene, color: Sequence[float] = BACKGROUND) -> None:
    """A uniform neutral grey world (also soft ambient light in Cycles and EEVEE)."""
    world = scene.world or bpy.data.worlds.new("vemviz world")
    scene.world = world
    world.color = color  # Workbench
    background = next(n for n in _node_tree(world).nodes if n.bl_idname == "ShaderNodeBackground")
    background.inputs["Color"].default_value = (*color, 1.0)
    background.inputs["Strength"].default_value = 1.0
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "Standard"  # manifest colours stay faithful
    scene.view_settings.look = "None"


def parse_cut(text: str) -> tuple[int, float]:
    """Parse ``AXIS:FRACTION`` (e.g. ``z:0.5``) into an axis index and a fraction in 0..1."""
    axis, _, value = text.partition(":")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if axis.lower() not in ("x", "y", "z") or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--cut {text!r} must look like z:0.5 (axis x, y or z; fraction 0..1).")
    return "xyz".index(axis.lower()), fraction


def _half_space_box(
    lo: np.ndarray, hi: np.ndarray, axis: int, plane: float, towards: float
) -> bpy.types.Object:
    """A hidden box from ``plane`` to the ``towards`` end (+1 or -1) of [lo, hi] along axis."""
    lo, hi = lo.copy(), hi.copy()
    if towards > 0:
        lo[axis] = plane
    else:
        hi[axis] = plane
    corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh = bpy.data.meshes.new("vemviz cut")
    mesh.from_pydata(corners, [], faces)
    cutter = bpy.data.objects.new("vemviz cut", mesh)
    cutter.display_type = "WIRE"
    cutter.hide_render = True
    return cutter


def add_cut(
    objects: Sequence[bpy.types.Object],
    folder: MeshFolder,
    axis: int,
    fraction: float,
) -> list[bpy.types.Object]:
    """Cut away the part of every object between the plane and the camera (boolean difference).

    The plane lies at ``fraction`` of the volume along ``axis``; the removed half-space is the
    one facing the camera, so the cross-sections face the viewer. Objects that enclose others
    are cut a hair deeper so the inner objects' sections are not hidden in the same plane.
    """
    lo = np.array(folder.bbox_min - folder.centre)
    hi = np.array(folder.bbox_max - folder.centre)
    olo, ohi = world_bounds(objects)
    pad = float(max(np.linalg.norm(hi - lo), np.linalg.norm(ohi - olo)))
    box_lo, box_hi = np.minimum(lo, olo) - pad, np.maximum(hi, ohi) + pad
    plane = lo[axis] + fraction * (hi[axis] - lo[axis])
    towards = 1.0 if VIEW_DIRECTION[axis] >= 0 else -1.0
    step = 2e-3 * pad
    levels = nesting_levels([world_bounds([obj]) for obj in objects])
    cutters: dict[int, bpy.types.Object] = {}
    for obj, level in zip(objects, levels, strict=True):
        if level not in cutters:
            depth = plane - towards * level * step
            cutters[level] = _half_space_box(box_lo, box_hi, axis, depth, towards)
            obj.users_collection[0].objects.link(cutters[level])
        modifier = obj.modifiers.new("vemviz cut", "BOOLEAN")
        modifier.operation = "DIFFERENCE"
        modifier.solver = "EXACT"
        modifier.object = cutters[level]
    return list(cutters.values())


def denoiser_available() -> bool:
    """Whether this Cycles has OpenImageDenoise (Debian's Blender 3.4 is built without it)."""
    try:
        import _cycles
    except ImportError:
        return False
    return bool(getattr(_cycles, "with_openimagedenoise", False))


def enable_gpu() -> str | None:
    """Switch Cycles to the first GPU backend with a device; its name, or None (stay on CPU)."""
    addon = bpy.context.preferences.addons.get("cycles")
    if addon is None:
        return None
    prefs = addon.preferences
    for backend in GPU_BACKENDS:
        try:
            prefs.compute_device_type = backend
        except TypeError:  # not a backend of this Blender
            continue
        prefs.refresh_devices()
        devices = [d for d in prefs.devices if d.type == backend]
        if devices:
            for device in prefs.devices:
                device.use = device.type == backend
            return backend
    prefs.compute_device_type = "NONE"
    return None


def set_engine(scene: bpy.types.Scene, engine: str, samples: int, device: str = "CPU") -> str:
    """Select ``engine`` (CYCLES, EEVEE or WORKBENCH) under this Blender's id; return the id.

    ``device`` GPU renders Cycles on the first available GPU backend (CUDA, OptiX, HIP, Metal,
    oneAPI) and falls back to the CPU, with a note on stderr, when there is none.
    """
    for identifier in ENGINES[engine.upper()]:
        try:
            scene.render.engine = identifier
        except TypeError:
            continue
        break
    else:
        raise ValueError(f"This Blender has no {engine} render engine.")
    if identifier == "CYCLES":
        backend = enable_gpu() if device.upper() == "GPU" else None
        if device.upper() == "GPU" and backend is None:
            print("vemviz render: no GPU found for Cycles; rendering on the CPU", file=sys.stderr)
        scene.cycles.device = "GPU" if backend else "CPU"
        scene.cycles.samples = samples
        scene.cycles.use_adaptive_sampling = True
        scene.cycles.use_denoising = denoiser_available()
        scene.cycles.max_bounces = 6
        scene.cycles.transparent_max_bounces = 16
    elif identifier.startswith("BLENDER_EEVEE"):
        scene.eevee.taa_render_samples = samples
    else:
        shading = scene.display.shading
        shading.light = "STUDIO"
        shading.color_type = "MATERIAL"
        shading.show_cavity = True
    return identifier


def add_turntable(
    scene: bpy.types.Scene, rig: Sequence[bpy.types.Object], frames: int
) -> bpy.types.Object:
    """Orbit ``rig`` (camera and lights) once around the vertical axis in ``frames`` frames."""
    pivot = bpy.data.objects.new("vemviz turntable", None)
    scene.collection.objects.link(pivot)
    for obj in rig:
        obj.parent = pivot
    edit = bpy.context.preferences.edit
    previous = edit.keyframe_new_interpolation_type
    edit.keyframe_new_interpolation_type = "LINEAR"
    try:
        pivot.rotation_euler = (0.0, 0.0, 0.0)
        pivot.keyframe_insert("rotation_euler", index=2, frame=1)
        pivot.rotation_euler = (0.0, 0.0, 2 * math.pi)
        pivot.keyframe_insert("rotation_euler", index=2, frame=frames + 1)
    finally:
        edit.keyframe_new_interpolation_type = previous
    scene.frame_start = 1
    scene.frame_end = frames
    return pivot


def stage_scene(
    scene: bpy.types.Scene,
    objects: Sequence[bpy.types.Object],
    folder: MeshFolder,
    *,
    engine: str = DEFAULT_ENGINE,
    samples: int = DEFAULT_SAMPLES,
    resolution: tuple[int, int] = DEFAULT_RESOLUTION,
    cut: tuple[int, float] | None = None,
    turntable: int | None = None,
    device: str = "CPU",
) -> bpy.types.Object:
    """Camera, lights, background, render settings, cut and turntable; returns the camera."""
    scene.render.resolution_x, scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    set_engine(scene, engine, samples, device)
    set_background(scene)
    if cut is not None:
        add_cut(objects, folder, *cut)
    camera = add_camera(scene, objects, orbit=bool(turntable))
    lights = add_lights(scene, camera)
    if turntable:
        add_turntable(scene, [camera, *lights], turntable)
    return camera


def render_still(scene: bpy.types.Scene, out: str | os.PathLike[str]) -> Path:
    """Render the current frame to ``out`` (PNG), writing a temporary file first."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".png", dir=out.parent)
    os.close(handle)
    previous = scene.render.filepath
    try:
        scene.render.filepath = temp
        bpy.ops.render.render(write_still=True, scene=scene.name)
        if not os.path.getsize(temp):
            raise RuntimeError(f"Blender wrote no image for {out}.")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp made it private; a render is an ordinary file
        os.replace(temp, out)
    finally:
        scene.render.filepath = previous
        if os.path.exists(temp):
            os.unlink(temp)
    return out


def render_turntable(scene: bpy.types.Scene, out: str | os.PathLike[str]) -> list[Path]:
    """Render every frame to ``<stem>_0001.png`` ... next to ``out``; returns the paths."""
    out = Path(out)
    paths = []
    for frame in range(scene.frame_start, scene.frame_end + 1):
        scene.frame_set(frame)
        paths.append(render_still(scene, out.with_name(f"{out.stem}_{frame:04d}{out.suffix}")))
    scene.frame_set(scene.frame_start)
    return paths
