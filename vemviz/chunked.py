"""Volumes larger than memory: a block engine that writes OME-Zarr block by block.

Method. The output volume is cut into a regular grid of *blocks* (`plan_grid`); each block is
a whole number of output zarr chunks, so no two blocks ever write the same chunk and blocks
can run in any order, in threads or on other machines. A `BlockStage` (see
`vemviz.blockwise`) says, for one output block, which input box it needs (the block plus a
*halo* sized by its method: z slices for inpainting and isotropic reconstruction, a few pixels
for bicubic upscaling, hundreds of nanometres for segmentation) and computes the block from
that input box by calling the stage's ordinary array function, then cropping the halo away.
Stages that change the shape map output blocks to input boxes (iso: z times the factor, sr:
y and x times the scale). Memory is bounded by the block size times the number of blocks in
flight, never by the volume: `plan_grid` picks the block shape from ``--memory-budget``, the
number of workers and the stage's working bytes (per voxel, plus per plane pixel for stages
that hold flow fields of whole planes), then splits further until each
worker has several blocks, so that one slow block does not leave the other workers idle.

Execution. Blocks run on a local thread pool, or, with ``--scheduler ADDRESS`` (or
``VEMVIZ_SCHEDULER``), as tasks on a dask.distributed cluster: each task reads its input box
(a lazily sliced dask array of the zarr input), computes and writes its part of the output
store itself, so only small task descriptions and no voxels travel through the client.
Progress is counted in finished blocks (`vemviz.progress.track`).

Pyramid. The store is NGFF 0.5 with 2x lateral levels down to ~256 px (mean for images,
nearest for labels) and voxel sizes in nm. Block starts in y and x are multiples of
``2**levels`` and every level's chunks are split like the blocks, so each block task also
writes its own share of every level: the pyramid costs no second pass over the data.

Resume. Everything happens in a work folder beside the output (``.NAME.chunked``) holding the
plan (stage, input, shapes, block grid), the output store and one empty marker file per
finished block (written after the block's chunks). Running the same command again after an
interruption skips the blocks that have markers; a different plan starts afresh. When every
block is written, the finished store is moved to the output name in one rename, so a reader
never sees a half-written result under that name.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr
from ome_zarr.format import FormatV05
from ome_zarr.io import parse_url
from ome_zarr.writer import write_multiscales_metadata

from vemviz.errors import Cancelled, VemvizError
from vemviz.io.zarr_io import pyramid_levels
from vemviz.progress import status, track
from vemviz.volume import Volume, VoxelSize

Box = tuple[slice, slice, slice]
SCHEDULER_ENV = "VEMVIZ_SCHEDULER"
DEFAULT_BUDGET = 4 * 2**30
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_CHUNK_XY = 512
# Blocks per worker when the budget allows bigger ones: blocks differ in cost (a slab with a
# damaged slice, a block full of objects), and smaller blocks keep every worker busy to the end.
BLOCKS_PER_WORKER = 4
MIN_BLOCK_VOXELS = 2**23
# Stages that need whole planes may use this multiple of the budget when even their smallest
# blocks (one plane per worker) are over it.
WHOLE_PLANE_ALLOWANCE = 4


def parse_memory(text: str) -> int:
    """Bytes from ``"4GiB"``, ``"512MB"``, ``"2G"`` or a plain number of bytes (binary units)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise VemvizError(f"--memory-budget must look like 4GiB or 512MiB, got {text!r}")
    value = float(match[1]) * _UNITS[match[2]]
    if value < 2**16:
        raise VemvizError(f"--memory-budget {text!r} is below 64 KiB")
    return int(value)


class BlockStage:
    """What the engine needs to know about a stage; subclasses live in `vemviz.blockwise`.

    Subclasses are dataclasses of plain values, so they pickle to distributed workers.
    """

    name = "stage"
    is_label = False
    full_planes = False  # blocks must span whole (y, x) planes (optical flow, warps)
    bytes_per_voxel = 16.0  # working memory per output voxel of a block, with the halo
    # and per pixel of a block's (y, x) plane whatever its depth (flow fields of a plane pair)
    bytes_per_plane_pixel = 0.0

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return shape

    def out_dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(dtype)

    def voxel_size(self, voxel: VoxelSize | None) -> VoxelSize | None:
        return voxel

    def unit(self) -> tuple[int, int, int]:
        """Block sizes (output voxels) must be multiples of this along each axis."""
        return (1, 1, 1)

    def source(self, box: Box, in_shape: tuple[int, int, int]) -> Box:
        """The input box (with halo, clipped to the volume) needed for output ``box``."""
        raise NotImplementedError

    def compute(self, region: np.ndarray, region_box: Box, box: Box) -> np.ndarray:
        """The output values of ``box`` from the input ``region`` read at ``region_box``."""
        raise NotImplementedError

    def prepare(self, volume: Volume, runner: Runner) -> BlockStage:
        """The stage with any whole-volume figures it needs (value range, damaged slices)."""
        return self

    def cost(self, box: Box) -> float:
        """Relative work of output ``box``; the costliest blocks are sent first."""
        return 1.0

    def execute(self, volume: Volume, work: Work, grid: Grid, runner: Runner) -> int:
        """Compute the blocks not done yet into ``work.store``; returns how many ran."""
        return run_blocks(self, volume, work, grid, runner)

    def report(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        fields = asdict(self) if is_dataclass(self) else {}
        return {"stage": self.name, **{k: _jsonable(v) for k, v in fields.items()}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return f"array{value.shape}"
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# --- the block grid ---------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A regular grid of output blocks over ``shape``."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block, strict=True))  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    def index(self, i: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.unravel_index(i, self.counts))  # type: ignore[return-value]

    def box(self, i: int) -> Box:
        return tuple(
            slice(k * b, min((k + 1) * b, s))
            for k, b, s in zip(self.index(i), self.block, self.shape, strict=True)
        )  # type: ignore[return-value]

    @property
    def levels(self) -> int:
        """Pyramid levels below full resolution (`vemviz.io.zarr_io.pyramid_levels`)."""
        return pyramid_levels(self.shape)

    def chunks(self, level: int = 0) -> tuple[int, int, int]:
        """zarr chunks of ``level``: the block (halved per level), y/x split into 512 px where
        that still tiles the blocks, so every chunk of every level belongs to one block."""
        out = [self.block[0]]
        for b, s in zip(self.block[1:], self.shape[1:], strict=True):
            whole = b >= s
            b, s = max(b >> level, 1), max(s >> level, 1)
            out.append(_CHUNK_XY if b % _CHUNK_XY == 0 or (whole and s > _CHUNK_XY) else b)
        shape = _level_shape(self.shape, level)
        return tuple(min(c, n) for c, n in zip(out, shape, strict=True))  # type: ignore[return-value]


def _unit(stage: BlockStage, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Block multiples: the stage's, and 2**levels laterally so pyramid levels split evenly."""
    step = 2 ** pyramid_levels(shape)
    unit = stage.unit()
    return (unit[0], math.lcm(unit[1], step), math.lcm(unit[2], step))


def plan_grid(
    stage: BlockStage,
    in_shape: tuple[int, int, int],
    budget: int,
    workers: int,
    block: Sequence[int] | None = None,
) -> Grid:
    """Block grid for ``stage``: the given ``block``, or one from the budget.

    Without ``block``, blocks are halved until one per worker fits ``budget``, then further
    (down to `MIN_BLOCK_VOXELS`) until each worker has `BLOCKS_PER_WORKER` of them.
    """
    shape = stage.out_shape(in_shape)
    unit = _unit(stage, shape)
    if block is not None:
        chosen = [
            min(math.ceil(int(b) / u) * u, s) for b, u, s in zip(block, unit, shape, strict=True)
        ]
        if stage.full_planes:
            chosen[1:] = shape[1:]
        return Grid(shape, tuple(chosen))  # type: ignore[arg-type]
    chosen = list(shape)
    axes = (0,) if stage.full_planes else (0, 1, 2)

    def need() -> float:
        """Working bytes of all workers' blocks at the current choice."""
        plane = chosen[1] * chosen[2]
        per_block = plane * (chosen[0] * stage.bytes_per_voxel + stage.bytes_per_plane_pixel)
        return per_block * max(workers, 1)

    def halve() -> bool:
        axis = max(axes, key=lambda a: chosen[a] / unit[a])
        halved = max(unit[axis], (chosen[axis] // 2) // unit[axis] * unit[axis])
        if halved == chosen[axis]:
            return False
        chosen[axis] = halved
        return True

    while need() > budget and halve():
        pass
    while (
        len(Grid(shape, tuple(chosen))) < BLOCKS_PER_WORKER * max(workers, 1)  # type: ignore[arg-type]
        and np.prod(chosen) >= 2 * MIN_BLOCK_VOXELS
        and halve()
    ):
        pass
    if need() > budget * WHOLE_PLANE_ALLOWANCE:
        raise VemvizError(
            f"{stage.name}: the smallest block still needs about {need() / 2**20:.0f} MiB; "
            "raise --memory-budget or use fewer workers"
        )
    return Grid(shape, tuple(chosen))  # type: ignore[arg-type]


# --- the output store -------------------------------------------------------------------


def _level_shape(shape: tuple[int, int, int], level: int) -> tuple[int, int, int]:
    return (shape[0], max(shape[1] >> level, 1), max(shape[2] >> level, 1))


def create_store(
    path: Path, grid: Grid, dtype: np.dtype, voxel: VoxelSize | None, name: str
) -> None:
    """An empty NGFF 0.5 multiscale image at ``path``: level 0 plus its pyramid levels."""
    fmt = FormatV05()
    root = zarr.group(store=parse_url(str(path), mode="w", fmt=fmt).store)
    datasets = []
    for level in range(grid.levels + 1):
        root.create_array(
            str(level), shape=_level_shape(grid.shape, level), dtype=dtype, fill_value=0,
            chunks=grid.chunks(level), dimension_names=("z", "y", "x"),
        )  # fmt: skip
        scale = [1.0, 2.0**level, 2.0**level]
        if voxel is not None:
            scale = [v * f for v, f in zip(voxel, scale, strict=True)]
        datasets.append({
            "path": str(level),
            "coordinateTransformations": [{"type": "scale", "scale": scale}],
        })  # fmt: skip
    units = dict.fromkeys("zyx", "nanometer") if voxel is not None else None
    write_multiscales_metadata(root, datasets, fmt=fmt, axes="zyx", axes_units=units, name=name)


def halve(values: np.ndarray, is_label: bool) -> np.ndarray:
    """2x lateral downsampling (odd last rows/columns dropped): mean, or nearest for labels."""
    h, w = values.shape[1] // 2, values.shape[2] // 2
    if is_label:
        return values[:, : 2 * h : 2, : 2 * w : 2]
    blocks = values[:, : 2 * h, : 2 * w].reshape(values.shape[0], h, 2, w, 2)
    mean = blocks.mean(axis=(2, 4), dtype=np.float32)
    if np.issubdtype(values.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(values.dtype)


def write_block(store: Path, array: str, box: Box, values: np.ndarray) -> None:
    """Write ``values`` into ``store/array`` at ``box`` (a whole number of chunks)."""
    zarr.open_array(str(Path(store) / array), mode="r+")[box] = values


def write_levels(store: Path, box: Box, values: np.ndarray, is_label: bool, levels: int) -> None:
    """Write a block at full resolution and its share of every pyramid level.

    Block starts are multiples of ``2**levels`` in y and x (`plan_grid`), so halving the
    block gives exactly its part of each level.
    """
    write_block(store, "0", box, values)
    for level in range(1, levels + 1):
        values = halve(values, is_label)
        z, y, x = box
        box = (z, slice(y.start // 2, y.start // 2 + values.shape[1]),
               slice(x.start // 2, x.start // 2 + values.shape[2]))  # fmt: skip
        write_block(store, str(level), box, values)


def read_box(store: Path, array: str, box: Box) -> np.ndarray:
    return np.asarray(zarr.open_array(str(Path(store) / array), mode="r")[box])


# --- execution --------------------------------------------------------------------------


def scheduler_address(scheduler: str | None) -> str | None:
    """``--scheduler`` if given, else ``$VEMVIZ_SCHEDULER``, else None (local threads)."""
    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    return address.strip() if address else None


class Runner:
    """Runs block tasks locally (threads) or on a dask.distributed cluster; ``memory_budget``
    (bytes) is what a stage's further passes plan their blocks from (`plan_grid`)."""

    def __init__(
        self,
        scheduler: str | None = None,
        workers: int | None = None,
        memory_budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.memory_budget = memory_budget
        self.address = scheduler_address(scheduler)
        self.client = None
        if self.address is not None:
            try:
                from distributed import Client
            except ImportError as exc:
                raise VemvizError(
                    "--scheduler needs dask.distributed: pip install 'vemviz[distributed]'"
                ) from exc
            try:
                self.client = Client(self.address, timeout="20s")
            except OSError as exc:
                raise VemvizError(f"cannot reach the dask scheduler {self.address}: {exc}") from exc
            info = self.client.scheduler_info()
            self.workers = max(
                sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()), 1
            )
        else:
            self.workers = workers or os.cpu_count() or 1

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, tasks: Sequence[Callable[[], Any]], description: str) -> list:
        """Call every task (no arguments), with progress; results in completion order."""
        return list(track(self._completed(tasks), description, total=len(tasks)))

    def _completed(self, tasks: Sequence[Callable[[], Any]]) -> Iterator[Any]:
        if not tasks:
            return
        if self.client is not None:
            from distributed import as_completed

            futures = [self.client.submit(task, pure=False) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                self.client.cancel(futures)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending = set()
            try:
                for task in tasks:
                    pending.add(pool.submit(task))
                    if len(pending) >= self.workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        yield from (f.result() for f in done)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            finally:
                for future in pending:
                    future.cancel()

    def compute(self, *collections: Any) -> tuple:
        if self.client is not None:
            return tuple(self.client.compute(list(collections), sync=True))
        return dask.compute(*collections, scheduler="threads", num_workers=self.workers)


# --- the work folder --------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """The resumable work folder of one chunked run (beside its output)."""

    root: Path

    @classmethod
    def beside(cls, out: Path) -> Work:
        out = Path(out)
        return cls(out.with_name(f".{out.name}.chunked"))

    @property
    def store(self) -> Path:
        return self.root / "out.ome.zarr"

    def marker(self, step: str, i: int) -> Path:
        return self.root / "done" / step / str(i)

    def done(self, step: str, n: int) -> list[bool]:
        folder = self.root / "done" / step
        names = set(os.listdir(folder)) if folder.is_dir() else set()
        return [str(i) in names for i in range(n)]

    def open(self, plan: dict[str, Any]) -> bool:
        """Use the folder for ``plan``; True when it resumes an earlier run of the same plan."""
        plan_file = self.root / "plan.json"
        if plan_file.is_file() and json.loads(plan_file.read_text()) == plan:
            return True
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "done").mkdir(parents=True)
        plan_file.write_text(json.dumps(plan, indent=1))
        return False


def mark_done(marker: Path) -> None:
    """Record a finished block (an empty file), so that a resumed run skips it."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def read_region(region: da.Array) -> np.ndarray:
    """A task's lazy input region as an array, computed in the task's own thread."""
    return np.asarray(region.compute(scheduler="synchronous"))


@dataclass(frozen=True)
class _BlockTask:
    stage: BlockStage
    region: da.Array  # the input box, lazily
    region_box: Box
    box: Box
    store: Path
    marker: Path
    levels: int

    def __call__(self) -> int:
        region = read_region(self.region)
        values = self.stage.compute(region, self.region_box, self.box)
        write_levels(self.store, self.box, values, self.stage.is_label, self.levels)
        mark_done(self.marker)
        return int(values.size)


def lazy(volume: Volume) -> da.Array:
    """The volume's voxels as a dask array (in-memory arrays are wrapped, not copied)."""
    data = volume.data
    return data if volume.is_lazy else da.from_array(data, chunks=(64, 1024, 1024))


def region_of(data: da.Array, box: Box) -> da.Array:
    """The lazily sliced input box, culled to the tasks it needs (small to send to a worker)."""
    (region,) = dask.optimize(data[box])
    return region


def pending_blocks(
    stage: BlockStage, volume: Volume, work: Work, grid: Grid
) -> Iterator[tuple[int, Box, Box, Any]]:
    """(index, box, input box, lazy input region) of every block not yet marked done, costliest
    first (`BlockStage.cost`), so that no long block starts last while the other workers idle."""
    data = lazy(volume)
    done = work.done("blocks", len(grid))
    pending = [i for i in range(len(grid)) if not done[i]]
    for i in sorted(pending, key=lambda i: -stage.cost(grid.box(i))):
        box = grid.box(i)
        region_box = stage.source(box, volume.shape)
        yield i, box, region_box, region_of(data, region_box)


def run_blocks(
    stage: BlockStage,
    volume: Volume,
    work: Work,
    grid: Grid,
    runner: Runner,
) -> int:
    """Compute every block not yet marked done into ``work.store``; returns blocks computed."""
    tasks = [
        _BlockTask(stage, region, region_box, box, work.store, work.marker("blocks", i),
                   grid.levels)
        for i, box, region_box, region in pending_blocks(stage, volume, work, grid)
    ]  # fmt: skip
    runner.run(tasks, f"{stage.name}: blocks ({len(grid) - len(tasks)} done before)")
    return len(tasks)


def place(store: Path, out: Path) -> None:
    """Move a finished store to ``out``, replacing what is there."""
    out = Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        store.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        store.rename(out)


def finish(work: Work, out: Path) -> None:
    """Move the finished store to ``out`` (replacing it) and remove the work folder."""
    place(work.store, out)
    shutil.rmtree(work.root, ignore_errors=True)


def check_output(out: Path) -> None:
    if Path(out).suffix.lower() != ".zarr":
        raise VemvizError(
            f"chunked processing writes OME-Zarr: name the output NAME.ome.zarr, not {out}"
        )


def run_chunked(
    stage: BlockStage,
    volume: Volume,
    out: Path,
    *,
    memory_budget: int = DEFAULT_BUDGET,
    scheduler: str | None = None,
    workers: int | None = None,
    block: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run ``stage`` block by block from ``volume`` into the OME-Zarr ``out``; returns a report.

    Resumes an interrupted run of the same plan (finished blocks are skipped).
    """
    check_output(out)
    with Runner(scheduler, workers, memory_budget) as runner:
        stage = stage.prepare(volume, runner)
        grid = plan_grid(stage, volume.shape, memory_budget, runner.workers, block)
        work = Work.beside(out)
        plan = {
            **stage.describe(),
            "input": str(volume.metadata.get("source", "")),
            "in_shape": list(volume.shape),
            "in_dtype": str(volume.dtype),
            "out_shape": list(grid.shape),
            "block": list(grid.block),
        }
        resumed = work.open(plan)
        if not resumed:
            create_store(
                work.store, grid, stage.out_dtype(volume.dtype),
                stage.voxel_size(volume.voxel_size_nm), Path(out).name,
            )  # fmt: skip
        try:
            computed = stage.execute(volume, work, grid, runner)
        except (KeyboardInterrupt, Cancelled):
            status(f"interrupted: finished blocks are kept in {work.root}; "
                   "run the same command again to resume")  # fmt: skip
            raise
        finish(work, out)
    return {
        "chunked": True,
        "blocks": len(grid),
        "blocks_computed": computed,
        "block_shape": list(grid.block),
        "workers": runner.workers,
        "scheduler": runner.address or "local threads",
        "resumed": resumed,
        "shape_out": list(grid.shape),
        **stage.report(),
    }
