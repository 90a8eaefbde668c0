"""Tests for vemviz.restore: slice lists, damage detection on real stacks, slice filling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from vemviz import stages
from vemviz.damage import simulate_damage
from vemviz.errors import VemvizError
from vemviz.inr import Architecture, Training
from vemviz.metrics import psnr
from vemviz.phantom import make_phantom
from vemviz.restore import (
    check_mask,
    detect_damage,
    fill_damage,
    fill_slices,
    parse_slice_list,
    scan_damage,
)

DATA = Path(__file__).parents[2] / "shared" / "data"
FLYEM = DATA / "flyem_medulla_10nm" / "raw.tif"
VNC = DATA / "vnc_sstem" / "raw.tif"


def _read(path: Path) -> np.ndarray:
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return tifffile.imread(path)


def test_parse_slice_list() -> None:
    assert parse_slice_list("3,17,40-42", 50) == [3, 17, 40, 41, 42]
    assert parse_slice_list(" 5 , 2-3,5, ", 6) == [2, 3, 5]
    assert parse_slice_list("0", 1) == [0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3,50", "outside the volume, which has slices 0-49"),
        ("7-4", "runs backwards"),
        ("3,x", "cannot read slice 'x'"),
        ("-1", "cannot read slice"),
        (" , ", "no slices given"),
    ],
)
def test_parse_slice_list_errors(text: str, message: str) -> None:
    with pytest.raises(VemvizError, match=message):
        parse_slice_list(text, 50)


def test_fill_linear_runs_and_edges() -> None:
    stack = np.repeat(np.arange(0, 80, 10, dtype=np.uint8), 30).reshape(8, 5, 6)
    stack[[0, 3, 4, 7]] = 0
    out = fill_slices(stack, [0, 3, 4, 7], method="linear")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0, 0], [10, 10, 20, 30, 40, 50, 60, 60])
    np.testing.assert_array_equal(out[[1, 2, 5, 6]], stack[[1, 2, 5, 6]])
    assert stack[0, 0, 0] == 0  # the input is not modified


def test_fill_rounds_to_integer_dtype() -> None:
    stack = np.zeros((3, 4, 4), dtype=np.uint16)
    stack[2] = 3
    assert fill_slices(stack, [1], method="linear")[1, 0, 0] == 2  # 1.5 rounds to even


@pytest.mark.parametrize(
    ("slices", "method", "message"),
    [
        ([0, 1, 2], "linear", "every slice is marked damaged"),
        ([0, 1, 2], "diffusion", "every slice is marked damaged"),
        ([1], "magic", "unknown fill method"),
        ([3], "linear", "0-2"),
    ],
)
def test_fill_errors(slices: list[int], method: str, message: str) -> None:
    with pytest.raises(VemvizError, match=message):
        fill_slices(np.zeros((3, 4, 4), dtype=np.uint8), slices, method=method)


def test_inr_fill_needs_the_voxel_size() -> None:
    with pytest.raises(VemvizError, match="voxel size"):
        fill_slices(np.full((6, 64, 64), 7, np.uint8), [2], method="inr")


def test_inr_fill_restores_gaps_on_a_phantom() -> None:
    """A missing slice and a run of two in an isotropic 8 nm phantom whose truth is known."""
    torch.set_num_threads(1)
    cube = make_phantom((40, 64, 64), (8.0, 8.0, 8.0), seed=3).clean.numpy()
    bad = [10, 25, 26]
    training = Training(steps=150, time_budget=None, batch=8, patch=32, device="cpu",
                        architecture=Architecture(channels=16, blocks=2, hidden=32))  # fmt: skip
    out = fill_slices(cube, bad, "inr", voxel_size_nm=(8.0, 8.0, 8.0), training=training)
    np.testing.assert_array_equal(np.delete(out, bad, 0), np.delete(cube, bad, 0))
    linear = fill_slices(cube, bad, "linear")
    assert psnr(out[bad], cube[bad]) > psnr(linear[bad], cube[bad]) + 0.5


def test_ensemble_fill_is_the_mean_of_inr_and_diffusion() -> None:
    torch.set_num_threads(1)
    cube = make_phantom((24, 48, 48), (8.0, 8.0, 8.0), seed=4).clean.numpy().astype(np.float32)
    bad = [8, 9]
    training = Training(steps=40, time_budget=None, batch=4, patch=24, device="cpu",
                        architecture=Architecture(channels=8, blocks=1, hidden=16))  # fmt: skip
    options = {"voxel_size_nm": (8.0, 8.0, 8.0), "training": training}
    fills = {m: fill_slices(cube, bad, m, **options) for m in ("inr", "diffusion", "ensemble")}
    np.testing.assert_allclose(
        fills["ensemble"], 0.5 * (fills["inr"] + fills["diffusion"]), rtol=0, atol=1e-4
    )
    assert np.abs(fills["inr"][bad] - fills["diffusion"][bad]).mean() > 0.1


def test_cli_inr_fills_missing_slices(tmp_path: Path) -> None:
    from vemviz import read_volume, write_volume
    from vemviz.cli import main

    phantom = make_phantom((16, 64, 64), (8.0, 8.0, 8.0), seed=2)
    damaged = phantom.clean.numpy().copy()
    damaged[[5, 6]] = 0
    source = write_volume(phantom.clean.with_data(damaged), tmp_path / "damaged.tif")
    out, report = tmp_path / "out.tif", tmp_path / "r.json"
    argv = ["inpaint", str(source), "--out", str(out), "--slices", "5-6", "--method", "inr",
            "--time-budget", "2", "--device", "cpu", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(report.read_text())["methods"] == {"5": "inr", "6": "inr"}
    restored, truth = read_volume(out).numpy(), phantom.clean.numpy()
    assert psnr(truth[5:7], restored[5:7]) > psnr(truth[5:7], damaged[5:7]) + 10


def test_flow_fill_bends_paths_with_the_slices_beyond() -> None:
    """Slice k shows a texture shifted by (k - 2)^2 / 2 px: filling slice 3 from 2 and 4
    (shifts 0 and 2) along a straight path would put it at 1 px; with slices 1 and 5 beyond
    (half a gap away) the parabola puts it at the true 0.5 px."""
    import cv2
    from scipy.ndimage import shift

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (96, 160)).astype(np.float32), (0, 0), 4)
    texture = (texture - texture.mean()) * 8 + 128
    stack = np.stack([shift(texture, (0, (k - 2) ** 2 / 2), order=3)[:, 30:126]
                      for k in range(6)])  # fmt: skip
    inner = (slice(20, -20), slice(20, -20))
    curved = fill_slices(stack, [3], method="flow")[3]
    straight = fill_slices(stack[2:5], [1], method="flow")[1]  # no slices beyond
    assert np.sqrt(np.mean((curved - stack[3])[inner] ** 2)) < 0.5 * np.sqrt(
        np.mean((straight - stack[3])[inner] ** 2)
    )


def test_mask_must_match_the_volume() -> None:
    stack = np.zeros((3, 4, 4), dtype=np.uint8)
    with pytest.raises(VemvizError, match=r"mask has shape \(3, 4, 5\) but the volume has"):
        fill_damage(stack, np.zeros((3, 4, 5), dtype=bool))
    with pytest.raises(VemvizError, match="mask has shape"):
        check_mask(stack, np.zeros((4, 4), dtype=bool))


def test_partial_fill_touches_only_masked_voxels() -> None:
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, size=(5, 20, 24), dtype=np.uint8)
    mask = np.zeros(stack.shape, dtype=bool)
    mask[2, 5:9, 3:20] = True
    for method in ("linear", "flow"):
        out, report = fill_damage(stack, mask, method)
        assert report["methods"] == {2: method}
        np.testing.assert_array_equal(out[~mask], stack[~mask])
    expected = (stack[1, 5:9, 3:20].astype(float) + stack[3, 5:9, 3:20]) / 2
    np.testing.assert_allclose(
        fill_damage(stack, mask, "linear")[0][2, 5:9, 3:20], expected, atol=0.51
    )


@pytest.mark.realdata
@pytest.mark.parametrize("path", [FLYEM, VNC], ids=["flyem", "vnc"])
def test_real_stacks_are_not_flagged(path: Path) -> None:
    stack = _read(path)
    report, mask = detect_damage(stack)
    assert report["flagged"] == [] and report["reasons"] == {} and not mask.any()
    assert len(report["scores"]) == stack.shape[0]
    json.dumps(report)
    # Largest scores measured: FlyEM misfit 0.84, VNC misfit 4.45 (threshold 8); band 0;
    # region FlyEM 7.1, VNC 5.0 (seed threshold 10).
    assert max(s["misfit"] for s in report["scores"]) < 5
    assert max(s["region"] for s in report["scores"]) < 8


@pytest.mark.realdata
def test_inserted_whole_slice_damage_is_flagged() -> None:
    stack = _read(VNC).copy()
    n, height, width = stack.shape
    mid = n // 2
    original = stack.copy()
    stack[mid - 6] = 0  # blank
    stack[mid - 3, height // 3 : height // 3 + height // 20] = 0  # black band of rows
    stack[mid, : height // 4, : width // 4] = 255  # saturated region
    stack[mid + 3, :, 100] = 0  # one dropped column
    stack[mid + 6] = original[(mid + n // 3) % n][::-1, ::-1]  # a slice from elsewhere
    report, mask = detect_damage(stack)
    assert report["reasons"] == {
        mid - 6: "blank",
        mid - 3: "band",
        mid: "band",
        mid + 3: "band",
        mid + 6: "misfit",
    }
    assert mask[mid - 6].all() and mask[mid + 6].all()
    assert mask[mid, : height // 4, : width // 4].all() and mask[mid + 3, :, 100].all()
    assert mask[mid].mean() < 0.1


@pytest.mark.realdata
def test_simulated_local_damage_is_found_on_flyem() -> None:
    stack = _read(FLYEM)[100:160]
    requests = [(10, "missing"), (20, "band"), (28, "crack"), (36, "blotch"), (44, "fold")]
    damaged, truth = simulate_damage(stack, requests, seed=1)
    report, mask = detect_damage(damaged)
    assert report["flagged"] == [z for z, _ in requests]  # recall 1, no false slice
    assert report["reasons"][10] == "blank" and report["reasons"][20] == "band"
    for z, _ in requests:
        assert (mask[z] & truth[z]).sum() > 0.9 * truth[z].sum()  # pixel recall
        assert (mask[z] & truth[z]).sum() > 0.2 * mask[z].sum()  # pixel precision


@pytest.mark.realdata
def test_detection_in_parallel_slab_tasks_is_the_same() -> None:
    """Every sweep of `scan_damage` as tasks of one z slab (6-slice chunks of a lazily read
    stack) on two threads: the in-process report and masks exactly."""
    import dask.array as da

    from vemviz.chunked import Runner
    from vemviz.slices import SliceSource

    stack = _read(FLYEM)[100:136, :160, :160]
    requests = [(6, "missing"), (13, "band"), (20, "crack"), (27, "blotch")]
    damaged, _ = simulate_damage(stack, requests, seed=2)
    want, want_mask = detect_damage(damaged)
    calls: list[int] = []
    with Runner(workers=2) as runner:

        def run(tasks, description):
            calls.append(len(tasks))
            return runner.run(tasks, description)

        lazy = SliceSource(da.from_array(damaged, chunks=(6, 160, 160)))
        got, masks = scan_damage(lazy, run)
    assert len(calls) == 4 and min(calls) >= 5  # every sweep went in chunk tasks
    assert got == want and np.array_equal(masks.dense(), want_mask)
    assert got["flagged"] == [z for z, _ in requests]


@pytest.mark.realdata
def test_one_pixel_crack_is_found_on_flyem() -> None:
    """A 1 px dark curve: Gaussian-smoothed residuals alone dilute it below the seed (found
    by the line level; the mask follows it through 8-connected raw residuals)."""
    import cv2

    stack = _read(FLYEM)[100:130].copy()
    t = np.linspace(0, 1, 60)
    curve = np.column_stack([20 + 210 * t, 60 + 40 * np.sin(4 * t) + 30 * t])
    crack = np.zeros(stack.shape[1:], dtype=np.uint8)
    cv2.polylines(crack, [np.rint(curve).astype(np.int32).reshape(-1, 1, 2)], False, 1, 1)
    stack[15][crack > 0] = stack.min()
    report, mask = detect_damage(stack)
    assert report["flagged"] == [15] and report["reasons"][15] == "region"
    assert (mask[15] & (crack > 0)).sum() > 0.6 * crack.sum()  # measured 0.66


@pytest.mark.realdata
def test_flow_fill_beats_linear_on_flyem() -> None:
    """Whole missing slices (single, and a run of three) on FlyEM, PSNR on those slices."""
    stack = _read(FLYEM)
    scores: dict[tuple[str, int], float] = {}
    for run in (1, 3):
        bad = [z for start in range(5, 240, 8) for z in range(start, start + run)]
        for method in ("linear", "flow"):
            out = fill_slices(stack, bad, method=method)
            np.testing.assert_array_equal(np.delete(out, bad, 0), np.delete(stack, bad, 0))
            scores[method, run] = psnr(out[bad], stack[bad])
    # Measured: single slice linear 30.69, flow 31.06 dB; runs of three 28.12 and 29.01 dB.
    # Reference (shared/data/README.md): about 30.9 dB for a single slice, linear.
    assert 30.4 < scores["linear", 1] < 31.2
    assert scores["flow", 1] > scores["linear", 1] + 0.25
    assert scores["flow", 3] > scores["linear", 3] + 0.6


@pytest.mark.realdata
def test_cli_detects_and_restores(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from vemviz import Volume, read_volume, write_volume
    from vemviz.cli import main

    stack = _read(FLYEM)[130:150, 40:168, 40:168]
    damaged, truth = simulate_damage(stack, [(6, "missing"), (13, "blotch")], seed=2)
    source = write_volume(Volume(damaged, (10.0, 10.0, 10.0)), tmp_path / "damaged.tif")
    out, report, mask_out = tmp_path / "out.tif", tmp_path / "r.json", tmp_path / "mask.tif"
    argv = ["inpaint", str(source), "--out", str(out), "--detect", "--report", str(report),
            "--mask-out", str(mask_out), "--steps", "2"]  # fmt: skip
    assert main(argv) == 0
    figures = json.loads(report.read_text())
    assert figures["detection"]["flagged"] == [6, 13]
    assert figures["methods"] == {"6": "flow", "13": "diffusion"}
    restored = read_volume(out).numpy()
    assert psnr(stack, restored, mask=truth) > psnr(stack, damaged, mask=truth) + 10
    assert (read_volume(mask_out).numpy().astype(bool) & truth).sum() > 0.9 * truth.sum()


def test_cli_bad_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vemviz import Volume, write_volume
    from vemviz.cli import main

    source = write_volume(Volume(np.zeros((3, 8, 8), np.uint8), (10, 10, 10)), tmp_path / "s.tif")
    small = write_volume(Volume(np.ones((3, 8, 7), np.uint8), (10, 10, 10)), tmp_path / "m.tif")
    full = write_volume(Volume(np.ones((3, 8, 8), np.uint8), (10, 10, 10)), tmp_path / "f.tif")
    for mask, message in ((small, "mask has shape (3, 8, 7)"), (full, "every slice")):
        out = tmp_path / "out.tif"
        assert main(["inpaint", str(source), "--out", str(out), "--mask", str(mask)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not out.exists()


@pytest.fixture(scope="module")
def jittered() -> np.ndarray:
    """FlyEM sections imaged with a few px and a degree of jitter, 20 and 36 damaged."""
    import cv2

    raw = _read(FLYEM)[100:160]
    rng = np.random.default_rng(3)
    centre = (raw.shape[2] / 2, raw.shape[1] / 2)
    sections = []
    for section in raw:
        matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-1.5, 1.5), 1.0)
        matrix[:, 2] += rng.uniform(-8, 8, 2)
        sections.append(cv2.warpAffine(section, matrix, section.shape[::-1])[25:225, 25:225])
    return simulate_damage(np.stack(sections), [(20, "band"), (36, "blotch")], seed=4)[0]


@pytest.mark.realdata
def test_padding_of_an_aligned_stack_is_not_damage(jittered: np.ndarray) -> None:
    """The black padding an alignment adds is not damage; the damage still is."""
    from vemviz.align import align_stack, section_masks

    aligned, alignment = align_stack(jittered, "rigid")
    outside = ~section_masks(alignment["transforms"], aligned.shape)
    assert outside.mean() > 0.01  # the alignment padded the sections
    blind, _ = detect_damage(aligned)
    report, mask = detect_damage(aligned, outside)
    print(f"flagged without the alignment: {blind['flagged']}, with it: {report['flagged']}")
    assert len(blind["flagged"]) > 2  # the padding alone looks like black bands
    assert report["flagged"] == [20, 36]
    assert not (mask & outside).any()


@pytest.mark.realdata
def test_cli_and_pipeline_pass_the_alignment_to_detection(
    jittered: np.ndarray, tmp_path: Path
) -> None:
    from vemviz import Volume, read_volume, write_volume
    from vemviz.cli import main
    from vemviz.pipeline import run_pipeline

    source = write_volume(Volume(jittered, (10.0, 10.0, 10.0)), tmp_path / "stack.tif")
    aligned = tmp_path / "aligned.tif"
    assert main(["align", str(source), "--out", str(aligned)]) == 0
    report_path = tmp_path / "r.json"
    argv = ["inpaint", str(aligned), "--out", str(tmp_path / "out.tif"), "--detect",
            "--method", "flow", "--report", str(report_path),
            "--transforms", str(tmp_path / "aligned.tif.transforms.json")]  # fmt: skip
    assert main(argv) == 0
    figures = json.loads(report_path.read_text())
    assert figures["detection"]["flagged"] == [20, 36] and figures["outside_voxels"] > 0
    changed = read_volume(aligned).numpy() != read_volume(tmp_path / "out.tif").numpy()
    assert changed[[z for z in range(60) if z not in (20, 36)]].sum() == 0

    # by blocks (a 9.6 MB float32 copy over a 4 MiB budget): the same detection and fills
    stack = read_volume(aligned)
    stack = stack.with_data(stack.numpy().astype(np.float32))
    path = write_volume(stack, tmp_path / "aligned.ome.zarr")
    out = tmp_path / "out.ome.zarr"
    argv[1:4] = [str(path), "--out", str(out)]
    assert main([*argv, "--memory-budget", "4MiB"]) == 0
    blocks = json.loads(report_path.read_text())
    assert blocks["blocks"] > 1 and blocks["detection"]["flagged"] == [20, 36]
    assert blocks["outside_voxels"] == figures["outside_voxels"]
    transforms = json.loads((tmp_path / "aligned.tif.transforms.json").read_text())["transforms"]
    want = stages.inpaint(stack, detect=True, method="flow", transforms=transforms)[0]
    np.testing.assert_array_equal(read_volume(out).numpy(), want.numpy())

    config = {"input": str(source), "workspace": str(tmp_path / "ws"),
              "stages": [{"stage": "align"}, {"stage": "inpaint", "detect": True,
                                                "method": "flow"}]}  # fmt: skip
    records = run_pipeline(config, tmp_path)
    assert records[1].report["detection"]["flagged"] == [20, 36]
