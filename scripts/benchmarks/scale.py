"""Chunked processing of a volume larger than the budget: peak memory, throughput, 1 vs 2 workers.

A uint8 volume (default 256 x 2048 x 2048 = 1 GiB) is tiled from a 32 x 256 x 256 phantom
(mirrored, so structures continue across tiles), with blank slices to inpaint, and written slab
by slab to a temporary OME-Zarr. Each stage runs through the CLI (``vemviz inpaint|iso|segment
IN --out OUT.ome.zarr --memory-budget B --scheduler ADDRESS``) on a dask.distributed cluster
started here the way README describes (``dask scheduler`` and ``dask worker --nworkers N
--nthreads 1``, 1 or 2 single-threaded worker processes). Peak memory is the largest sum of the
resident set sizes of every process of the run (the CLI, the scheduler, the workers and their
nannies), sampled every 0.1 s from the OS (psutil).
Throughput is megavoxels per second of wall time (input and output voxels). A small volume is
also run chunked (small blocks) and in memory, and the results compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import ROOT, Result

STAGES = {
    "inpaint": ["inpaint", "--method", "flow"],
    "iso": ["iso", "--factor", "2"],
    "segment": ["segment", "--target", "mito"],  # + --method from --segment-method
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", default="256,2048,2048", help="Z,Y,X of the volume")
    parser.add_argument("--stages", default="inpaint,iso,segment")
    parser.add_argument("--iso-method", default="flow", choices=("flow", "linear", "cubic", "inr"))
    parser.add_argument("--time-budget", type=float,
                        help="inr: training seconds (default: the CLI's)")  # fmt: skip
    parser.add_argument("--segment-method", default="classical", choices=("classical", "learned"))
    parser.add_argument("--workers", default="1,2", help="worker process counts to compare")
    parser.add_argument("--memory-budget", default="1GiB")
    parser.add_argument("--tmp", type=Path, help="scratch folder (default: a temporary one)")


def make_volume(shape: tuple[int, int, int], path: Path) -> list[int]:
    """Write the tiled phantom to ``path`` (OME-Zarr) slab by slab; returns the blank slices."""
    from vemviz.chunked import Grid, create_store, write_levels
    from vemviz.phantom import make_phantom

    tile = make_phantom((32, 256, 256), (40.0, 8.0, 8.0), seed=3).raw.numpy()
    mirrored = tile
    for axis in range(3):
        mirrored = np.concatenate([mirrored, np.flip(mirrored, axis)], axis=axis)
    blank = sorted({shape[0] // 5, shape[0] // 2, shape[0] // 2 + 1, (4 * shape[0]) // 5})
    grid = Grid(shape, (32, shape[1], shape[2]))
    create_store(path, grid, np.dtype(np.uint8), (40.0, 8.0, 8.0), path.name)
    for i in range(len(grid)):
        box = grid.box(i)
        zi, yi, xi = (np.arange(b.start, b.stop) % m for b, m in zip(
            box, mirrored.shape, strict=True))  # fmt: skip
        slab = mirrored[np.ix_(zi, yi, xi)]
        for z in blank:
            if box[0].start <= z < box[0].stop:
                slab[z - box[0].start] = 0
        write_levels(path, box, slab, False, grid.levels)
    return blank


def _tree_rss(roots: list[psutil.Process]) -> int:
    total, seen = 0, set()
    for root in roots:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    return total


@contextmanager
def cluster(workers: int, folder: Path, env: dict[str, str]) -> Iterator[tuple[str, list]]:
    """A dask scheduler and ``workers`` single-threaded worker processes that import vemviz
    when they start (``--preload``), the README way."""
    dask = Path(sys.executable).with_name("dask")
    info = folder / f"scheduler-{workers}.json"
    info.unlink(missing_ok=True)
    scheduler = subprocess.Popen(
        [str(dask), "scheduler", "--scheduler-file", str(info), "--port", "0", "--no-dashboard"],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while not info.exists():
        time.sleep(0.2)
    time.sleep(0.5)
    address = json.loads(info.read_text())["address"]
    worker = subprocess.Popen(
        [str(dask), "worker", address, "--nworkers", str(workers), "--nthreads", "1",
         "--memory-limit", "0", "--no-dashboard", "--preload", "vemviz.blockwise"],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from distributed import Client

    with Client(address) as client:
        client.wait_for_workers(workers, timeout=120)
    try:
        yield address, [psutil.Process(scheduler.pid), psutil.Process(worker.pid)]
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
            proc.wait(timeout=60)


def run_cli(
    command: list[str], env: dict[str, str], others: list[psutil.Process]
) -> tuple[float, float, str]:
    """Run the CLI; returns (seconds, peak MiB of it plus ``others`` and children, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vemviz", *command], env=env, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        last = time.perf_counter()
        while not stop.is_set():
            peak = max(peak, _tree_rss([psutil.Process(proc.pid), *others]))
            time.sleep(0.1)
            if time.perf_counter() - last > 60:  # for runs stopped before they finish
                last = time.perf_counter()
                print(f"  {command[0]}: {last - start:.0f} s, peak so far {peak / 2**20:.0f} MiB",
                      flush=True)  # fmt: skip

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {err[-2000:]}")
    return seconds, peak / 2**20, err


def compare_small(tmp: Path, iso_method: str, segment_method: str) -> list[str]:
    """Chunked (small blocks) against in-memory results on a volume that fits (not for inr,
    which trains a model in each: its blocks are checked against one model by
    ``tests/test_chunked.py -k learned_blocks``)."""
    import vemviz
    from vemviz import blockwise, chunked, stages
    from vemviz.phantom import make_phantom

    raw = make_phantom((24, 128, 128), (40.0, 8.0, 8.0), seed=3, damaged_slices=(9,)).raw
    source = tmp / "small.ome.zarr"
    vemviz.write_volume(raw, source)
    lazy = vemviz.read_volume(source)
    notes = []
    cases = [
        ("inpaint", blockwise.InpaintBlocks((9,), method="flow"),
         stages.inpaint(raw, slices=(9,), method="flow")[0]),
        ("iso", blockwise.IsoBlocks(2.0, iso_method),
         None if iso_method == "inr" else stages.iso(raw, factor=2, method=iso_method)[0]),
        ("segment", blockwise.SegmentBlocks("mito", raw.voxel_size_nm, method=segment_method),
         stages.segment(raw, target="mito", method=segment_method)[0]),
    ]  # fmt: skip
    if iso_method == "inr":
        cases = [case for case in cases if case[0] != "iso"]
    for name, stage, reference in cases:
        out = tmp / f"small-{name}.ome.zarr"
        chunked.run_chunked(stage, lazy, out, block=(8, 64, 64), workers=2)
        got, want = vemviz.read_volume(out).numpy(), reference.numpy()
        if name == "segment":
            pairs = {(int(a), int(b)) for a, b in zip(got.ravel(), want.ravel(), strict=True)}
            same = len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
            notes.append(f"{name}: chunked == in-memory up to renumbering: {same} "
                         f"({int(got.max())} vs {int(want.max())} objects)")  # fmt: skip
        else:
            diff = int(np.abs(got.astype(int) - want.astype(int)).max())
            notes.append(f"{name}: max |chunked - in-memory| = {diff} on a 24x128x128 phantom")
    return notes


def run(args: argparse.Namespace) -> Result:
    shape = tuple(int(v) for v in args.shape.split(","))
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="vemviz-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    source = tmp / "input.ome.zarr"
    start = time.perf_counter()
    blank = make_volume(shape, source)
    make_seconds = time.perf_counter() - start
    mvox = float(np.prod(shape)) / 1e6
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VEMVIZ_PROGRESS": "off"}
    equal = compare_small(tmp, args.iso_method, args.segment_method)
    print("\n".join(equal), flush=True)
    rows = []
    stage_args = dict(STAGES)
    stage_args["inpaint"] = [*STAGES["inpaint"], "--slices", ",".join(map(str, blank))]
    stage_args["iso"] = [*STAGES["iso"], "--method", args.iso_method]
    if args.iso_method == "inr" and args.time_budget is not None:
        stage_args["iso"] += ["--time-budget", str(args.time_budget)]
    stage_args["segment"] = [*STAGES["segment"], "--method", args.segment_method]
    for name in args.stages.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            with cluster(workers, tmp, env) as (address, processes):
                out = tmp / f"{name}-{workers}.ome.zarr"
                command = [
                    *stage_args[name][:1], str(source), *stage_args[name][1:], "--out", str(out),
                    "--memory-budget", args.memory_budget, "--scheduler", address,
                ]  # fmt: skip
                os.sync()  # no run pays for writing back the previous run's output
                load = os.getloadavg()[0]
                seconds, peak, _ = run_cli(command, env, processes)
                out_mvox = float(np.prod(__import__("vemviz").read_volume(out).shape)) / 1e6
                rows.append({
                    "stage": {"iso": f"iso x2 ({args.iso_method})",
                              "segment": f"segment ({args.segment_method})"}.get(name, name),
                    "workers": workers, "seconds": round(seconds, 1),
                    "in MVox/s": round(mvox / seconds, 2),
                    "out MVox/s": round(out_mvox / seconds, 2),
                    "peak RSS MiB (all processes)": round(peak), "load 1 min": round(load, 2),
                })  # fmt: skip
                print(rows[-1], flush=True)
                shutil.rmtree(out, ignore_errors=True)
    notes = [
        f"volume {shape} uint8 = {np.prod(shape) / 2**30:.2f} GiB, written in {make_seconds:.0f} s;"
        f" --memory-budget {args.memory_budget}; blank slices {blank}",
        f"load average before: {', '.join(f'{v:.2f}' for v in load_before)} (shared machine)",
    ]
    for name in {r["stage"].split()[0] for r in rows}:
        one = [r for r in rows if r["stage"].startswith(name) and r["workers"] == 1]
        two = [r for r in rows if r["stage"].startswith(name) and r["workers"] == 2]
        if one and two:
            notes.append(
                f"{name}: 2 workers / 1 worker = {one[0]['seconds'] / two[0]['seconds']:.2f}x"
            )
    notes += equal
    if args.tmp is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return Result("Chunked processing: peak memory and throughput", rows, notes)
