"""Classical segmentation on the phantom, prompts, and meshing in physical units."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from vemviz import VemvizError
from vemviz.manifest import read_manifest
from vemviz.mesh import MeshOptions, label_color, mesh_labels
from vemviz.metrics import instance_scores, iou
from vemviz.segment import segment, select_by_prompts


def test_mito_segmentation_finds_the_phantom_mitochondria(phantom):
    labels, report = segment(phantom.raw.numpy(), phantom.raw.voxel_size_nm, "mito")
    truth = phantom.mito.numpy()
    assert labels.dtype == np.uint32
    assert iou(truth, labels) > 0.5
    # every true mitochondrion is mostly covered by a predicted object
    for label in range(1, truth.max() + 1):
        assert np.mean(labels[truth == label] > 0) > 0.6


def test_cell_segmentation_beats_one_label_and_is_dense(phantom):
    labels, _ = segment(phantom.raw.numpy(), phantom.raw.voxel_size_nm, "cells")
    truth = phantom.cells.numpy()
    scores = instance_scores(truth, labels)
    baseline = instance_scores(truth, np.ones_like(truth))
    assert scores["vi"] < 0.5 * baseline["vi"]
    assert scores["adapted_rand_error"] < 0.3
    assert np.all(labels > 0)


def test_prompts_select_objects(phantom):
    truth = phantom.mito.numpy()
    z, y, x = (int(v) for v in np.argwhere(truth == 1)[len(np.argwhere(truth == 1)) // 2])
    picked = select_by_prompts(truth, {"points": [{"z": z, "y": y, "x": x, "positive": True}]})
    assert picked.max() == 1 and np.array_equal(picked > 0, truth == 1)
    with pytest.raises(VemvizError, match="select no object"):
        select_by_prompts(truth, {"points": [{"z": z, "y": y, "x": x, "positive": False}]})


def _ellipsoid(shape, centre, radii, spacing):
    grids = np.meshgrid(*[np.arange(s) * v for s, v in zip(shape, spacing, strict=True)],
                        indexing="ij")  # fmt: skip
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1


def test_mesh_is_closed_in_physical_units_with_anisotropy(tmp_path):
    spacing = (40.0, 8.0, 8.0)
    labels = np.zeros((20, 80, 80), np.uint16)
    labels[_ellipsoid(labels.shape, (380, 300, 320), (240, 200, 120), spacing)] = 7
    labels[_ellipsoid(labels.shape, (380, 320, 520), (200, 100, 60), spacing)] = 3
    manifest = mesh_labels(labels, spacing, tmp_path / "m", options=MeshOptions(units="nm"))
    assert read_manifest(tmp_path / "m") == manifest
    by_label = {o["label"]: o for o in manifest["objects"]}
    assert sorted(by_label) == [3, 7]
    big = by_label[7]
    assert big["watertight"]
    analytic = 4 / 3 * np.pi * 240 * 200 * 120
    assert big["volume"] == pytest.approx(analytic, rel=0.08)
    # bbox in volume (x, y, z) order, nm: x extent 2*120, z extent 2*240
    size = np.subtract(big["bbox_max"], big["bbox_min"])
    assert size == pytest.approx([240, 400, 480], rel=0.12)
    assert big["color"] == label_color(7) != label_color(3)
    # the GLB is in glTF's y-up frame: (X, Y, Z) = (x, z, -y)
    glb = trimesh.load(tmp_path / "m" / big["file"], force="mesh")
    centre = glb.bounds.mean(axis=0)
    assert centre == pytest.approx([320, 380, -300], abs=15)
    assert glb.volume > 0  # outward normals


def test_mesh_rejects_empty_and_float_labels(tmp_path):
    with pytest.raises(VemvizError, match="empty"):
        mesh_labels(np.zeros((4, 8, 8), np.uint8), (1, 1, 1), tmp_path / "e")
    with pytest.raises(VemvizError, match="integer"):
        mesh_labels(np.ones((4, 8, 8), np.float32), (1, 1, 1), tmp_path / "f")
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


def test_manifest_problems_are_reported(tmp_path):
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[2:5, 5:15, 5:15] = 1
    folder = tmp_path / "m"
    mesh_labels(labels, (10, 10, 10), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / manifest["objects"][0]["file"]).unlink()
    with pytest.raises(VemvizError, match="missing"):
        read_manifest(folder)
    manifest["schema_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VemvizError, match="schema_version"):
        read_manifest(folder)
