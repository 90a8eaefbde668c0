"""Learned segmentation: U-Net inference, instances, agglomeration, fine-tuning, shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from vemviz import VemvizError
from vemviz.cli import main
from vemviz.io import read_volume, write_volume
from vemviz.metrics import iou
from vemviz.segment import (
    agglomerate,
    cells_from_boundaries,
    intensity_range,
    mito_instances,
    predict_probabilities,
    prediction_box,
    read_prompts,
    select_by_prompts,
)
from vemviz.train import (
    Augmentation,
    TrainOptions,
    batch_loss,
    draw_batch,
    fine_tune,
    prepare_volume,
)
from vemviz.unet import WEIGHTS_DIR, ModelConfig, UNet, load_model, save_model, shipped_model

SMALL = {"base": 8, "levels": 3}


def _ball(shape, centre, radius):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inference_keeps_shapes_for_any_plane_size_and_anisotropy():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    mito = UNet(ModelConfig("mito", 8.0, **SMALL)).eval()
    image = rng.integers(0, 255, (3, 37, 53)).astype(np.uint8)
    prob = predict_probabilities(image, (40.0, 5.0, 11.0), mito, tile=32)
    assert prob.shape == image.shape and prob.dtype == np.float32
    assert prob.min() >= 0 and prob.max() <= 1
    cells = UNet(ModelConfig("cells", 10.0, context=3, **SMALL)).eval()
    iso = rng.integers(0, 255, (18, 21, 25)).astype(np.uint8)
    prob = predict_probabilities(iso, (10.0, 10.0, 10.0), cells)
    assert prob.shape == iso.shape
    # a blank slice gets no probability
    image[1] = 7
    assert predict_probabilities(image, (40.0, 5.0, 11.0), mito)[1].max() == 0


@pytest.mark.parametrize(
    ("voxel", "config", "shape"),
    [((40.0, 5.0, 11.0), ModelConfig("mito", 8.0, **SMALL), (5, 90, 70)),
     ((10.0, 10.0, 10.0), ModelConfig("cells", 10.0, context=3, **SMALL), (40, 60, 70))],
    ids=["xy-planes", "three-orientations-2.5d"],
)  # fmt: skip
def test_a_block_predicts_exactly_the_whole_volumes_values(voxel, config, shape):
    """Tiles on a grid anchored at the volume origin, each from its own window: a block read
    with its `prediction_box` gives the in-memory probabilities bit for bit."""
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    model = UNet(config).eval()
    image = rng.integers(0, 255, shape).astype(np.uint8)
    image[2] = 9  # a blank slice
    whole = predict_probabilities(image, voxel, model, tile=32)
    value_range = intensity_range(image)
    imaged = np.ones(shape[0], bool)
    imaged[2] = False
    area = (slice(1, 4), slice(13, 41), slice(30, 44)) if shape[0] < 10 else (
        slice(3, 15), slice(5, 19), slice(17, 30))  # fmt: skip
    read = prediction_box(area, voxel, shape, model, tile=32)
    assert any(r.start > 0 or r.stop < n for r, n in zip(read, shape, strict=True))
    block = predict_probabilities(
        image[read], voxel, model, tile=32, value_range=value_range, imaged=imaged,
        origin=tuple(r.start for r in read), volume_shape=shape, area=area,
    )  # fmt: skip
    np.testing.assert_array_equal(block, whole[area])
    assert whole[2].max() == 0 and block.max() > 0


def test_intensity_range_is_numpys_percentiles_for_integers_and_close_for_floats():
    rng = np.random.default_rng(2)
    image = rng.normal(120, 30, (200, 16, 16)).clip(0, 255).astype(np.uint8)
    chosen = image[::3]  # 200 imaged slices: every third
    assert intensity_range(image) == pytest.approx(np.percentile(chosen, [1, 99]), abs=1e-9)
    floats = image.astype(np.float32) / 7
    want = np.percentile(floats[::3], [1, 99])
    tolerance = float(floats.max() - floats.min()) / 2**15
    assert intensity_range(floats) == pytest.approx(want, abs=tolerance)


def test_touching_objects_become_separate_instances():
    shape = (12, 64, 96)
    spacing = (8.0, 8.0, 8.0)
    left, right = _ball(shape, (6, 32, 30), 20), _ball(shape, (6, 32, 64), 20)
    prob = np.where(left | right, 0.9, 0.05).astype(np.float32)
    assert np.count_nonzero(left & right) > 0  # they overlap, one connected blob
    labels = mito_instances(prob, spacing, min_volume_nm3=1e5)
    assert labels.max() == 2
    for ball in (left, right):
        ids, counts = np.unique(labels[ball & ~(left & right)], return_counts=True)
        assert counts.max() / counts.sum() > 0.95 and ids[counts.argmax()] > 0
    # a speck below the physical size threshold is dropped
    prob[0, 2:4, 2:4] = 0.9
    assert mito_instances(prob, spacing, min_volume_nm3=1e5).max() == 2


def test_an_elongated_object_stays_one_and_a_thin_one_is_left_out():
    """A 1 um long mitochondrion whose radius undulates (90-110 nm) has several distance maxima
    but no neck; a rod of 40 nm radius has no maximum deeper than half the separation."""
    spacing = (8.0, 8.0, 8.0)
    z, y, x = np.mgrid[:36, :64, :160].astype(float) * 8.0
    radius = 100.0 + 10.0 * np.sin(x / 60.0)
    capsule = ((z - 140) ** 2 + (y - 300) ** 2 < radius**2) & (x > 120) & (x < 1120)
    rod = ((z - 140) ** 2 + (y - 80) ** 2 < 40.0**2) & (x > 200) & (x < 1000)
    prob = np.where(capsule | rod, 0.9, 0.05).astype(np.float32)
    labels = mito_instances(prob, spacing, min_volume_nm3=1e5)
    assert labels.max() == 1 and (labels[capsule] == 1).all() and not labels[rod].any()


def test_cells_agglomerate_across_weak_boundaries_only():
    labels = np.zeros((4, 20, 30), np.uint32)
    labels[:, :, :10], labels[:, :, 10:20], labels[:, :, 20:] = 1, 2, 3
    boundary = np.zeros(labels.shape, np.float32)
    boundary[:, :, 9:11] = 0.2  # weak: 1 and 2 are one cell cut in two
    boundary[:, :, 19:21] = 0.9  # strong: a real membrane
    merged = agglomerate(labels, boundary, threshold=0.5)
    assert merged.max() == 2
    assert len(np.unique(merged[:, :, :20])) == 1 and merged[0, 0, 25] != merged[0, 0, 0]
    # from a boundary map alone: two cells split by a membrane sheet
    membrane = np.zeros((6, 40, 40), np.float32)
    membrane[:, :, 19:21] = 1.0
    cells = cells_from_boundaries(membrane, (10.0, 10.0, 10.0), min_volume_nm3=1e3)
    assert cells.max() == 2 and cells[0, 5, 5] != cells[0, 5, 35]


def test_prompts_pick_learned_instances_through_z(tmp_path):
    labels = np.zeros((5, 30, 30), np.uint32)
    labels[:, 2:10, 2:10] = 1
    labels[1:4, 15:25, 15:25] = 2
    box = {"z": 2, "y0": 12, "x0": 12, "y1": 28, "x1": 28}
    picked = select_by_prompts(labels, {"boxes": [box]})
    assert picked.max() == 1 and np.array_equal(picked > 0, labels == 2)
    both = {"points": [{"z": 0, "y": 5, "x": 5}], "boxes": [box]}
    assert select_by_prompts(labels, both).max() == 2
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"points": [{"z": 4, "y": 5, "x": 5, "positive": True}]}))
    assert np.array_equal(select_by_prompts(labels, read_prompts(path)) > 0, labels == 1)
    path.write_text(json.dumps({"points": []}))
    with pytest.raises(VemvizError, match="no prompts"):
        read_prompts(path)
    with pytest.raises(VemvizError, match="outside"):
        select_by_prompts(labels, {"points": [{"z": 9, "y": 0, "x": 0}]})


def test_fine_tuning_a_few_steps_lowers_the_loss(tmp_path, phantom):
    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    save_model(UNet(ModelConfig("mito", 8.0, **SMALL)), base, {})
    image, labels = phantom.raw.numpy(), phantom.mito.numpy()
    voxel = phantom.raw.voxel_size_nm
    model = load_model(base)
    volume = prepare_volume(image, labels, voxel, model.config)
    x, y = draw_batch([volume], np.random.default_rng(1), 8, 64, 1, Augmentation())
    before = batch_loss(model, x, y)
    options = TrainOptions(seconds=60, max_steps=25, batch=8, patch=64, lr=3e-3)
    record = fine_tune(image, labels, voxel, "mito", tmp_path / "tuned.pt", base_model=base,
                       options=options, device="cpu")  # fmt: skip
    assert record["steps"] == 25
    after = batch_loss(load_model(tmp_path / "tuned.pt"), x, y)
    assert after < 0.9 * before
    with pytest.raises(VemvizError, match="not a cells model"):
        fine_tune(image, labels, voxel, "cells", tmp_path / "x.pt", base_model=base)


def test_cell_targets_of_a_thick_section_stack_are_its_in_plane_boundaries():
    """Serial sections are labelled section by section (the VNC's cells are the regions inside
    each slice's membranes): ids that change from slice to slice are not boundaries."""
    labels = np.zeros((4, 32, 32), np.int32)
    for z in range(4):
        labels[z, :, :16], labels[z, :, 16:] = 2 * z + 1, 2 * z + 2  # new ids in every slice
    config = ModelConfig(target="cells", pixel_nm=5.0, context=1, base=8, levels=2)
    image = np.random.default_rng(0).integers(0, 255, labels.shape).astype(np.uint8)
    target = prepare_volume(image, labels, (50.0, 5.0, 5.0), config).target
    assert target[:, :, 15:17].min() == 1 and target[:, :, :14].max() == 0
    assert target[:, :, 18:].max() == 0


def test_bad_input_and_empty_prediction_write_nothing(tmp_path, phantom, capsys):
    model = UNet(ModelConfig("mito", 8.0, **SMALL)).eval()
    with pytest.raises(VemvizError, match="needs a \\(z, y, x\\) volume"):
        predict_probabilities(np.zeros((32, 32), np.uint8), (5.0, 5.0, 5.0), model)
    with pytest.raises(VemvizError, match="blank"):
        predict_probabilities(np.zeros((2, 32, 32), np.uint8), (5.0, 5.0, 5.0), model)
    # a real model whose output layer says "background" everywhere
    with torch.no_grad():
        model.head.bias.fill_(-30.0)
    silent = tmp_path / "silent.pt"
    save_model(model, silent, {})
    raw = tmp_path / "raw.tif"
    write_volume(phantom.raw, raw)
    out, prob = tmp_path / "labels.tif", tmp_path / "prob.tif"
    argv = ["segment", str(raw), "--out", str(out), "--target", "mito", "--model", str(silent),
            "--probabilities", str(prob)]  # fmt: skip
    assert main(argv) == 2
    assert "found no mito objects" in capsys.readouterr().err
    assert not out.exists() and not prob.exists()
    assert main([*argv[:5], "cells", *argv[6:]]) == 2
    assert "not a cells one" in capsys.readouterr().err
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((40, 40), np.uint8))
    assert main(["segment", str(flat), "--out", str(out), "--target", "mito"]) == 2
    assert not out.exists()


def test_shipped_weights_load_offline_and_are_small():
    for target, context in (("mito", 1), ("cells", 3)):
        path = shipped_model(target)
        assert path.parent == WEIGHTS_DIR and path.stat().st_size < 4e6
        model = load_model(path)
        assert model.config.target == target and model.config.context == context
        assert model.training_info["steps"] > 0
        assert json.loads(path.with_suffix(".json").read_text())["config"]["model"]["target"] == (
            target
        )


def test_cli_learned_mito_on_the_phantom_with_probabilities(tmp_path, phantom):
    raw = tmp_path / "raw.tif"
    write_volume(phantom.raw, raw)
    out, prob, report = tmp_path / "mito.tif", tmp_path / "prob.tif", tmp_path / "r.json"
    assert main(["segment", str(raw), "--out", str(out), "--target", "mito",
                 "--probabilities", str(prob), "--report", str(report)]) == 0  # fmt: skip
    labels = read_volume(out).numpy()
    probability = read_volume(prob).numpy()
    assert probability.shape == labels.shape and probability.dtype == np.float32
    figures = json.loads(report.read_text())
    assert figures["method"] == "learned" and figures["objects"] == labels.max() > 0
    assert 0 <= figures["uncertain_fraction"] < 0.2
    assert iou(phantom.mito.numpy(), labels) > 0.4


@pytest.mark.realdata
def test_shipped_mito_model_on_held_out_epfl_crop(shared_data):
    with tifffile.TiffFile(shared_data / "epfl_slices" / "raw.tif") as tif:
        raw = tif.asarray()[2:3, 200:456, 300:556]
    truth = tifffile.imread(shared_data / "epfl_slices" / "mito_mask.tif")[2:3, 200:456, 300:556]
    prob = predict_probabilities(raw, (5.0, 5.0, 5.0), load_model(shipped_model("mito")))
    assert iou(truth, prob > 0.5) > 0.7


def test_cli_train_seg_then_segment_with_the_tuned_model(tmp_path, phantom):
    raw, labels = tmp_path / "raw.tif", tmp_path / "mito.tif"
    write_volume(phantom.raw, raw)
    write_volume(phantom.mito, labels)
    model, report = tmp_path / "tuned.pt", tmp_path / "train.json"
    assert main(["train-seg", str(raw), str(labels), "--target", "mito", "--out", str(model),
                 "--steps", "2", "--device", "cpu", "--report", str(report)]) == 0  # fmt: skip
    record = json.loads(report.read_text())
    assert record["steps"] == 2 and record["fine_tuned_from"] == "shipped mito"
    assert load_model(model).training_info["options"]["patch"] == 128  # clipped to the slices
    out = tmp_path / "seg.tif"
    argv = ["segment", str(raw), "--out", str(out), "--target", "mito", "--model", str(model)]
    assert main(argv) == 0 and read_volume(out).numpy().max() > 0
