"""The Blender side: GLB reader, add-on, render script, core wrapper and add-on zip.

These tests run in the core environment and start Blender (the ``.venv-blender`` bpy wheel or a
``blender`` executable, found like `vemviz.render.find_blender`) as a subprocess; they are
skipped when there is none. Small check scripts run inside Blender and print one JSON line
(``RESULT {...}``) that the tests parse. The mesh folder is made by the real
`vemviz.mesh.mesh_labels` from three separated blobs whose label colours differ in hue.
"""

from __future__ import annotations

import colorsys
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

import vemviz.render as vrender
from vemviz.errors import VemvizError
from vemviz.mesh import label_color, mesh_labels

REPO = Path(__file__).resolve().parents[1]
ADDON = REPO / "blender_addon"
PACKAGE = ADDON / "vemviz_blender"
LABELS = (1, 2, 3)  # hues 223, 85 and 308 degrees

pytestmark = pytest.mark.blender


def _load_standalone(name: str) -> ModuleType:
    """Import an add-on module that needs no bpy (glb.py, core.py) in the core environment."""
    spec = importlib.util.spec_from_file_location(f"vemviz_blender_{name}", PACKAGE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


glb = _load_standalone("glb")
core = _load_standalone("core")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blender_prefix() -> list[str]:
    try:
        return vrender.find_blender()
    except VemvizError as exc:
        pytest.skip(f"no Blender environment: {exc}")


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three ellipsoids side by side along x, meshed by the real vemviz.mesh."""
    zz, yy, xx = np.mgrid[:16, :48, :120]
    labels = np.zeros(zz.shape, dtype=np.uint16)
    for label, cx in zip(LABELS, (22, 60, 98), strict=True):
        inside = ((zz - 8) / 6) ** 2 + ((yy - 24) / 16) ** 2 + ((xx - cx) / 15) ** 2 <= 1
        labels[inside] = label
    out = tmp_path_factory.mktemp("meshes") / "blobs"
    mesh_labels(labels, (40.0, 8.0, 8.0), out, class_name="blob")
    return out


def _bad_folder(mesh_dir: Path, root: Path, kind: str) -> Path:
    folder = root / kind
    if kind == "no-manifest":
        folder.mkdir()
        return folder
    shutil.copytree(mesh_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if kind == "missing-file":
        (folder / manifest["objects"][0]["file"]).unlink()
    elif kind == "no-objects":
        manifest["objects"] = []
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:
        manifest["schema_version"] = 99
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


BAD_KINDS = {  # kind -> words the message must contain (any case)
    "no-manifest": "manifest.json",
    "missing-file": "missing",
    "unknown-schema": "schema_version",
    "no-objects": "no objects",
}


def _run_in_blender(
    prefix: list[str], script: str, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a check script in Blender with the prefix find_blender gave for the render script."""
    script_path = workdir / "check_blender.py"
    script_path.write_text(textwrap.dedent(script))
    command = [str(script_path) if p == str(vrender.RENDER_SCRIPT) else p for p in prefix]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env={**vrender._blender_env(), **(env or {})},
        timeout=180,
    )


def _result(completed: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stdout[-2000:] + completed.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def _hsv(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) hue, saturation, value in 0..1 of 8-bit RGB pixels."""
    rgb = pixels.reshape(-1, 3).astype(float) / 255
    return np.array([colorsys.rgb_to_hsv(*px) for px in rgb])


def _srgb(hex_color: str) -> tuple[float, float, float]:
    return tuple(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))


def _linear(hex_color: str) -> np.ndarray:
    c = np.array(_srgb(hex_color))
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# --- the GLB reader (no Blender needed) ------------------------------------------------------


def test_glb_reader_matches_trimesh(mesh_dir: Path) -> None:
    manifest = json.loads((mesh_dir / "manifest.json").read_text())
    for entry in manifest["objects"]:
        (mesh,) = glb.read_glb(mesh_dir / entry["file"])
        reference = trimesh.load(mesh_dir / entry["file"], force="mesh", process=False)
        np.testing.assert_allclose(mesh.positions, reference.vertices, atol=1e-6)
        np.testing.assert_array_equal(mesh.triangles, reference.faces)
        # back in volume (x, y, z), the vertices span the manifest's bbox
        volume_xyz = glb.gltf_to_blender(mesh.positions)
        np.testing.assert_allclose(volume_xyz.min(axis=0), entry["bbox_min"], atol=1e-4)
        np.testing.assert_allclose(volume_xyz.max(axis=0), entry["bbox_max"], atol=1e-4)


def test_glb_reader_applies_node_transforms(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    matrix = trimesh.transformations.compose_matrix(
        scale=(2.0, 2.0, 2.0), angles=(0.0, np.pi / 2, 0.0), translate=(1.0, 2.0, 3.0)
    )
    scene = trimesh.Scene()
    scene.add_geometry(box, node_name="box", transform=matrix)
    path = tmp_path / "moved.glb"
    path.write_bytes(scene.export(file_type="glb", include_normals=True))
    (mesh,) = glb.read_glb(path)
    reference = trimesh.load(path, force="mesh")  # trimesh applies the node transform too
    expected = trimesh.transform_points(box.vertices, matrix)
    assert {tuple(p) for p in np.round(mesh.positions, 4) + 0.0} == {
        tuple(p) for p in np.round(expected, 4) + 0.0
    }
    # normals are rotated (and kept unit length), so they agree with the moved faces
    assert mesh.normals is not None
    np.testing.assert_allclose(np.linalg.norm(mesh.normals, axis=1), 1.0, atol=1e-5)
    face_normals = np.cross(
        *(
            mesh.positions[mesh.triangles[:, i]] - mesh.positions[mesh.triangles[:, 0]]
            for i in (1, 2)
        )
    )
    assert reference.is_watertight
    assert np.all(np.einsum("ij,ij->i", mesh.normals[mesh.triangles[:, 0]], face_normals) > 0)


def test_glb_reader_rejects_non_glb(tmp_path: Path) -> None:
    path = tmp_path / "fake.glb"
    path.write_bytes(b"not a glb file at all")
    with pytest.raises(glb.GlbError, match="not a binary glTF"):
        glb.read_glb(path)


# --- the core command the add-on builds (no Blender needed) ----------------------------------


def test_core_command_routes(tmp_path: Path) -> None:
    prefix = ["/venv/bin/python", "-m", "vemviz"]
    demo = core.prepare_core_command(prefix, tmp_path)
    assert demo == [*prefix, "demo", "--out", str(tmp_path), "--no-render"]
    data = core.prepare_core_command(prefix, tmp_path, "/d/raw.tif", (40, 8, 8))
    assert data[3:] == ["demo", "--data", "/d/raw.tif", "--out", str(tmp_path), "--no-render",
                        "--voxel-size", "40,8,8"]  # fmt: skip
    run = core.prepare_core_command(prefix, tmp_path, "/d/raw.tif", (40, 8, 8), restore=False)
    assert run == [*prefix, "run", str(tmp_path / core.PIPELINE_FILE)]
    config = tomllib.loads((tmp_path / core.PIPELINE_FILE).read_text())
    assert config["voxel_size"] == [40.0, 8.0, 8.0]
    assert [s["stage"] for s in config["stages"]] == ["iso", "segment", "mesh"]
    assert config["stages"][0]["factor"] == 5 and config["stages"][-1]["out"] == "meshes"
    assert config["stages"][-1]["interpolate_z"] is True
    with pytest.raises(ValueError, match="voxel size"):
        core.prepare_core_command(prefix, tmp_path, "/d/raw.tif", restore=False)


# --- vemviz.render (core side) ---------------------------------------------------------------


def test_find_blender_order_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_blender = tmp_path / "blender"
    fake_blender.write_text("#!/bin/sh\n")
    fake_blender.chmod(0o755)
    prefix = vrender.find_blender(str(fake_blender))
    assert prefix[0] == str(fake_blender) and "-b" in prefix and prefix[-1] == "--"
    assert prefix[prefix.index("-P") + 1] == str(vrender.RENDER_SCRIPT)
    python = vrender.find_blender(sys.executable)
    assert python == [str(Path(sys.executable).absolute()), str(vrender.RENDER_SCRIPT), "--"]
    monkeypatch.setenv("VEMVIZ_BLENDER", str(fake_blender))
    assert vrender.find_blender()[0] == str(fake_blender)
    with pytest.raises(VemvizError, match="--blender"):
        vrender.find_blender(str(tmp_path / "nowhere"))
    monkeypatch.delenv("VEMVIZ_BLENDER")
    monkeypatch.setattr(vrender, "REPO", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(VemvizError, match="make venv"):
        vrender.find_blender()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_render_meshes_rejects_bad_folders(mesh_dir: Path, tmp_path: Path, kind: str) -> None:
    folder = _bad_folder(mesh_dir, tmp_path, kind)
    with pytest.raises(VemvizError, match=f"(?i){BAD_KINDS[kind]}"):
        vrender.render_meshes(folder, tmp_path / "x.png", blender=sys.executable)


def _assert_label_colours(png: Path, shape: tuple[int, int]) -> None:
    """Neutral grey background that is not everything, and every label's hue on the image."""
    pixels = iio.imread(png)[..., :3]
    assert pixels.shape == (*shape, 3)
    hsv = _hsv(pixels)
    background = hsv[0]  # top-left corner
    assert background[1] < 0.15 and 0.2 < background[2] < 0.8, "background is not neutral grey"
    flat = pixels.reshape(-1, 3)
    share = np.mean(np.all(np.abs(flat.astype(int) - flat[0]) <= 3, axis=1))
    assert share < 0.9, "the image is (almost) only background"
    for label in LABELS:
        hue = colorsys.rgb_to_hsv(*_srgb(label_color(label)))[0]
        distance = np.abs((hsv[:, 0] - hue + 0.5) % 1.0 - 0.5)
        matching = np.count_nonzero((distance < 0.04) & (hsv[:, 1] > 0.3))
        assert matching > 300, f"label {label} ({label_color(label)}): {matching} pixels"


def test_render_meshes_png_shows_every_label_colour(
    blender_prefix: list[str], mesh_dir: Path, tmp_path: Path
) -> None:
    out = vrender.render_meshes(mesh_dir, tmp_path / "fig.png", resolution=(320, 240), samples=8)
    _assert_label_colours(out, (240, 320))


def test_debian_blender_renders_every_label_colour(mesh_dir: Path, tmp_path: Path) -> None:
    """Blender 3.4 from Debian's ``blender`` package (.ci/run installs it), no denoiser."""
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip("no blender executable on PATH: apt-get install blender python3-numpy")
    out = vrender.render_meshes(
        mesh_dir, tmp_path / "debian.png", blender=blender, resolution=(320, 240), samples=8,
        cut="z:0.6",
    )  # fmt: skip
    _assert_label_colours(out, (240, 320))


# --- the render script -----------------------------------------------------------------------


def test_render_script_cut_and_turntable(
    blender_prefix: list[str], mesh_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "turn.png"
    args = ["--meshes", str(mesh_dir), "--out", str(out), "--resolution", "160x120",
            "--samples", "4", "--cut", "z:0.5", "--turntable", "3"]  # fmt: skip
    completed = subprocess.run(
        [*blender_prefix, *args], capture_output=True, text=True, env=vrender._blender_env()
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.splitlines()[-1] == f"VEMVIZ_RENDER_OK {out} {len(LABELS)}"
    frames = [tmp_path / f"turn_{i:04d}.png" for i in (1, 2, 3)]
    assert out.is_file() and all(f.is_file() for f in frames)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    assert not np.array_equal(iio.imread(frames[0]), iio.imread(frames[1]))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_render_script_rejects_bad_folders(
    blender_prefix: list[str], mesh_dir: Path, tmp_path: Path, kind: str
) -> None:
    folder = _bad_folder(mesh_dir, tmp_path, kind)
    out = tmp_path / "bad.png"
    completed = subprocess.run(
        [*blender_prefix, "--meshes", str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        env=vrender._blender_env(),
    )
    assert completed.returncode != 0
    message = [line for line in completed.stderr.splitlines() if line.startswith("vemviz render:")]
    assert message and BAD_KINDS[kind] in message[-1].lower()
    assert not out.exists()


# --- the add-on inside Blender ---------------------------------------------------------------

IMPORT_CHECK = """
    import json, sys
    import bpy
    sys.path.insert(0, sys.argv[sys.argv.index("--") + 1])
    import vemviz_blender
    bpy.ops.wm.read_factory_settings(use_empty=True)
    vemviz_blender.register()
    good, *bad = sys.argv[sys.argv.index("--") + 2:]
    assert bpy.ops.vemviz.import_meshes(directory=good) == {"FINISHED"}
    objects = []
    for obj in bpy.data.collections[0].objects:
        bsdf = next(n for n in obj.active_material.node_tree.nodes
                    if n.bl_idname == "ShaderNodeBsdfPrincipled")
        corners = [obj.matrix_world @ v.co for v in obj.data.vertices]
        objects.append({
            "name": obj.name, "label": obj["vemviz_label"],
            "base_color": list(bsdf.inputs["Base Color"].default_value)[:3],
            "alpha": bsdf.inputs["Alpha"].default_value,
            "min": [min(c[i] for c in corners) for i in range(3)],
            "max": [max(c[i] for c in corners) for i in range(3)],
        })
    errors = {}
    for folder in bad:
        try:
            bpy.ops.vemviz.import_meshes(directory=folder)
        except RuntimeError as exc:
            errors[folder] = str(exc)
    print("RESULT " + json.dumps({
        "collections": [c.name for c in bpy.data.collections],
        "units": [bpy.context.scene.unit_settings.scale_length,
                  bpy.context.scene.unit_settings.length_unit],
        "objects": objects, "errors": errors,
    }))
"""


def test_addon_imports_objects_materials_and_rejects_bad_folders(
    blender_prefix: list[str], mesh_dir: Path, tmp_path: Path
) -> None:
    bad = [_bad_folder(mesh_dir, tmp_path, kind) for kind in BAD_KINDS]
    completed = _run_in_blender(
        blender_prefix, IMPORT_CHECK, tmp_path, str(ADDON), str(mesh_dir), *map(str, bad)
    )
    result = _result(completed)
    manifest = json.loads((mesh_dir / "manifest.json").read_text())
    assert result["collections"] == [mesh_dir.name]
    assert result["units"] == [pytest.approx(1e-6), "MICROMETERS"]
    lo, hi = (np.array(manifest["volume_bbox"][k]) for k in ("min", "max"))
    centre = (lo + hi) / 2
    by_label = {o["label"]: o for o in result["objects"]}
    assert sorted(by_label) == sorted(e["label"] for e in manifest["objects"])
    for entry in manifest["objects"]:
        obj = by_label[entry["label"]]
        assert obj["name"] == entry["name"]
        np.testing.assert_allclose(obj["base_color"], _linear(entry["color"]), atol=1e-4)
        assert obj["alpha"] == pytest.approx(entry["opacity"])
        # volume (x, y, z) in Blender, with the volume centre at the origin
        np.testing.assert_allclose(obj["min"], np.array(entry["bbox_min"]) - centre, atol=1e-4)
        np.testing.assert_allclose(obj["max"], np.array(entry["bbox_max"]) - centre, atol=1e-4)
    for folder, kind in zip(bad, BAD_KINDS, strict=True):
        assert BAD_KINDS[kind] in result["errors"][str(folder)].lower()


STAND_IN_CORE = """\
#!{python}
# A stand-in for the vemviz CLI: records its arguments, reports progress as JSON lines on
# stderr, and leaves a copy of a mesh folder in OUT/meshes (or sleeps, to be cancelled).
import json, shutil, sys, time
from pathlib import Path
args = sys.argv[1:]
if args == ["sleep"]:
    time.sleep(60)
if "--data" in args and args[args.index("--data") + 1].endswith("broken.tif"):
    print(json.dumps({{"event": "status", "message": "reading broken.tif"}}), file=sys.stderr)
    print("vemviz: error: broken.tif is not a TIFF file", file=sys.stderr)
    sys.exit(2)
out = Path(args[args.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(args))
for done in range(4):
    print(json.dumps({{"event": "progress", "task": "stand-in", "completed": done, "total": 3}}),
          file=sys.stderr, flush=True)
print(json.dumps({{"event": "status", "message": "stand-in finished"}}), file=sys.stderr)
shutil.copytree({meshes!r}, out / "meshes")
"""

OPERATOR_CHECK = """
    import json, sys
    import bpy
    import addon_utils
    addon_dir, core_path, out_dir, *panel = sys.argv[sys.argv.index("--") + 1:]
    sys.path.insert(0, addon_dir)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("vemviz_blender", default_set=True)
    from vemviz_blender import core, operators
    operators.PRESETS["FAST"] = {"samples": 4, "resolution": (160, 120)}
    bpy.context.preferences.addons["vemviz_blender"].preferences.core = core_path
    settings = bpy.context.scene.vemviz
    settings.output_dir = out_dir
    for assignment in panel:  # name=value pairs for the panel's settings
        name, value = assignment.split("=")
        setattr(settings, name, type(getattr(settings, name))(json.loads(value)))
    try:
        result = bpy.ops.vemviz.reconstruct_and_render("INVOKE_DEFAULT")  # no window: execute
    except RuntimeError as exc:
        print("RESULT " + json.dumps({"error": str(exc)}), flush=True)
        raise
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    print("RESULT " + json.dumps({
        "result": sorted(result),
        "objects": sorted(o.name for o in meshes),
        "cut_modifiers": sum(m.type == "BOOLEAN" for o in meshes for m in o.modifiers),
        "frames": [bpy.context.scene.frame_start, bpy.context.scene.frame_end],
        "engine": bpy.context.scene.render.engine,
    }))
"""


@pytest.fixture()
def stand_in(mesh_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "vemviz-stand-in"
    path.write_text(STAND_IN_CORE.format(python=sys.executable, meshes=str(mesh_dir)))
    path.chmod(0o755)
    return path


def test_core_job_reads_progress_and_cancels(stand_in: Path, tmp_path: Path) -> None:
    job = core.CoreJob([str(stand_in), "demo", "--out", str(tmp_path / "out"), "--no-render"])
    events = []
    deadline = time.monotonic() + 30
    while not job.done() and time.monotonic() < deadline:
        events += job.drain()
        time.sleep(0.05)
    events += job.drain()
    assert job.returncode == 0
    assert [e["completed"] for e in events if e["event"] == "progress"] == [0, 1, 2, 3]
    assert events[-1] == {"event": "status", "message": "stand-in finished"}
    sleeper = core.CoreJob([str(stand_in), "sleep"])
    started = time.monotonic()
    sleeper.cancel()
    assert sleeper.returncode != 0 and time.monotonic() - started < 5


def test_reconstruct_operator_with_stand_in_core(
    blender_prefix: list[str], stand_in: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    completed = _run_in_blender(
        blender_prefix, OPERATOR_CHECK, tmp_path, str(ADDON), str(stand_in), str(out)
    )
    result = _result(completed)
    assert result["result"] == ["FINISHED"]
    assert json.loads((out / "argv.json").read_text()) == ["demo", "--out", str(out), "--no-render"]
    assert "stand-in finished" in completed.stdout + completed.stderr  # status reported
    assert len(result["objects"]) == len(LABELS)
    assert iio.imread(out / "render.png").shape[:2] == (120, 160)


def test_reconstruct_operator_panel_choices_cut_turntable_workbench(
    blender_prefix: list[str], stand_in: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    panel = ['engine="WORKBENCH"', 'cut_axis="Z"', "cut_position=0.4", "turntable=true",
             "turntable_frames=2"]  # fmt: skip
    completed = _run_in_blender(
        blender_prefix, OPERATOR_CHECK, tmp_path, str(ADDON), str(stand_in), str(out), *panel
    )
    result = _result(completed)
    assert result["result"] == ["FINISHED"] and result["engine"] == "BLENDER_WORKBENCH"
    assert result["cut_modifiers"] == len(LABELS) and result["frames"] == [1, 2]
    frames = [iio.imread(out / f"render_{i:04d}.png") for i in (1, 2)]
    assert not np.array_equal(frames[0], frames[1])
    assert (out / "render.png").is_file()


def test_reconstruct_operator_reports_a_failing_core(
    blender_prefix: list[str], stand_in: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"no tiff")
    completed = _run_in_blender(
        blender_prefix, OPERATOR_CHECK, tmp_path, str(ADDON), str(stand_in), str(out),
        f"input_path={json.dumps(str(broken))}",
    )  # fmt: skip
    assert completed.returncode != 0  # the script's exit status
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    message = json.loads(lines[-1].removeprefix("RESULT "))["error"]
    assert "vemviz failed" in message and "broken.tif is not a TIFF file" in message
    assert not (out / "render.png").exists()


@pytest.mark.slow
def test_reconstruct_operator_with_real_core(blender_prefix: list[str], tmp_path: Path) -> None:
    """The whole chain from Blender: `python -m vemviz demo` on the phantom, import, render."""
    out = tmp_path / "out"
    completed = _run_in_blender(
        blender_prefix, OPERATOR_CHECK, tmp_path, str(ADDON), sys.executable, str(out)
    )
    result = _result(completed)
    manifest = json.loads((out / "meshes" / "manifest.json").read_text())
    assert result["result"] == ["FINISHED"]
    assert len(result["objects"]) == len(manifest["objects"]) > 0
    assert iio.imread(out / "render.png").shape[:2] == (120, 160)


# --- the add-on zip --------------------------------------------------------------------------

INSTALL_CHECK = """
    import json, sys
    import bpy
    import addon_utils
    zip_path = sys.argv[sys.argv.index("--") + 1]
    if bpy.app.version >= (4, 2, 0):
        bpy.ops.extensions.package_install_files(
            filepath=zip_path, repo="user_default", enable_on_install=True)
        module = "bl_ext.user_default.vemviz_blender"
    else:
        bpy.ops.preferences.addon_install(filepath=zip_path)
        module = "vemviz_blender"
        addon_utils.enable(module, default_set=True)
    addon = bpy.context.preferences.addons.get(module)
    print("RESULT " + json.dumps({
        "enabled": addon is not None,
        "preferences": addon is not None and hasattr(addon.preferences, "core"),
        "operators": [hasattr(bpy.types, "VEMVIZ_OT_import_meshes"),
                      hasattr(bpy.types, "VEMVIZ_OT_reconstruct_and_render")],
        "panel": hasattr(bpy.types, "VEMVIZ_PT_panel"),
    }))
"""


def test_build_addon_zip_installs(blender_prefix: list[str], tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_addon.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    version = tomllib.loads((PACKAGE / "blender_manifest.toml").read_text())["version"]
    zip_path = tmp_path / f"vemviz_blender-{version}.zip"
    assert completed.stdout.strip() == str(zip_path)
    names = zipfile.ZipFile(zip_path).namelist()
    assert "vemviz_blender/blender_manifest.toml" in names
    assert "vemviz_blender/__init__.py" in names and "vemviz_blender/scene.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    env = {"BLENDER_USER_RESOURCES": str(tmp_path / "user")}  # keep the real profile untouched
    result = _result(
        _run_in_blender(blender_prefix, INSTALL_CHECK, tmp_path, str(zip_path), env=env)
    )
    assert result == {"enabled": True, "preferences": True, "operators": [True, True],
                      "panel": True}  # fmt: skip
