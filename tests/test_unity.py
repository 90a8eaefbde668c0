"""Unity bridge: dataset export (OBJ handedness, .meta GUIDs, atomic re-export, volume
mapping, bad input) and the template project (GUID references, scene YAML, C# that compiles
against reference stubs of the UnityEngine/UnityEditor API with `mcs`, run under `mono`).

The mesh fixture is a chiral "corner" (three arms of different lengths along +x, +y, +z from
one corner) plus a sphere, meshed by `vemviz.mesh.mesh_labels`: any mirror image of it in the
Unity import would show up as an arm pointing the wrong way.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

import unity_bridge
from unity_bridge.export import export_unity, template_dir
from vemviz.errors import VemvizError
from vemviz.mesh import mesh_labels
from vemviz.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
STUBS = Path(__file__).parent / "unity_stubs"
TEMPLATE = template_dir()
SCRIPTS = TEMPLATE / "Assets" / "VemViz" / "Scripts"
EDITOR = TEMPLATE / "Assets" / "VemViz" / "Editor"
VALIDATOR = Path(__file__).parent / ".node" / "node_modules" / "gltf-validator"
VOXEL_NM = (40.0, 8.0, 8.0)
SHAPE = (14, 40, 40)
BUILTIN_GUIDS = {"0000000000000000e000000000000000", "0000000000000000f000000000000000"}
GUID = re.compile(r"guid: ([0-9a-f]{32})")


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:12, 4:10, 4:10] = 1  # arm along +z (long)
    labels[2:5, 4:10, 4:34] = 1  # arm along +x (longest)
    labels[2:5, 4:24, 4:10] = 1  # arm along +y (short)
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    labels[((zz - 7) * 5) ** 2 + (yy - 28) ** 2 + (xx - 28) ** 2 < 36] = 2
    return labels


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("meshes") / "cells"
    mesh_labels(_labels(), VOXEL_NM, out)
    return out


@pytest.fixture(scope="module")
def dataset(mesh_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_unity(mesh_dir, tmp_path_factory.mktemp("export") / "unity")


def _guids(root: Path) -> dict[str, str]:
    """{path of the asset relative to root: GUID} for every .meta below root."""
    return {
        meta.relative_to(root).as_posix()[: -len(".meta")]: GUID.search(meta.read_text())[1]
        for meta in sorted(root.rglob("*.meta"))
    }


def _check_metas(assets_root: Path) -> dict[str, str]:
    """Every file/folder below assets_root has a .meta, no .meta is orphaned, GUIDs unique."""
    guids = _guids(assets_root)
    assets = {
        p.relative_to(assets_root).as_posix()
        for p in assets_root.rglob("*")
        if not p.name.endswith(".meta")
    }
    assert assets == set(guids)
    assert len(set(guids.values())) == len(guids)
    return guids


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, normals, triangles) of a vemviz OBJ, as written (right-handed)."""
    v, vn, f = [], [], []
    for line in path.read_text().splitlines():
        kind, *rest = line.split() or [""]
        if kind == "v":
            v.append([float(x) for x in rest])
        elif kind == "vn":
            vn.append([float(x) for x in rest])
        elif kind == "f":
            f.append([int(c.split("/")[0]) - 1 for c in rest])
    return np.array(v), np.array(vn), np.array(f)


def _unity_import(positions: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What Unity's OBJ importer does: negate X and reverse the winding."""
    return positions * [-1.0, 1.0, 1.0], triangles[:, [0, 2, 1]]


def _unity_to_volume(points: np.ndarray) -> np.ndarray:
    """Documented convention: Unity-local (X, Y, Z) = volume (-x, z, -y)."""
    return np.column_stack([-points[:, 0], -points[:, 2], points[:, 1]])


def _signed_volume(points: np.ndarray, triangles: np.ndarray) -> float:
    a, b, c = (points[triangles[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


# --- export ---------------------------------------------------------------------------------


def test_export_creates_project_and_dataset(dataset: Path, mesh_dir: Path) -> None:
    project = dataset.parents[3]
    assert dataset == project / "Assets" / "VemViz" / "Datasets" / "cells"
    assert (project / "ProjectSettings" / "ProjectVersion.txt").is_file()
    assert (project / "Assets" / "VemViz" / "Scenes" / "VemViewer.unity").is_file()
    names = {p.name for p in dataset.iterdir() if not p.name.endswith(".meta")}
    assert names == {
        "manifest.json", "scene.glb", "dataset.json",
        "label_00001.glb", "label_00001.obj", "label_00001.mtl",
        "label_00002.glb", "label_00002.obj", "label_00002.mtl",
    }  # fmt: skip
    assert (dataset / "manifest.json").read_bytes() == (mesh_dir / "manifest.json").read_bytes()
    info = json.loads((dataset / "dataset.json").read_text())
    assert [o["obj"] for o in info["objects"]] == ["label_00001.obj", "label_00002.obj"]
    assert info["volume"] == ""
    guids = _check_metas(project / "Assets")
    assert (project / "Assets" / "VemViz" / "Datasets" / "cells.meta").is_file()
    assert "VemViz/Datasets/cells/label_00001.obj" in guids
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]


def test_guids_are_stable_and_reexport_replaces(mesh_dir: Path, tmp_path: Path) -> None:
    first = export_unity(mesh_dir, tmp_path / "a", name="cells")
    other = export_unity(mesh_dir, tmp_path / "b", name="cells")
    before = _guids(first.parent)
    assert before == _guids(other.parent)
    (first / "stale.txt").write_text("left from an older export")
    again = export_unity(mesh_dir, tmp_path / "a", name="cells")
    assert again == first
    assert not (first / "stale.txt").exists()
    assert _guids(first.parent) == before
    assert sorted(p.name for p in first.parent.iterdir()) == ["cells", "cells.meta"]


def test_failed_reexport_leaves_old_dataset(
    mesh_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = export_unity(mesh_dir, tmp_path / "unity")
    snapshot = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    calls = []

    def fail_on_second(*args: object, **kwargs: object) -> tuple[int, int]:
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return unity_bridge.obj.write_obj_and_mtl(*args, **kwargs)

    monkeypatch.setattr(unity_bridge.export, "write_obj_and_mtl", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        export_unity(mesh_dir, tmp_path / "unity")
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == snapshot
    assert sorted(p.name for p in target.parent.iterdir()) == ["cells", "cells.meta"]


def test_obj_counts_match_manifest(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    for entry in manifest["objects"]:
        positions, normals, triangles = _read_obj(dataset / entry["file"].replace(".glb", ".obj"))
        assert (len(positions), len(triangles)) == (entry["vertices"], entry["faces"])
        assert len(normals) == len(positions)
        mtl = (dataset / entry["file"].replace(".glb", ".mtl")).read_text()
        r, g, b = (int(entry["color"][i : i + 2], 16) / 255 for i in (1, 3, 5))
        assert f"Kd {r:.6f} {g:.6f} {b:.6f}" in mtl


def test_unity_import_is_a_rotation_not_a_mirror(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    positions, normals, triangles = _read_obj(dataset / "label_00001.obj")
    unity, unity_triangles = _unity_import(positions, triangles)
    volume_points = _unity_to_volume(unity)
    # The corner sits at the low end of every axis; each arm points along + that axis.
    corner = np.array([4, 4, 2]) * np.array(VOXEL_NM[::-1]) / 1000
    arm_tips = volume_points.max(axis=0) - corner
    assert np.all(volume_points.min(axis=0) > corner - 0.05)
    assert np.allclose(
        arm_tips, np.array([30, 20, 10]) * np.array(VOXEL_NM[::-1]) / 1000, atol=0.05
    )
    assert np.allclose(volume_points.min(axis=0), manifest["objects"][0]["bbox_min"], atol=1e-5)
    # The volume -> Unity map is a rotation between a right- and a left-handed frame (det -1).
    to_unity = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]])
    assert np.allclose(_unity_to_volume(volume_points @ to_unity.T), volume_points)
    assert np.linalg.det(to_unity) == pytest.approx(-1)
    # Not inside-out: outward normals in the file (CCW) and after import (Unity's clockwise).
    assert _signed_volume(positions, triangles) > 0
    assert _signed_volume(unity, unity_triangles) > 0
    a, b, c = (unity[unity_triangles[:, i]] for i in range(3))
    face_normals = np.cross(b - a, c - a)
    corner_normals = normals[unity_triangles[:, 0]] * [-1.0, 1.0, 1.0]
    assert np.mean(np.einsum("ij,ij->i", face_normals, corner_normals) > 0) > 0.95


def test_volume_texture_maps_onto_mesh_coordinates(mesh_dir: Path, tmp_path: Path) -> None:
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    intensity = (xx + 2 * yy + 4 * zz).astype(np.uint8)  # linear, so block means stay exact
    volume = Volume(intensity, VOXEL_NM)
    target = export_unity(
        mesh_dir, tmp_path / "unity", volume=volume, max_volume_voxels=intensity.size // 4
    )
    header = json.loads((target / "volume.json").read_text())
    shape = tuple(header["shapeZYX"])
    assert header["downsampleFactor"] == 2 and shape == (7, 20, 20)
    voxels = np.frombuffer((target / "volume.bytes").read_bytes(), np.uint8).reshape(shape)
    assert json.loads((target / "dataset.json").read_text())["volume"] == "volume.json"
    positions, _, triangles = _read_obj(target / "label_00001.obj")
    unity, _ = _unity_import(positions, triangles)
    uvw = (np.array(header["localToUvw"]).reshape(4, 4) @ np.c_[unity, np.ones(len(unity))].T)[:3]
    texel = uvw.T[:, ::-1] * shape - 0.5  # (z, y, x) texel coordinates, centres at integers
    inside = np.all((texel >= 0) & (texel <= np.array(shape) - 1), axis=1)
    assert inside.sum() > 50
    sampled = ndi.map_coordinates(voxels.astype(float), texel[inside].T, order=1)
    x, y, z = (_unity_to_volume(unity[inside]) * 1000 / np.array(VOXEL_NM[::-1])).T
    assert np.allclose(sampled, x + 2 * y + 4 * z, atol=0.6)


def test_volume_of_another_shape_is_rejected(mesh_dir: Path, tmp_path: Path) -> None:
    volume = Volume(np.zeros((5, 6, 7), np.uint16), VOXEL_NM)
    with pytest.raises(VemvizError, match="shape"):
        export_unity(mesh_dir, tmp_path / "unity", volume=volume)
    assert not (tmp_path / "unity" / "Assets" / "VemViz" / "Datasets" / "cells").exists()


def _broken_copy(mesh_dir: Path, tmp_path: Path, how: str) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(mesh_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    if how == "no manifest":
        (broken / "manifest.json").unlink()
    elif how == "schema":
        manifest["schema_version"] = 99
    elif how == "missing glb":
        (broken / "label_00002.glb").unlink()
    elif how == "units":
        manifest["units"] = "furlong"
    if how in ("schema", "units"):
        (broken / "manifest.json").write_text(json.dumps(manifest))
    return broken


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no manifest", "manifest.json is missing"),
        ("schema", "schema_version 99"),
        ("missing glb", "label_00002.glb"),
        ("units", "furlong"),
    ],
)
def test_bad_mesh_folders_are_rejected(
    mesh_dir: Path, tmp_path: Path, how: str, message: str
) -> None:
    with pytest.raises(VemvizError, match=message) as error:
        export_unity(_broken_copy(mesh_dir, tmp_path, how), tmp_path / "unity")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "unity").exists()


def test_bad_name_and_non_project_folder_are_rejected(mesh_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(VemvizError, match="dataset name"):
        export_unity(mesh_dir, tmp_path / "unity", name="../escape")
    (tmp_path / "documents" / "notes.txt").parent.mkdir()
    (tmp_path / "documents" / "notes.txt").write_text("mine")
    with pytest.raises(VemvizError, match="not a Unity project"):
        export_unity(mesh_dir, tmp_path / "documents")
    assert sorted(p.name for p in (tmp_path / "documents").iterdir()) == ["notes.txt"]


# --- template project -----------------------------------------------------------------------


def test_template_settings_and_packages() -> None:
    version = (TEMPLATE / "ProjectSettings" / "ProjectVersion.txt").read_text()
    assert re.search(r"m_EditorVersion: 2022\.3\.\d+f\d+", version)
    packages = json.loads((TEMPLATE / "Packages" / "manifest.json").read_text())
    assert set(packages) == {"dependencies"}  # no scoped (non-Unity) registries
    assert all(name.startswith("com.unity.") for name in packages["dependencies"])
    settings = (TEMPLATE / "ProjectSettings" / "ProjectSettings.asset").read_text()
    assert "activeInputHandler: 0" in settings  # the scripts use UnityEngine.Input


def _unity_documents(path: Path) -> dict[int, tuple[str, dict]]:
    """{fileID: (type name, body)} of a Unity YAML file (scene, prefab, material)."""
    yaml = pytest.importorskip("yaml")
    text = path.read_text()
    headers = list(re.finditer(r"^--- !u!(\d+) &(\d+)\n", text, re.M))
    documents = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        body = yaml.safe_load(text[header.end() : following.start() if following else None])
        ((kind, fields),) = body.items()
        documents[int(header[2])] = (kind, fields)
    return documents


def _public_fields(script: Path) -> set[str]:
    return set(
        re.findall(r"public\s+(?!static|const)[\w<>\[\]]+\s+(\w+)\s*[=;]", script.read_text())
    )


def test_template_metas_and_references() -> None:
    guids = _check_metas(TEMPLATE / "Assets")
    by_guid = {guid: path for path, guid in guids.items()}
    unity_files = [
        p
        for ext in ("unity", "prefab", "mat", "asset")
        for p in (TEMPLATE / "Assets").rglob(f"*.{ext}")
    ]
    assert unity_files
    for path in unity_files:
        for guid in set(GUID.findall(path.read_text())) - BUILTIN_GUIDS:
            assert guid in by_guid, f"{path.name} refers to unknown GUID {guid}"


def test_scene_is_wired() -> None:
    scene = TEMPLATE / "Assets" / "VemViz" / "Scenes" / "VemViewer.unity"
    documents = _unity_documents(scene)
    by_guid = {guid: path for path, guid in _guids(TEMPLATE).items()}
    referenced = {int(i) for i in re.findall(r"\{fileID: (\d+)\}", scene.read_text())}
    assert referenced - {0} <= set(documents)
    names = {fields["m_Name"] for kind, fields in documents.values() if kind == "GameObject"}
    assert names == {"Main Camera", "Head Light", "Slicing Plane", "Dataset Loader", "UI Legend"}
    scripts = set()
    for kind, fields in documents.values():
        if kind != "MonoBehaviour":
            continue
        script = TEMPLATE / by_guid[fields["m_Script"]["guid"]]
        assert script.suffix == ".cs" and script.is_file()
        scripts.add(script.stem)
        custom = {key for key in fields if not key.startswith("m_")}
        assert custom <= _public_fields(script), script.name
    assert scripts == {
        "OrbitCamera",
        "ScreenshotKey",
        "SlicingPlane",
        "VemDatasetLoader",
        "VemLegend",
    }
    shaders = {by_guid[g] for g in GUID.findall(scene.read_text()) if g not in BUILTIN_GUIDS}
    assert "Assets/VemViz/Shaders/CrossSection.shader" in shaders


# --- C# -------------------------------------------------------------------------------------


def _mcs() -> str:
    mcs = shutil.which("mcs")
    if mcs is None:
        pytest.skip("mcs (C# compiler) not found: apt-get install -y mono-mcs")
    return mcs


def _compile(
    out: Path, sources: list[Path], references: list[Path], target: str = "library"
) -> Path:
    command = [_mcs(), "-nologo", "-warnaserror", f"-target:{target}", f"-out:{out}"]
    command += [f"-r:{r}" for r in references] + [str(s) for s in sources]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_csharp_compiles_against_unity_stubs(tmp_path: Path) -> None:
    engine = _compile(tmp_path / "UnityEngine.dll", [STUBS / "UnityEngine.cs"], [])
    editor_api = _compile(tmp_path / "UnityEditor.dll", [STUBS / "UnityEditor.cs"], [engine])
    runtime = _compile(tmp_path / "VemViz.dll", sorted(SCRIPTS.glob("*.cs")), [engine])
    _compile(
        tmp_path / "VemVizEditor.dll", sorted(EDITOR.glob("*.cs")), [engine, editor_api, runtime]
    )


DRIVER = """
using System.Globalization;
using System.IO;
using VemViz;
public static class Driver
{
    public static void Main(string[] args)
    {
        ObjData data = ObjParser.Parse(File.ReadAllText(args[0]));
        var inv = CultureInfo.InvariantCulture;
        var t = data.triangles;
        using (var w = new StreamWriter(args[1]))
        {
            foreach (var p in data.positions)
                w.WriteLine(string.Format(inv, "{0:R} {1:R} {2:R}", p.x, p.y, p.z));
            for (int i = 0; i < t.Count; i += 3)
                w.WriteLine("f {0} {1} {2}", t[i], t[i + 1], t[i + 2]);
        }
    }
}
"""


def test_runtime_obj_parser_matches_unity_import(dataset: Path, tmp_path: Path) -> None:
    mono = shutil.which("mono")
    if mono is None:
        pytest.skip("mono not found: apt-get install -y mono-mcs")
    (tmp_path / "Driver.cs").write_text(DRIVER)
    sources = [STUBS / "UnityEngine.cs", SCRIPTS / "ObjParser.cs", tmp_path / "Driver.cs"]
    exe = _compile(tmp_path / "driver.exe", sources, [], target="exe")
    subprocess.run(
        [mono, str(exe), str(dataset / "label_00001.obj"), str(tmp_path / "out.txt")],
        check=True,
        timeout=120,
    )
    lines = (tmp_path / "out.txt").read_text().splitlines()
    parsed = np.array([[float(v) for v in line.split()] for line in lines if line[0] != "f"])
    parsed_triangles = np.array(
        [[int(v) for v in line.split()[1:]] for line in lines if line[0] == "f"]
    )
    positions, _, triangles = _read_obj(dataset / "label_00001.obj")
    unity, unity_triangles = _unity_import(positions, triangles)
    assert np.allclose(parsed, unity, atol=1e-5)
    assert np.array_equal(parsed_triangles, unity_triangles)


# --- glTF validation ------------------------------------------------------------------------

VALIDATE = """
const validator = require(process.argv[1]);
const fs = require('fs');
(async () => {
  let errors = 0;
  for (const file of process.argv.slice(2)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)));
    console.log(file + ': ' + report.issues.numErrors + ' errors');
    errors += report.issues.numErrors;
  }
  process.exit(errors ? 1 : 0);
})();
"""


def test_glbs_pass_gltf_validator(dataset: Path) -> None:
    node = shutil.which("node")
    if node is None or not VALIDATOR.is_dir():
        pytest.skip("gltf-validator not installed: npm install --prefix tests/.node gltf-validator")
    files = sorted(str(p) for p in dataset.glob("*.glb"))
    result = subprocess.run(
        [node, "-e", VALIDATE, str(VALIDATOR), *files], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": 0 errors") == len(files) == 3


def test_guid_is_md5_of_dataset_path(dataset: Path) -> None:
    meta = (dataset / "label_00001.obj.meta").read_text()
    expected = hashlib.md5(b"vemviz:dataset/cells/label_00001.obj").hexdigest()
    assert meta == f"fileFormatVersion: 2\nguid: {expected}\n"
