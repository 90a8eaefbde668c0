"""Pipelines keep provenance and skip unchanged stages; the demo runs the whole chain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import vemviz
from vemviz import VemvizError, write_volume
from vemviz.demo import run_demo
from vemviz.phantom import make_phantom
from vemviz.pipeline import code_fingerprint, load_pipeline, run_pipeline

PIPELINE = """
input = "raw.tif"
workspace = "ws"

[[stages]]
stage = "inpaint"
slices = [4]
method = "linear"

[[stages]]
stage = "iso"
factor = {factor}
method = "linear"

[[stages]]
stage = "segment"
target = "mito"

[[stages]]
stage = "mesh"
"""


def _write(tmp_path, factor):
    (tmp_path / "p.toml").write_text(PIPELINE.format(factor=factor))
    return load_pipeline(tmp_path / "p.toml")


def test_second_run_skips_and_option_change_reruns_downstream(tmp_path):
    phantom = make_phantom((10, 96, 96), (40.0, 8.0, 8.0), damaged_slices=(4,))
    write_volume(phantom.raw, tmp_path / "raw.tif")
    first = run_pipeline(*_write(tmp_path, 2))
    assert [r.skipped for r in first] == [False] * 4
    record = json.loads((tmp_path / "ws" / "02-iso.json").read_text())
    assert record["options"] == {"factor": 2, "method": "linear"}
    assert (
        record["input_hash"]
        == json.loads((tmp_path / "ws" / "01-inpaint.json").read_text())["output_hash"]
    )
    assert record["vemviz_version"] and record["report"]["slices_out"] == 19
    assert record["vemviz_code"] == code_fingerprint()
    second = run_pipeline(*_write(tmp_path, 2))
    assert [r.skipped for r in second] == [True] * 4
    third = run_pipeline(*_write(tmp_path, 3))
    assert [r.skipped for r in third] == [True, False, False, False]
    assert third[1].report["slices_out"] == 28
    manifest = json.loads((tmp_path / "ws" / "04-mesh" / "manifest.json").read_text())
    assert manifest["voxel_size_nm"] == pytest.approx([40 / 3, 8, 8])


def test_code_fingerprint_follows_the_code_not_its_caches(tmp_path):
    package = tmp_path / "vemviz"
    shutil.copytree(Path(vemviz.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "weights"))  # fmt: skip
    before = code_fingerprint([package])
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "iso.cpython-311.pyc").write_bytes(b"compiled")
    assert code_fingerprint([package]) == before
    (package / "iso.py").write_text((package / "iso.py").read_text() + "# changed\n")
    assert code_fingerprint([package]) != before


def test_pipeline_rejects_unknown_stage_and_option(tmp_path):
    write_volume(make_phantom((4, 32, 32)).raw, tmp_path / "raw.tif")
    with pytest.raises(VemvizError, match="known stages"):
        run_pipeline({"input": "raw.tif", "stages": [{"stage": "blur"}]}, tmp_path)
    with pytest.raises(VemvizError, match="unknown option"):
        run_pipeline({"input": "raw.tif", "stages": [{"stage": "iso", "fctor": 2}]}, tmp_path)


def test_demo_without_render_scores_every_stage(tmp_path):
    report = run_demo(tmp_path, render=False)
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["inpaint", "iso", "segment", "mesh", "export-unity"]
    assert stages["inpaint"]["report"]["filled"] == [11]  # the blank slice was detected
    assert "dB vs truth" in stages["inpaint"]["figure"]
    iou = float(stages["segment"]["figure"].rsplit("IoU ", 1)[1])
    assert iou > 0.35
    manifest = json.loads((tmp_path / "meshes" / "manifest.json").read_text())
    assert len(manifest["objects"]) == stages["segment"]["report"]["objects"]
    dataset = tmp_path / "unity" / "Assets" / "VemViz" / "Datasets" / "demo"
    assert (dataset / "manifest.json").exists() and (dataset / "volume.bytes").exists()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["stages"][0]["figure"] == stages["inpaint"]["figure"]
    assert np.isfinite(report["total_seconds"])
