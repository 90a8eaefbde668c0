"""Targeted re-imaging: tile ranking, budgets, time model, registration and seam-free merging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy.stats import spearmanr

from vemviz import Volume, read_volume, reimage, write_volume
from vemviz.cli import main
from vemviz.errors import VemvizError
from vemviz.metrics import psnr


def half_textured(z: int = 2, size: int = 128, seed: int = 0) -> np.ndarray:
    """Flat grey on the left half, fine random texture on the right half."""
    rng = np.random.default_rng(seed)
    stack = np.full((z, size, size), 120.0)
    texture = rng.normal(0, 40, (z, size, size // 2))
    stack[:, :, size // 2 :] += texture
    return np.clip(stack, 0, 255).astype(np.uint8)


def test_area_downsample_means_blocks_and_rejects_bad_input():
    stack = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    low = reimage.area_downsample(stack, 4)
    assert low.shape == (2, 2, 2)
    assert low[0, 0, 0] == pytest.approx(stack[0, :4, :4].mean())
    with pytest.raises(VemvizError, match="integer"):
        reimage.area_downsample(stack, 2.5)
    with pytest.raises(VemvizError, match="3D"):
        reimage.area_downsample(stack[0], 2)


def test_tile_boxes_cover_the_slice_once():
    boxes = reimage.tile_boxes(100, 70, 32)
    cover = np.zeros((100, 70), int)
    for y0, y1, x0, x1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()


def test_select_tiles_respects_budget_and_order():
    priority = np.array([[0.1, 5.0, 0.2, 0.3], [4.0, 0.0, 3.0, 0.4]])
    assert reimage.select_tiles(priority, 0.0) == []
    assert reimage.select_tiles(priority, 0.25) == [(0, 1), (1, 0)]
    assert len(reimage.select_tiles(priority, 1.0)) == 8
    assert len(reimage.random_tiles(priority.shape, 0.5, seed=3)) == 4
    with pytest.raises(VemvizError, match="budget"):
        reimage.select_tiles(priority, 1.5)


def test_time_model():
    shape = (10, 400, 400)
    none = reimage.time_estimate(shape, 4, 0, 0)
    assert none["time_saved"] == pytest.approx(1 - 1 / 16)
    half = reimage.time_estimate(shape, 4, 10 * 400 * 400 // 2, 5)
    assert half["time_saved"] == pytest.approx(1 - 1 / 16 - 0.5)
    timed = reimage.time_estimate(shape, 4, 0, 10, dwell_ns=100, tile_overhead_s=2.0)
    assert timed["full_scan_s"] == pytest.approx(10 * 400 * 400 * 100e-9)
    assert timed["plan_s"] == pytest.approx(timed["full_scan_s"] / 16 + 20)


def test_plan_ranks_textured_tiles_first():
    truth = half_textured()
    low = reimage.area_downsample(truth, 4)
    assessment = reimage.assess(low, (50.0, 20.0, 20.0), scale=4, tile=32)
    plan = reimage.make_plan(assessment, budget=0.25, margin=4)
    assert len(plan["tiles"]) == int(0.25 * plan["tiles_total"]) == 8
    for entry in plan["tiles"]:
        y0, y1, x0, x1 = entry["box_px"]
        assert x0 >= 64, f"flat tile chosen: {entry['box_px']}"
        assert entry["acquire_px"] == [max(y0 - 4, 0), min(y1 + 4, 128), x0 - 4, min(x1 + 4, 128)]
    assert plan["voxel_size_nm_highres"] == [50.0, 5.0, 5.0]
    ranks = [e["priority"] for e in plan["tiles"]]
    assert ranks == sorted(ranks, reverse=True)


def test_segmentation_uncertainty_ranks_undecided_tiles_first():
    sure, undecided = np.zeros((32, 32)), np.full((32, 32), 0.5)
    boxes = [(0, 16, 0, 16), (16, 32, 16, 32)]
    assert reimage.segmentation_uncertainty(sure, boxes) == pytest.approx([0, 0])
    assert reimage.segmentation_uncertainty(undecided, boxes) == pytest.approx([1, 1])
    truth = half_textured()
    low = reimage.area_downsample(truth, 4)

    def probability(volume: np.ndarray) -> np.ndarray:
        """Sure everywhere (0 or 1) except undecided in the flat tile at rows/cols 0-31."""
        p = (volume > 120).astype(np.float32)
        p[:, :32, :32] = 0.5
        return p

    plain = reimage.assess(low, (50.0, 20.0, 20.0), scale=4, tile=32)
    guided = reimage.assess(low, (50.0, 20.0, 20.0), scale=4, tile=32, segmenter=probability)
    assert np.array_equal(plain.mse, guided.mse)
    assert reimage.select_tiles(plain.priority, 1 / 16)[0][1] != 0  # error alone: a textured one
    first = reimage.select_tiles(guided.priority, 2 / 32)
    assert [b for _, b in first] == [0, 0]  # the undecided flat tile of both slices


def test_registration_recovers_stage_error_and_rejects_wrong_tiles(phantom):
    truth = phantom.clean.numpy()[:4]
    plan = {"tiles": [{"slice": 1, "acquire_px": [20, 100, 30, 110]}]}
    for seed in range(3):
        tile = reimage.truth_tiles(truth, plan, stage_error_px=3.0, seed=seed)[0]
        expected = np.random.default_rng(seed).uniform(-3, 3, size=2)
        shift = reimage.register_tile(tile, truth[1, 20:100, 30:110], max_shift=5)
        assert np.allclose(shift, expected, atol=0.3)
    with pytest.raises(VemvizError, match="planned place"):
        reimage.register_tile(truth[1, 20:100, 30:110], truth[1, 40:120, 10:90], max_shift=2)


@pytest.fixture
def merge_case(phantom):
    """Truth, scan (x4), assessment, a 20 % plan and its tiles cut with a 2 px stage error."""
    truth = phantom.clean.numpy()[:6]
    low = reimage.area_downsample(truth, 4)
    assessment = reimage.assess(low, (40.0, 32.0, 32.0), scale=4, tile=32)
    plan = reimage.make_plan(assessment, budget=0.2, margin=6)
    tiles = reimage.truth_tiles(truth, plan, stage_error_px=2.0, seed=1)
    return truth, low, assessment, plan, tiles


def test_refinement_on_the_scan_recovers_sub_pixel_stage_error(merge_case):
    _, low, assessment, plan, tiles = merge_case
    rng = np.random.default_rng(1)
    true = np.array([rng.uniform(-2.0, 2.0, size=2) for _ in plan["tiles"]])
    coarse = np.array([
        reimage.register_tile(tile, assessment.sr[e["slice"], y0:y1, x0:x1], max_shift=6)
        for e, tile in zip(plan["tiles"], tiles, strict=True)
        for y0, y1, x0, x1 in [e["acquire_px"]]
    ])  # fmt: skip
    _, report = reimage.merge_tiles(assessment.sr, low, plan, tiles)
    refined = np.array(report["shifts_px"])
    rms_coarse = np.sqrt(((coarse - true) ** 2).mean())
    rms_refined = np.sqrt(((refined - true) ** 2).mean())
    # The blurry (bicubic) SR leaves its match a third of a pixel off; the scan pins it down.
    assert rms_coarse > 0.25
    assert rms_refined < 0.1 and rms_refined < rms_coarse / 3
    # Nothing to refine on: a flat scan, or a tile covering too few scan pixels.
    entry, tile = plan["tiles"][0], tiles[0]
    box = tuple(entry["acquire_px"])
    assert reimage.refine_on_scan(tile, np.zeros_like(low[0]), box, 4, (0.5, -0.5)) == (0.5, -0.5)
    assert reimage.refine_on_scan(tile[:16, :16], low[entry["slice"]],
                                  (box[0], box[0] + 16, box[2], box[2] + 16), 4,
                                  (0.5, -0.5)) == (0.5, -0.5)  # fmt: skip


def test_merge_replaces_planned_tiles_without_seams(merge_case):
    truth, low, assessment, plan, tiles = merge_case
    merged, report = reimage.merge_tiles(assessment.sr, low, plan, tiles)
    assert report["tiles_merged"] == len(plan["tiles"]) > 0
    inside = np.zeros(truth.shape, bool)
    touched = np.zeros(truth.shape, bool)
    for entry in plan["tiles"]:
        y0, y1, x0, x1 = entry["box_px"]
        inside[entry["slice"], y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] = True
        a0, a1, b0, b1 = entry["acquire_px"]
        touched[entry["slice"], a0:a1, b0:b1] = True
    # Planned tiles now hold the high-resolution truth (up to resampling), the rest is untouched.
    assert psnr(truth, merged, mask=inside) > psnr(truth, assessment.sr, mask=inside) + 8
    assert np.array_equal(merged[~touched], assessment.sr[~touched])
    assert psnr(truth, merged) > psnr(truth, assessment.sr) + 0.5
    # No seam: along each acquired box's border, the merged image steps no more than the SR does.
    jump_merged = np.abs(np.diff(merged.astype(float), axis=2))[
        touched[:, :, 1:] != touched[:, :, :-1]
    ]
    jump_sr = np.abs(np.diff(assessment.sr.astype(float), axis=2))[
        touched[:, :, 1:] != touched[:, :, :-1]
    ]
    assert jump_merged.mean() <= jump_sr.mean() + 2


def test_merge_rejects_wrong_tiles(phantom):
    truth = phantom.clean.numpy()[:3]
    low = reimage.area_downsample(truth, 4)
    assessment = reimage.assess(low, (40.0, 32.0, 32.0), tile=32)
    plan = reimage.make_plan(assessment, budget=0.2)
    tiles = reimage.truth_tiles(truth, plan)
    with pytest.raises(VemvizError, match="plan lists"):
        reimage.merge_tiles(assessment.sr, low, plan, tiles[:-1])
    with pytest.raises(VemvizError, match="pixels"):
        reimage.merge_tiles(assessment.sr, low, plan, [t[1:] for t in tiles])
    with pytest.raises(VemvizError, match="volume shape"):
        reimage.merge_tiles(assessment.sr[:2], low, plan, tiles)
    with pytest.raises(VemvizError, match="scan shape"):
        reimage.merge_tiles(assessment.sr, low[:, 1:], plan, tiles)


def test_error_model_fits_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 20, (200, len(reimage.FEATURES)))
    rms = 2.0 * features[:, 1] + 1
    model = reimage.fit_error_model(features, rms, "bicubic")
    assert spearmanr(model.predict_rms(features), rms).statistic > 0.95
    path = tmp_path / "model.json"
    reimage.save_error_models([model], path, {"test": True})
    loaded = reimage.load_error_model("bicubic", path)
    assert np.allclose(loaded.predict_rms(features), model.predict_rms(features))
    fallback = reimage.load_error_model("learned", path)  # no model of its own
    assert fallback.sr_method == "bicubic"
    assert np.allclose(fallback.predict_rms(features), model.predict_rms(features))
    path.write_text("{}")
    with pytest.raises(VemvizError, match="not a re-imaging error model"):
        reimage.load_error_model("bicubic", path)
    shipped = json.loads(reimage.DEFAULT_MODEL.read_text())
    assert shipped["provenance"]["script"] == "scripts/train_reimage.py"


def test_cli_plan_tiles_merge_round_trip(tmp_path, phantom):
    truth = Volume(phantom.clean.numpy()[:4], (40.0, 8.0, 8.0))
    low = Volume(reimage.area_downsample(truth.numpy(), 4), (40.0, 32.0, 32.0))
    write_volume(low, tmp_path / "low.tif")
    plan_path = tmp_path / "plan.json"
    args = ["plan-reimage", str(tmp_path / "low.tif"), "--out", str(plan_path), "--scale", "4",
            "--budget", "0.25", "--tile", "32", "--dwell-ns", "200"]  # fmt: skip
    assert main(args) == 0
    plan = json.loads(plan_path.read_text())
    assert len(plan["tiles"]) == plan["tiles_total"] // 4
    assert 0 < plan["time"]["time_saved"] < 1 - 1 / 16
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    for entry, tile in zip(plan["tiles"], reimage.truth_tiles(truth.numpy(), plan), strict=True):
        tifffile.imwrite(tiles_dir / entry["file"], tile)
    out = tmp_path / "merged.tif"
    merge = ["merge-reimage", str(tmp_path / "low.tif"), str(tiles_dir), "--plan", str(plan_path),
             "--no-refit", "--out", str(out)]  # fmt: skip
    assert main(merge) == 0
    merged = read_volume(out)
    assert merged.voxel_size_nm == (40.0, 8.0, 8.0)
    sr = reimage.super_resolve(low.numpy(), 4, "bicubic")[0]
    assert psnr(truth.numpy(), merged.numpy()) > psnr(truth.numpy(), sr) + 0.5
    (tiles_dir / plan["tiles"][0]["file"]).unlink()
    assert main([*merge[:-1], str(tmp_path / "again.tif")]) == 2
    assert not (tmp_path / "again.tif").exists()


def test_merge_refuses_another_scan_and_ignores_a_replaced_sr_volume(tmp_path, phantom, capsys):
    truth = phantom.clean.numpy()[:4]
    low = reimage.area_downsample(truth, 4)
    write_volume(Volume(low, (40.0, 32.0, 32.0)), tmp_path / "low.tif")
    write_volume(Volume(low[::-1].copy(), (40.0, 32.0, 32.0)), tmp_path / "other.tif")
    plan_path, sr_path = tmp_path / "plan.json", tmp_path / "sr.tif"
    plan_args = ["plan-reimage", str(tmp_path / "low.tif"), "--out", str(plan_path), "--scale",
                 "4", "--budget", "0.25", "--tile", "32", "--sr-out", str(sr_path)]  # fmt: skip
    assert main(plan_args) == 0
    plan = json.loads(plan_path.read_text())
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    for entry, tile in zip(plan["tiles"], reimage.truth_tiles(truth, plan), strict=True):
        tifffile.imwrite(tiles_dir / entry["file"], tile)

    def merge(scan: str, out: str) -> int:
        return main(["merge-reimage", str(tmp_path / scan), str(tiles_dir), "--plan",
                     str(plan_path), "--no-refit", "--out", str(tmp_path / out)])  # fmt: skip

    capsys.readouterr()
    assert merge("other.tif", "wrong.tif") == 2  # same shape, another scan
    assert "another low-resolution scan" in capsys.readouterr().err
    assert not (tmp_path / "wrong.tif").exists()
    tifffile.imwrite(sr_path, np.zeros_like(read_volume(sr_path).numpy()))  # replaced since
    assert merge("low.tif", "merged.tif") == 0
    assert "not the SR volume" in capsys.readouterr().err
    bicubic = reimage.super_resolve(low, 4, "bicubic")[0]
    assert psnr(truth, read_volume(tmp_path / "merged.tif").numpy()) > psnr(truth, bicubic) + 0.5


def test_cli_plans_with_learned_sr_and_a_segmentation_target(tmp_path, phantom):
    truth = phantom.clean.numpy()[:3]
    write_volume(Volume(reimage.area_downsample(truth, 4), (40.0, 32.0, 32.0)), tmp_path / "lo.tif")
    plan_path, sr_path = tmp_path / "plan.json", tmp_path / "sr.tif"
    args = ["plan-reimage", str(tmp_path / "lo.tif"), "--out", str(plan_path), "--tile", "32",
            "--budget", "0.25", "--sr-method", "learned", "--target", "mito", "--time-budget",
            "5", "--device", "cpu", "--sr-out", str(sr_path)]  # fmt: skip
    assert main(args) == 0
    plan = json.loads(plan_path.read_text())
    assert (plan["sr_method"], plan["error_model"], plan["target"]) == (
        "learned",
        "bicubic",
        "mito",
    )
    assert len(plan["tiles"]) == plan["tiles_total"] // 4 == 12
    sr = read_volume(sr_path).numpy()
    assert psnr(truth[:, :128, :128], sr) > 20  # a super-resolved phantom, not a blank one


def test_cli_simulation_reports_quality_and_time(tmp_path, phantom):
    write_volume(Volume(phantom.clean.numpy()[:4], (40.0, 8.0, 8.0)), tmp_path / "hr.tif")
    report = tmp_path / "report.json"
    args = ["plan-reimage", str(tmp_path / "hr.tif"), "--simulate", "--out",
            str(tmp_path / "plan.json"), "--tile", "32", "--budget", "0.2", "--report",
            str(report), "--merged-out", str(tmp_path / "merged.tif"), "--time-budget", "10",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    figures = json.loads(report.read_text())
    assert figures["refit"] is True
    assert figures["merged_psnr"] > figures["sr_psnr"] + 0.5
    assert figures["tiles"] == int(0.2 * figures["tiles_total"])
    assert read_volume(tmp_path / "merged.tif").shape == (4, 128, 128)


@pytest.mark.realdata
def test_refit_on_reimaged_tiles_beats_the_plans_sr(shared_data):
    from vemviz.inr import Training

    truth = tifffile.imread(shared_data / "flyem_medulla_10nm" / "raw.tif")[100:108, :128, :128]
    low = reimage.area_downsample(truth, 4)
    assessment = reimage.assess(low, (10.0, 40.0, 40.0), scale=4, tile=32)
    plan = reimage.make_plan(assessment, budget=0.25)
    tiles = reimage.truth_tiles(truth, plan)
    training = Training(steps=300, time_budget=300, seed=0, device="cpu")
    refit = reimage.refit_sr(low, tiles, 4, training)
    assert refit.shape == assessment.sr.shape and refit.dtype == np.uint8
    # Better everywhere, not only in the re-imaged tiles: away from them too.
    away = np.ones(truth.shape, bool)
    for entry in plan["tiles"]:
        a0, a1, b0, b1 = entry["acquire_px"]
        away[entry["slice"], a0:a1, b0:b1] = False
    assert psnr(truth, refit, mask=away) > psnr(truth, assessment.sr, mask=away) + 0.25
    with pytest.raises(VemvizError, match="at least"):
        reimage.refit_sr(low, tiles[:3], 4, training)
