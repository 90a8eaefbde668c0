"""The CLI contract: every command has --help, fails on bad input with one line and status 2,
and leaves no partial output."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from vemviz import Volume, read_volume, write_volume
from vemviz.cli import build_parser, main

COMMANDS = ["info", "stitch", "align", "inpaint", "iso", "sr", "segment", "mesh", "render",
            "export-unity", "run", "demo"]  # fmt: skip


def test_every_contract_command_exists_with_help(capsys):
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(COMMANDS) <= set(choices)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: vemviz " + command in capsys.readouterr().out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "vemviz", "--version"], capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert result.stdout.startswith("vemviz ")


@pytest.fixture()
def corrupt(tmp_path):
    path = tmp_path / "corrupt.tif"
    path.write_bytes(b"II*\x00" + os.urandom(300))
    return path


def _fails_cleanly(capsys, argv, match, out=None):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vemviz: error: "), err
    assert match in err[0]
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{c}"],
        ["align", "{c}", "--out", "{o}.tif"],
        ["inpaint", "{c}", "--out", "{o}.tif", "--detect"],
        ["iso", "{c}", "--out", "{o}.tif", "--factor", "2"],
        ["sr", "{c}", "--out", "{o}.tif", "--scale", "2"],
        ["segment", "{c}", "--out", "{o}.tif", "--target", "mito"],
        ["mesh", "{c}", "--out", "{o}"],
        ["demo", "--out", "{o}", "--data", "{c}", "--no-render"],
    ],
)
def test_corrupt_tiff_fails_cleanly(capsys, tmp_path, corrupt, argv):
    out = tmp_path / "out"
    argv = [a.format(c=corrupt, o=out) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vemviz: error: cannot read TIFF")
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir() if p.name != "out")
    assert not (tmp_path / "out.tif").exists()


def test_other_bad_inputs(capsys, tmp_path, corrupt):
    _fails_cleanly(capsys, ["stitch", str(tmp_path / "none"), "--out", str(tmp_path / "p.tif")],
                   "does not exist")  # fmt: skip
    _fails_cleanly(capsys, ["render", str(tmp_path), "--out", str(tmp_path / "r.png")],
                   "manifest.json is missing", tmp_path / "r.png")  # fmt: skip
    _fails_cleanly(capsys, ["export-unity", str(tmp_path), "--project", str(tmp_path / "u")],
                   "manifest.json is missing", tmp_path / "u")  # fmt: skip
    bad_toml = tmp_path / "p.toml"
    bad_toml.write_text("input = [unclosed")
    _fails_cleanly(capsys, ["run", str(bad_toml)], "not valid TOML")
    labels = tmp_path / "empty.tif"
    write_volume(Volume(np.zeros((3, 8, 8), np.uint16), (10, 10, 10)), labels)
    _fails_cleanly(capsys, ["mesh", str(labels), "--out", str(tmp_path / "m")], "empty",
                   tmp_path / "m")  # fmt: skip
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((4, 16, 16), np.uint8))
    _fails_cleanly(capsys, ["iso", str(flat), "--out", str(tmp_path / "i.tif"), "--factor", "2"],
                   "--voxel-size", tmp_path / "i.tif")  # fmt: skip
    two_d = tmp_path / "two.npy"
    np.save(two_d, np.zeros((2, 2, 2, 2), np.uint8))
    _fails_cleanly(capsys, ["info", str(two_d)], "3D")


def test_iso_contract_and_voxel_size_override(tmp_path, capsys):
    stack = np.random.default_rng(0).integers(0, 255, (5, 24, 24), dtype=np.uint8)
    source = tmp_path / "s.npy"
    np.save(source, stack)
    out = tmp_path / "iso.ome.zarr"
    report = tmp_path / "iso.json"
    argv = ["iso", str(source), "--out", str(out), "--factor", "3", "--method", "linear",
            "--voxel-size", "30,10,10", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    result = read_volume(out)
    assert result.shape == ((5 - 1) * 3 + 1, 24, 24)
    np.testing.assert_array_equal(result.numpy()[::3], stack)
    assert result.voxel_size_nm == pytest.approx((10.0, 10.0, 10.0))
    assert '"slices_out": 13' in report.read_text()


def test_iso_defaults_to_inr_and_without_torch_says_what_to_install(tmp_path, capsys, monkeypatch):
    import vemviz

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    for name in ("inr", "device"):  # imported afresh, without it
        monkeypatch.delitem(sys.modules, f"vemviz.{name}", raising=False)
        monkeypatch.delattr(vemviz, name, raising=False)
    source = write_volume(Volume(np.zeros((5, 24, 24), np.uint8), (30, 10, 10)), tmp_path / "s.tif")
    out = tmp_path / "iso.tif"
    _fails_cleanly(capsys, ["iso", str(source), "--out", str(out), "--factor", "3"],
                   "pip install 'vemviz[learn]'", out)  # fmt: skip
    assert main(["iso", str(source), "--out", str(out), "--factor", "3", "--method", "flow"]) == 0
    assert main(["sr", str(source), "--out", str(tmp_path / "sr.tif"), "--scale", "2"]) == 0


def test_info_prints_voxel_size(tmp_path, capsys):
    path = write_volume(Volume(np.ones((2, 4, 4), np.uint8), (40, 8, 8)), tmp_path / "a.tif")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "voxel_size_nm  [40.0, 8.0, 8.0]" in out and "shape_zyx      [2, 4, 4]" in out
