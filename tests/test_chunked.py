"""Chunked (block by block) processing equals whole-volume processing; resume; distributed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import vemviz
from vemviz import stages
from vemviz.align import align_stack
from vemviz.blockwise import (
    AlignApplyBlocks,
    AlignBlocks,
    InpaintBlocks,
    IsoBlocks,
    SegmentBlocks,
    SrBlocks,
)
from vemviz.chunked import Runner, Work, parse_memory, plan_grid, run_chunked
from vemviz.cli import main
from vemviz.damage import simulate_damage
from vemviz.errors import VemvizError
from vemviz.unet import load_model, save_model, shipped_model

BLOCK = (8, 64, 64)


@pytest.fixture(scope="module")
def source(phantom, tmp_path_factory) -> vemviz.Volume:
    path = tmp_path_factory.mktemp("chunked") / "raw.ome.zarr"
    vemviz.write_volume(phantom.raw, path)
    return vemviz.read_volume(path)


def _chunked(stage, volume, tmp_path: Path, name: str = "out", **kw) -> np.ndarray:
    out = tmp_path / f"{name}.ome.zarr"
    report = run_chunked(stage, volume, out, block=BLOCK, workers=2, **kw)
    assert report["blocks"] > 1
    return vemviz.read_volume(out).numpy()


@pytest.mark.parametrize(
    ("stage", "reference"),
    [
        (InpaintBlocks((9,), method="flow"), lambda v: stages.inpaint(v, slices=(9,))[0]),
        (IsoBlocks(2.0, "flow"), lambda v: stages.iso(v, factor=2, method="flow")[0]),
        (IsoBlocks(3.0, "linear"), lambda v: stages.iso(v, factor=3, method="linear")[0]),
        (IsoBlocks(2.5, "cubic"), lambda v: stages.iso(v, factor=2.5, method="cubic")[0]),
        # 40 / 8.7 nm: no p/q with a small q, so blocks start between input slices
        (
            IsoBlocks(40 / 8.7, "linear"),
            lambda v: stages.iso(v, out_voxel_size=8.7, method="linear")[0],
        ),
        (
            IsoBlocks(40 / 8.7, "flow"),
            lambda v: stages.iso(v, out_voxel_size=8.7, method="flow")[0],
        ),
        (SrBlocks(2.0), lambda v: stages.sr(v, scale=2)[0]),
    ],
    ids=[
        "inpaint-flow",
        "iso-flow-x2",
        "iso-linear-x3",
        "iso-cubic-x2.5",
        "iso-linear-to-8.7nm",
        "iso-flow-to-8.7nm",
        "sr-x2",
    ],
)
def test_chunked_equals_in_memory(phantom, source, tmp_path, stage, reference) -> None:
    want = reference(phantom.raw)
    got = _chunked(stage, source, tmp_path)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want.numpy())
    out = vemviz.read_volume(tmp_path / "out.ome.zarr")
    assert out.voxel_size_nm == pytest.approx(want.voxel_size_nm, rel=1e-5)


@pytest.mark.parametrize("kind", ["iso", "sr"])
def test_learned_blocks_equal_the_model_in_memory(phantom, source, tmp_path, kind) -> None:
    """A learned stage trains once (on the central slab) and can save that model; blocks
    applying a model equal it applied to the whole volume with the volume's normalisation."""
    from vemviz import inr
    from vemviz.blockwise import Learned, _with_volume_norm
    from vemviz.iso import reconstruct_z
    from vemviz.sr import super_resolve

    kind_method = "inr" if kind == "iso" else "learned"
    factor = 40 / 17.3  # iso: no p/q with a small q, blocks start between input slices

    def stage(learned: Learned):
        if kind == "iso":
            return IsoBlocks(factor, kind_method, learned)
        return SrBlocks(2.0, kind_method, learned=learned)

    arch = inr.Architecture(channels=8, blocks=2, hidden=8, neighbours=1)
    training = inr.Training(steps=5, time_budget=None, batch=4, patch=24, device="cpu",
                            architecture=arch)  # fmt: skip
    saved = tmp_path / "model.pt"
    learned = Learned(save_model=str(saved), training=training)
    trained = run_chunked(stage(learned), source, tmp_path / "t.ome.zarr", block=BLOCK, workers=2)
    assert trained["training_steps"] == 5 and trained["method"] == kind_method
    # a model whose residual is far from zero, so that every block edge would show
    model = inr.load_model(saved, kind, "cpu")
    with torch.no_grad():
        for weight in model.net.parameters():
            weight.add_(0.2 * torch.randn_like(weight, generator=torch.Generator().manual_seed(0)))
    inr.save_model(model, saved)
    out = tmp_path / "out.ome.zarr"
    report = run_chunked(stage(Learned(model=str(saved))), source, out, block=BLOCK, workers=2)
    assert report["blocks"] > 1 and "training_steps" not in report
    got = vemviz.read_volume(out).numpy()
    model.norm = _with_volume_norm(Learned(), source, Runner(workers=1)).norm
    data = phantom.raw.numpy()
    if kind == "iso":
        want = reconstruct_z(data, factor, "inr", model=model).data
        classical = stages.iso(phantom.raw, factor=factor, method="cubic")[0].numpy()
    else:
        want = super_resolve(data, 2.0, "learned", model=model)[0]
        classical = stages.sr(phantom.raw, scale=2)[0].numpy()
    assert got.shape == want.shape and got.dtype == want.dtype
    differ = got != want  # float summation order may move a value across a rounding edge
    assert np.abs(got.astype(int) - want).max() <= 1 and differ.mean() < 1e-3
    assert np.abs(want.astype(int) - classical).mean() > 2  # the network's share is large


def test_inr_flow_half_is_planned_from_the_budget(source, tmp_path) -> None:
    """Learned iso's flow half runs on whole-plane slabs sized from the memory budget as for
    ``--method flow``, and a budget too small for one plane's flows fails before training."""
    from vemviz import inr
    from vemviz.blockwise import Learned

    training = inr.Training(steps=5, time_budget=None, batch=2, patch=24, device="cpu")
    stage = IsoBlocks(2.0, "inr", Learned(training=training))
    budget = 12 * 2**20
    slabs = stage.flow_slabs(
        source.shape, Work(tmp_path / "w"), Runner(workers=2, memory_budget=budget)
    )
    assert slabs.block == plan_grid(IsoBlocks(2.0, "flow"), source.shape, budget, 2).block
    assert slabs.block[1:] == source.shape[1:] and slabs.block[0] < slabs.shape[0] // 2
    out = tmp_path / "tiny.ome.zarr"
    with pytest.raises(VemvizError, match="smallest block"):
        run_chunked(stage, source, out, block=BLOCK, workers=2, memory_budget=2**20)
    assert not (Work.beside(out).root / "model.pt").exists()


def test_cubic_iso_float_within_tolerance(phantom, tmp_path) -> None:
    floats = phantom.raw.with_data(phantom.raw.numpy().astype(np.float32) / 255)
    want = stages.iso(floats, factor=2, method="cubic")[0].numpy()
    got = _chunked(IsoBlocks(2.0, "cubic"), floats, tmp_path)
    assert np.abs(got - want).max() < 1e-4


def test_align_apply_blocks(phantom, tmp_path) -> None:
    stack = phantom.raw.numpy()
    shifted = np.stack([np.roll(s, (z % 3, -(z % 2)), axis=(0, 1)) for z, s in enumerate(stack)])
    aligned, report = align_stack(shifted)
    volume = phantom.raw.with_data(shifted)
    got = _chunked(AlignApplyBlocks(report["transforms"]), volume, tmp_path)
    np.testing.assert_array_equal(got, aligned)


@pytest.mark.parametrize("mode", ["rigid", "elastic"])
def test_align_by_blocks_equals_in_memory(phantom, tmp_path, mode) -> None:
    """Registration reads the sections a few at a time (elastic also warps them one at a
    time), the blocks apply the transforms: the in-memory stack, report and transforms."""
    stack = phantom.raw.numpy().astype(np.float64)  # 3 MB, over the 2 MiB budget
    shifted = np.stack([np.roll(s, (z % 3, -(z % 2)), axis=(0, 1)) for z, s in enumerate(stack)])
    path = vemviz.write_volume(phantom.raw.with_data(shifted), tmp_path / "s.ome.zarr")
    out, report_path = tmp_path / "a.ome.zarr", tmp_path / "r.json"
    args = ["align", str(path), "--mode", mode, "--out", str(out), "--memory-budget", "2MiB",
            "--report", str(report_path)]  # fmt: skip
    assert main(args) == 0
    want, report = align_stack(shifted, mode)
    np.testing.assert_array_equal(vemviz.read_volume(out).numpy(), want)
    saved = json.loads((tmp_path / "a.ome.zarr.transforms.json").read_text())["transforms"]
    assert saved == json.loads(json.dumps(report["transforms"]))
    blocks = json.loads(report_path.read_text())
    assert blocks["blocks"] > 1 and blocks["mean_ncc_after"] == report["mean_ncc_after"]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("method", ["classical", "learned"])
def test_segment_labels_consistent_across_blocks(phantom, source, tmp_path, method) -> None:
    want = stages.segment(phantom.raw, target="mito", method=method)[0].numpy()
    stage = SegmentBlocks("mito", phantom.raw.voxel_size_nm, method=method)
    got = _chunked(stage, source, tmp_path)
    assert got.dtype == np.uint32 and got.max() == want.max() > 0
    assert _same_partition(got, want)
    # some objects really cross block faces, and each keeps a single id there
    crossing = [
        i for i in range(1, int(got.max()) + 1)
        if len({tuple(c // b for c, b in zip(p, BLOCK, strict=True))
                for p in np.argwhere(got == i)[::50]}) > 1
    ]  # fmt: skip
    assert crossing
    assert np.array_equal(np.unique(got), np.arange(got.max() + 1))


def test_resume_skips_finished_blocks(phantom, source, tmp_path) -> None:
    class Interrupted(Exception):
        pass

    class Failing(IsoBlocks):
        def compute(self, region, region_box, box):
            if box[0].start >= 16:
                raise Interrupted
            return super().compute(region, region_box, box)

    out = tmp_path / "iso.ome.zarr"
    with pytest.raises(Interrupted):
        run_chunked(Failing(2.0, "linear"), source, out, block=BLOCK, workers=1)
    work = Work.beside(out)
    done = sum(work.done("blocks", 1000))
    assert done > 0 and not out.exists()
    report = run_chunked(IsoBlocks(2.0, "linear"), source, out, block=BLOCK, workers=1)
    assert report["resumed"] and report["blocks_computed"] == report["blocks"] - done
    want = stages.iso(phantom.raw, factor=2, method="linear")[0].numpy()
    np.testing.assert_array_equal(vemviz.read_volume(out).numpy(), want)
    assert not work.root.exists()


def test_costliest_blocks_are_sent_first(source, tmp_path) -> None:
    from vemviz.chunked import Grid, Runner, pending_blocks

    stage = InpaintBlocks((20, 21), method="flow").prepare(source, Runner(workers=1))
    grid = Grid(source.shape, (4, *source.shape[1:]))
    order = [i for i, *_ in pending_blocks(stage, source, Work.beside(tmp_path / "o"), grid)]
    assert order[0] == 5 and sorted(order) == list(range(len(grid)))


def test_pyramid_and_voxel_size(phantom, source, tmp_path) -> None:
    out = tmp_path / "sr.ome.zarr"
    run_chunked(SrBlocks(4.0), source, out, block=(8, 256, 256), workers=2)
    root = zarr.open_group(str(out), mode="r")
    datasets = root.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1"]
    assert datasets[1]["coordinateTransformations"][0]["scale"] == [40.0, 4.0, 4.0]
    full, half = np.asarray(root["0"]), np.asarray(root["1"])
    assert half.shape == (24, 256, 256)
    means = full.reshape(24, 256, 2, 256, 2).astype(np.float32).mean(axis=(2, 4))
    assert np.abs(half.astype(np.float32) - means).max() <= 0.5


def test_plan_grid_follows_the_budget() -> None:
    grid = plan_grid(IsoBlocks(2.0, "flow"), (100, 1000, 1000), 2**30, 2)
    assert grid.block[1:] == (1000, 1000) and grid.block[0] % 2 == 0
    assert (np.prod(grid.block) * 12 + 1000 * 1000 * 160) * 2 <= 2**30
    # flow fields of a 4096^2 plane pair (~2.7 GB) do not fit 1 GiB for two workers at any depth
    with pytest.raises(VemvizError, match="smallest block"):
        plan_grid(IsoBlocks(2.0, "flow"), (100, 4096, 4096), 2**30, 2)
    small = plan_grid(SegmentBlocks("mito", (40, 8, 8)), (256, 2048, 2048), 2**30, 2)
    assert np.prod(small.block) * 160 * 2 <= 2**30
    roomy = plan_grid(IsoBlocks(2.0, "linear"), (64, 1024, 1024), 2**36, 2)
    assert len(roomy) >= 8  # a budget that fits everything still gives each worker 4 blocks
    assert parse_memory("4GiB") == 4 * 2**30 and parse_memory("512MB") == 512 * 2**20
    with pytest.raises(VemvizError, match="memory-budget"):
        parse_memory("lots")
    with pytest.raises(VemvizError, match="factor"):
        IsoBlocks(0.5, "linear")


def test_cli_routes_large_inputs_to_blocks(phantom, source, tmp_path) -> None:
    out = tmp_path / "iso.ome.zarr"
    report = tmp_path / "r.json"
    path = source.metadata["source"]
    args = ["iso", path, "--out", str(out), "--factor", "2", "--method", "linear",
            "--memory-budget", "300KiB", "--report", str(report)]  # fmt: skip
    assert main(args) == 0
    assert json.loads(report.read_text())["blocks"] > 1
    want = stages.iso(phantom.raw, factor=2, method="linear")[0].numpy()
    np.testing.assert_array_equal(vemviz.read_volume(out).numpy(), want)
    tif = tmp_path / "iso.tif"
    assert main([*args[:3], str(tif), *args[4:]]) == 2


def test_cli_runs_iso_by_blocks_when_its_output_outgrows_the_budget(
    phantom, source, tmp_path, capsys
) -> None:
    """The 384 KiB input fits 1 MiB; its x2 linear reconstruction (6 MB of working arrays)
    does not, so it runs by blocks (or says to write OME-Zarr), and in memory at 64 MiB."""
    path = source.metadata["source"]
    args = ["iso", path, "--factor", "2", "--method", "linear", "--memory-budget", "1MiB"]
    out = tmp_path / "iso.ome.zarr"
    assert main([*args, "--out", str(out)]) == 0
    assert "running block by block" in " ".join(capsys.readouterr().err.split())
    want = stages.iso(phantom.raw, factor=2, method="linear")[0].numpy()
    np.testing.assert_array_equal(vemviz.read_volume(out).numpy(), want)
    tif = tmp_path / "iso.tif"
    assert main([*args, "--out", str(tif)]) == 2
    assert "OME-Zarr" in capsys.readouterr().err and not tif.exists()
    assert main([*args[:-1], "64MiB", "--out", str(tif)]) == 0
    np.testing.assert_array_equal(vemviz.read_volume(tif).numpy(), want)


def test_cli_says_when_a_volume_over_the_budget_runs_in_memory(phantom, tmp_path, capsys):
    source = phantom.raw.with_data(phantom.raw.numpy().astype(np.float64))  # 3 MB
    path = str(vemviz.write_volume(source, tmp_path / "raw.ome.zarr"))
    out = str(tmp_path / "out.ome.zarr")
    probabilities = ["--probabilities", str(tmp_path / "p.tif")]  # no block path
    segment = ["segment", path, "--target", "mito", "--out", out]
    assert main([*segment, *probabilities, "--memory-budget", "2MiB"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "segment runs in memory (these options have no block path)" in said
    assert "above the memory budget" in said
    assert main([*segment, "--memory-budget", "2MiB"]) == 0
    assert "runs in memory" not in capsys.readouterr().err


def test_segment_model_and_probabilities_by_blocks_equal_in_memory(phantom, tmp_path, capsys):
    """`segment --model --probabilities` by blocks: the in-memory labels and probabilities of
    that model (not the shipped one's); a model for another target, or one that finds nothing,
    writes nothing and leaves no work folder."""
    source = phantom.raw.with_data(phantom.raw.numpy().astype(np.float64))  # 3 MB
    path = str(vemviz.write_volume(source, tmp_path / "raw.ome.zarr"))
    network = load_model(shipped_model("mito"))
    with torch.no_grad():
        network.head.bias += 1.0  # a model of one's own that says "mitochondrion" more readily
    model = tmp_path / "mine.pt"
    save_model(network, model, {})
    segment = ["segment", path, "--target", "mito", "--model", str(model)]
    memory, blocks = tmp_path / "memory", tmp_path / "blocks"
    assert main([*segment, "--out", f"{memory}.tif", "--probabilities", f"{memory}-p.tif"]) == 0
    assert main([*segment, "--out", f"{blocks}.ome.zarr", "--probabilities",
                 f"{blocks}-p.ome.zarr", "--memory-budget", "2MiB"]) == 0  # fmt: skip
    assert re.search(r"in \d+ blocks", capsys.readouterr().err)
    want, got = (vemviz.read_volume(f"{memory}.tif").numpy(),
                 vemviz.read_volume(f"{blocks}.ome.zarr").numpy())  # fmt: skip
    assert got.max() == want.max() > 0 and _same_partition(got, want)
    p_memory = vemviz.read_volume(f"{memory}-p.tif").numpy()
    p_blocks = vemviz.read_volume(f"{blocks}-p.ome.zarr")
    assert p_blocks.voxel_size_nm == phantom.raw.voxel_size_nm
    np.testing.assert_allclose(p_blocks.numpy(), p_memory, atol=1e-6)
    shipped = stages.segment(phantom.raw, target="mito")[0].numpy()
    assert np.count_nonzero(got) > 1.05 * np.count_nonzero(shipped)  # the given model was used
    for argv, said in (
        (["segment", path, "--target", "cells", "--model", str(model)], "not a cells one"),
        ([*segment[:-1], str(_silent_model(tmp_path))], "found no mito objects"),
    ):
        out = tmp_path / "none.ome.zarr"
        assert main([*argv, "--out", str(out), "--probabilities", str(tmp_path / "none-p.ome.zarr"),
                     "--memory-budget", "2MiB"]) == 2  # fmt: skip
        assert said in capsys.readouterr().err
        assert not out.exists() and not (tmp_path / "none-p.ome.zarr").exists()
        assert not Work.beside(out).root.exists()


def test_segment_prompts_by_blocks_choose_the_in_memory_objects(phantom, tmp_path, capsys):
    """Points and a box choose the same objects by blocks as in memory (read from the blocks'
    planes); a point outside the volume fails before any block, prompts on background after
    the blocks, and neither leaves an output or a work folder."""
    source = phantom.raw.with_data(phantom.raw.numpy().astype(np.float64))  # 3 MB
    path = str(vemviz.write_volume(source, tmp_path / "raw.ome.zarr"))
    labels = stages.segment(phantom.raw, target="mito")[0].numpy()
    a, b, c = np.argsort(-np.bincount(labels.ravel())[1:])[:3] + 1

    def point(i: int, positive: bool = True) -> dict:
        voxels = np.argwhere(labels == i)
        return {**dict(zip("zyx", map(int, voxels[len(voxels) // 2]), strict=True)),
                "positive": positive}  # fmt: skip

    z = int(np.median(np.argwhere(labels == b)[:, 0]))
    ys, xs = np.nonzero(labels[z] == b)
    box = {"z": z, "y0": int(ys.min()), "y1": int(ys.max()) + 1,
           "x0": int(xs.min()), "x1": int(xs.max()) + 1}  # fmt: skip
    background = dict(zip("zyx", map(int, np.argwhere(labels == 0)[0]), strict=True))
    results = {}
    for name, prompts, budget in (
        ("memory", {"points": [point(a), point(c), point(c, False)], "boxes": [box]}, "64MiB"),
        ("blocks", {"points": [point(a), point(c), point(c, False)], "boxes": [box]}, "2MiB"),
        ("outside", {"points": [{"z": 24, "y": 0, "x": 0}]}, "2MiB"),
        ("background", {"points": [background]}, "2MiB"),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps(prompts))
        out = tmp_path / f"{name}.ome.zarr"
        argv = ["segment", path, "--target", "mito", "--prompts", str(tmp_path / f"{name}.json"),
                "--out", str(out), "--memory-budget", budget]  # fmt: skip
        results[name] = (main(argv), " ".join(capsys.readouterr().err.split()), out)
    (rc, _, memory), (rc_blocks, said, blocks) = results["memory"], results["blocks"]
    assert rc == rc_blocks == 0 and re.search(r"in \d+ blocks", said)
    want, got = vemviz.read_volume(memory).numpy(), vemviz.read_volume(blocks).numpy()
    assert (want > 0)[labels == a].all() and (want > 0)[labels == b].all()
    assert not (want > 0)[labels == c].any()
    assert got.max() == want.max() >= 2 and _same_partition(got, want)
    for name, message in (("outside", "lies outside the volume"),
                          ("background", "the prompts select no object")):  # fmt: skip
        rc, said, out = results[name]
        assert rc == 2 and message in said
        assert not out.exists() and not Work.beside(out).root.exists()


def _silent_model(tmp_path: Path) -> Path:
    """The shipped mito model with an output layer that says "background" everywhere."""
    network = load_model(shipped_model("mito"))
    with torch.no_grad():
        network.head.bias.fill_(-30.0)
    path = tmp_path / "silent.pt"
    save_model(network, path, {})
    return path


def test_damage_detection_and_masked_fills_by_blocks_equal_in_memory(phantom, tmp_path) -> None:
    """Detection streams the slices, the damage mask is written to the work folder and the
    fills (flow for the missing slice, diffusion for the band and the blotch) run by blocks:
    the in-memory result; likewise a given mask through the CLI, whose mask is written out."""
    damaged, _ = simulate_damage(phantom.raw.numpy(), [(5, "band"), (14, "blotch")], seed=1)
    volume = phantom.raw.with_data(damaged.astype(np.float64))  # 3 MB
    path = vemviz.write_volume(volume, tmp_path / "damaged.ome.zarr")
    want, report = stages.inpaint(volume, detect=True)
    assert report["methods"] == {5: "diffusion", 9: "flow", 14: "diffusion"}
    blocks = run_chunked(InpaintBlocks(detect=True), vemviz.read_volume(path),
                         tmp_path / "detected.ome.zarr", block=BLOCK, workers=2)  # fmt: skip
    got = vemviz.read_volume(tmp_path / "detected.ome.zarr").numpy()
    np.testing.assert_array_equal(got, want.numpy())
    assert blocks["blocks"] > 1 and blocks["methods"] == report["methods"]
    assert blocks["detection"]["flagged"] == [5, 9, 14]

    mask = np.zeros(volume.shape, np.uint8)
    mask[5, 10:40, 20:70] = 1
    mask[9] = 1
    mask_path = vemviz.write_volume(volume.with_data(mask), tmp_path / "mask.tif")
    out, mask_out, report_path = (tmp_path / n for n in ("o.ome.zarr", "m.ome.zarr", "r.json"))
    args = ["inpaint", str(path), "--mask", str(mask_path), "--mask-out", str(mask_out),
            "--out", str(out), "--memory-budget", "2MiB", "--report", str(report_path)]  # fmt: skip
    assert main(args) == 0
    assert json.loads(report_path.read_text())["blocks"] > 1
    want = stages.inpaint(volume, mask=mask != 0)[0].numpy()
    np.testing.assert_array_equal(vemviz.read_volume(out).numpy(), want)
    np.testing.assert_array_equal(vemviz.read_volume(mask_out).numpy(), mask)


def test_diffusion_and_fine_tuning_by_blocks(phantom, tmp_path) -> None:
    """Whole slices filled by diffusion take the whole volume's intensity range, as in memory;
    --fine-tune tunes the model once before the blocks, on the central slab (here the whole
    phantom, so the same losses as in memory), and the blocks apply it (saved as float16)."""
    from vemviz.restore import DiffusionOptions

    volume = phantom.raw.with_data(phantom.raw.numpy().astype(np.float64))
    source = vemviz.read_volume(vemviz.write_volume(volume, tmp_path / "raw.ome.zarr"))
    want = stages.inpaint(volume, slices=(9,), method="diffusion")[0].numpy()
    plain = _chunked(InpaintBlocks((9,), method="diffusion"), source, tmp_path, "plain")
    np.testing.assert_array_equal(plain, want)
    options = DiffusionOptions(fine_tune=3, device="cpu")
    tuned_want, report = stages.inpaint(volume, slices=(9,), method="diffusion", fine_tune=3,
                                        device="cpu")  # fmt: skip
    stage = InpaintBlocks((9,), method="diffusion", diffusion=options)
    blocks = run_chunked(stage, source, tmp_path / "tuned.ome.zarr", block=BLOCK, workers=2)
    tuned = vemviz.read_volume(tmp_path / "tuned.ome.zarr").numpy()
    assert blocks["fine_tune"] == report["fine_tune"] and blocks["fine_tune"]["steps"] == 3
    effect = np.abs(tuned - plain)[9].mean()
    assert effect > 0 and np.abs(tuned - tuned_want.numpy())[9].mean() < 0.05 * effect
    np.testing.assert_array_equal(np.delete(tuned, 9, axis=0), np.delete(plain, 9, axis=0))


def test_inr_fills_by_blocks_equal_in_memory(phantom, tmp_path) -> None:
    """The inr networks (one per gap length: 1 and 2 here) are trained once before the blocks
    on the central slab (the whole phantom), and the blocks read the 8 good slices the fills
    use on each side: with the same training, the in-memory result (one torch thread, where
    training is deterministic)."""
    import torch

    from vemviz.inr import Architecture, Training
    from vemviz.restore import fill_damage

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        volume = phantom.raw.with_data(phantom.raw.numpy().astype(np.float64))
        source = vemviz.read_volume(vemviz.write_volume(volume, tmp_path / "raw.ome.zarr"))
        arch = Architecture(channels=8, blocks=2, hidden=8, neighbours=1)
        training = Training(steps=20, time_budget=None, batch=4, patch=24, device="cpu",
                            architecture=arch)  # fmt: skip
        mask = np.zeros(volume.shape, dtype=bool)
        mask[[9, 15, 16]] = True
        want, _ = fill_damage(volume.numpy(), mask, "inr", voxel_size_nm=volume.voxel_size_nm,
                              training=training)  # fmt: skip
        stage = InpaintBlocks((9, 15, 16), method="inr", training=training)
        report = run_chunked(stage, source, tmp_path / "out.ome.zarr", block=(4, 64, 64),
                             workers=2)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert report["blocks"] > 1 and sorted(report["inr_training"]) == [1, 2]
    np.testing.assert_array_equal(vemviz.read_volume(tmp_path / "out.ome.zarr").numpy(), want)


def test_pipeline_runs_its_stages_by_blocks_over_the_budget(phantom, tmp_path) -> None:
    """A pipeline's memory_budget works as --memory-budget: every stage with a block path runs
    by blocks into its workspace store, with the in-memory pipeline's results."""
    from vemviz.pipeline import run_pipeline

    source = phantom.raw.with_data(phantom.raw.numpy().astype(np.float64))  # 3 MB
    vemviz.write_volume(source, tmp_path / "raw.ome.zarr")
    stages_spec = [
        {"stage": "align", "mode": "elastic"},
        {"stage": "inpaint", "slices": [9], "method": "flow"},  # off the alignment's padding
        {"stage": "iso", "factor": 2, "method": "linear"},
        {"stage": "segment", "target": "mito", "method": "classical"},
        {"stage": "mesh"},
    ]
    runs = {}
    for budget in ("2MiB", "1GiB"):
        config = {"input": "raw.ome.zarr", "workspace": f"ws-{budget}",
                  "memory_budget": budget, "stages": stages_spec}  # fmt: skip
        runs[budget] = run_pipeline(config, tmp_path)
    blocks, memory = runs["2MiB"], runs["1GiB"]
    assert [r.report.get("chunked", False) for r in blocks[:4]] == [True] * 4
    assert not any(r.report.get("chunked", False) for r in memory)
    assert blocks[0].report["transforms"] == json.loads(json.dumps(memory[0].report["transforms"]))
    for a, b in zip(blocks[:3], memory[:3], strict=True):
        np.testing.assert_array_equal(vemviz.read_volume(a.output).numpy(),
                                      vemviz.read_volume(b.output).numpy())  # fmt: skip
    labels = [vemviz.read_volume(r[3].output).numpy() for r in (blocks, memory)]
    assert labels[0].max() > 0 and _same_partition(*labels)
    assert len(blocks[4].report["objects"]) == len(memory[4].report["objects"])
    assert blocks[4].report["objects"][0]["class"] == "mitochondrion"


def test_cli_runs_learned_methods_by_blocks(phantom, tmp_path, capsys) -> None:
    # float64 (3 MB): above the 2 MiB budget, whose 4x still holds two whole-plane blocks
    source = phantom.raw.with_data(phantom.raw.numpy().astype(np.float64))
    path = str(vemviz.write_volume(source, tmp_path / "raw.ome.zarr"))
    budget = ["--memory-budget", "2MiB", "--device", "cpu", "--time-budget", "1"]
    out, weights, report = tmp_path / "iso.ome.zarr", tmp_path / "iso.pt", tmp_path / "r.json"
    args = ["iso", path, "--out", str(out), "--factor", "2", "--method", "inr", *budget,
            "--save-model", str(weights), "--report", str(report)]  # fmt: skip
    assert main(args) == 0
    written = json.loads(report.read_text())
    assert written["blocks"] > 1 and written["training_steps"] > 0 and weights.is_file()
    assert vemviz.read_volume(out).shape == (47, *source.shape[1:])
    sr_out = tmp_path / "sr.ome.zarr"
    assert main(["sr", path, "--out", str(sr_out), "--scale", "2", "--method", "learned",
                 *budget]) == 0  # fmt: skip
    assert vemviz.read_volume(sr_out).shape == (source.shape[0], 256, 256)
    # the uncertainty by blocks (OME-Zarr) equals the in-memory one for the same model
    spread = {}
    for name, limit in (("blocks", "2MiB"), ("memory", "1GiB")):
        spread[name] = tmp_path / f"u_{name}.ome.zarr"
        assert main(["iso", path, "--out", str(tmp_path / f"iso_{name}.ome.zarr"), "--factor",
                     "2", "--method", "inr", "--model", str(weights), "--memory-budget", limit,
                     "--uncertainty", str(spread[name])]) == 0  # fmt: skip
    by_blocks, in_memory = (vemviz.read_volume(spread[k]) for k in ("blocks", "memory"))
    assert by_blocks.voxel_size_nm == in_memory.voxel_size_nm
    assert np.abs(by_blocks.numpy() - in_memory.numpy()).max() < 1e-3
    assert in_memory.numpy()[1::2].mean() > 0 and not in_memory.numpy()[::2].any()
    bad = tmp_path / "bad.ome.zarr"
    assert main([*args[:3], str(bad), *args[4:8], *budget, "--uncertainty", "u.tif"]) == 2
    assert "name the output NAME.ome.zarr" in capsys.readouterr().err
    assert main(["sr", path, "--out", str(bad), "--scale", "2", "--model", str(weights),
                 "--method", "learned", *budget]) == 2  # fmt: skip
    assert "trained for 'iso', not 'sr'" in capsys.readouterr().err
    assert not bad.exists()


def test_distributed_local_cluster(phantom, source, tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        iso = _chunked(IsoBlocks(2.0, "flow"), source, tmp_path, "iso", scheduler=address)
        labels = _chunked(
            SegmentBlocks("mito", phantom.raw.voxel_size_nm), source, tmp_path, "seg",
            scheduler=address,
        )  # fmt: skip
        # registration and detection send their tasks to the worker processes
        small = {"scheduler": address, "memory_budget": 2**21}
        aligned = _chunked(AlignBlocks(mode="elastic"), source, tmp_path, "align", **small)
        restored = _chunked(InpaintBlocks(detect=True, method="flow"), source, tmp_path,
                            "inpaint", **small)  # fmt: skip
    np.testing.assert_array_equal(iso, stages.iso(phantom.raw, factor=2, method="flow")[0].numpy())
    want = stages.segment(phantom.raw, target="mito", method="classical")[0].numpy()
    assert _same_partition(labels, want)
    np.testing.assert_array_equal(aligned, align_stack(phantom.raw.numpy(), "elastic")[0])
    np.testing.assert_array_equal(
        restored, stages.inpaint(phantom.raw, detect=True, method="flow")[0].numpy()
    )


def test_block_meshing_is_seam_free(phantom, tmp_path) -> None:
    from vemviz.blockmesh import mesh_blocks
    from vemviz.mesh import MeshOptions, mesh_labels

    labels = phantom.cells
    raw = MeshOptions(smooth_iterations=0, decimate=0.0, max_faces=10**9, units="nm")
    whole = mesh_labels(labels.numpy(), labels.voxel_size_nm, tmp_path / "whole", options=raw)
    blocks = mesh_blocks(labels, tmp_path / "blocks", options=raw, block=(8, 40, 40), workers=2)
    assert [o["label"] for o in blocks["objects"]] == [o["label"] for o in whole["objects"]]
    for a, b in zip(whole["objects"], blocks["objects"], strict=True):
        # the welded block surfaces are the whole-volume marching-cubes surfaces: the same
        # triangles, vertices at the cube-edge midpoints instead of mesh.LEVEL (0.5 - 1e-3)
        assert b["watertight"] and (a["faces"], a["vertices"]) == (b["faces"], b["vertices"])
        assert b["volume"] == pytest.approx(a["volume"], rel=1e-3)
        tolerance = 0.01 * max(labels.voxel_size_nm)
        assert b["bbox_min"] == pytest.approx(a["bbox_min"], abs=tolerance)
        assert b["bbox_max"] == pytest.approx(a["bbox_max"], abs=tolerance)


def test_block_meshing_of_thick_sections_in_worker_processes(phantom, tmp_path) -> None:
    """Interpolated thick sections by blocks: each object read on its box by the meshing
    processes (9 cells: more than one process), the same files as in memory."""
    from vemviz.blockmesh import mesh_blocks
    from vemviz.mesh import MeshOptions, mesh_labels

    labels = phantom.cells  # 40 nm sections of 8 nm pixels
    options = MeshOptions(units="nm", interpolate_z=True, workers=2)
    whole = mesh_labels(labels.numpy(), labels.voxel_size_nm, tmp_path / "whole", options=options)
    blocks = mesh_blocks(labels, tmp_path / "blocks", options=options, block=(8, 40, 40))
    assert len(whole["objects"]) == 9
    assert blocks["objects"] == whole["objects"]


def test_cli_mesh_by_blocks(phantom, tmp_path) -> None:
    path = tmp_path / "mito.ome.zarr"
    vemviz.write_volume(phantom.mito, path)
    out = tmp_path / "meshes"
    assert main(["mesh", str(path), "--out", str(out), "--memory-budget", "1MiB"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    ids = np.unique(phantom.mito.numpy())
    assert [o["label"] for o in manifest["objects"]] == ids[ids > 0].tolist()
    assert all(o["watertight"] for o in manifest["objects"])


def test_registration_and_detection_passes_run_in_process_when_workers_would_not_fit(
    phantom, source, capsys
) -> None:
    """Chunk tasks on every worker when all workers' steps fit the budget's whole-plane
    allowance; otherwise one slice at a time in this process, with a note."""
    from vemviz.blockwise import SWEEP_BYTES_PER_PLANE_PIXEL, _slice_source, _sweep_run

    step = SWEEP_BYTES_PER_PLANE_PIXEL * 128 * 128  # the phantom's 128 x 128 slices
    with Runner(workers=2, memory_budget=int(step / 2)) as runner:  # 2 steps fit in 4x
        assert _sweep_run(_slice_source(source, runner), runner) == runner.run
    with Runner(workers=2, memory_budget=int(step / 2.5)) as runner:
        assert _sweep_run(_slice_source(source, runner), runner) is None
    assert "run one slice at a time in this process" in " ".join(capsys.readouterr().err.split())
