"""Meshing label volumes larger than memory: marching cubes by blocks, welded per object.

Method. Marching cubes builds a surface cube by cube: the triangles of one cube depend only on
the label values at its eight corners (skimage's Lewiner variant resolves ambiguous cubes from
those values too; both this module and `vemviz.mesh` use the level `mesh.LEVEL`, a hair below
0.5, so they resolve them alike). The label volume, padded conceptually with one voxel of
background on every side (as `vemviz.mesh` pads each object's box, so every object is closed),
is cut into blocks of samples that overlap by one voxel layer with the next block, so the
blocks' cubes tile the volume's cubes exactly once. Each block runs marching cubes for every
label in it (on the label's box inside the block) and keeps the triangles with vertices as
integer keys: for a binary mask every vertex lies on a cube edge within 1e-3 of its midpoint, so
twice its global coordinate rounds to an integer that names the edge, and a vertex on a block
face gets the same key from both blocks.

Merging. All pieces of one label are concatenated and vertices with equal keys welded
(`numpy.unique`), which reproduces the whole-volume marching-cubes surface of that object
exactly -- no cracks, no duplicated faces, one mesh per id -- before the usual smoothing,
decimation and export of `vemviz.mesh` (`refine`, `write_meshes`). Blocks run locally or on a
dask.distributed cluster (`vemviz.chunked.Runner`); memory is bounded by the block size plus the
raw marching-cubes surfaces of the objects (about 40 bytes per vertex), not by the volume.

Thick sections (`vemviz.mesh.MeshOptions.interpolate_z`): shape-based interpolation works on
each object's in-plane distance maps, which a block cannot compute from its part of the
object. The blocks then only find every label's bounding box; each object is read on its box
alone and meshed exactly as in memory, by the same worker processes (`vemviz.mesh`'s
``surface_mapper``). Memory is bounded by the largest objects' boxes (about
`_interpolated_bytes` per voxel, times the processes, which are fewer when the budget asks);
an object that does not fit alone is refused by label before any meshing.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage as ndi
from skimage.measure import marching_cubes

from vemviz import mesh as mesh_mod
from vemviz.chunked import Box, Grid, Runner, lazy, read_region, region_of
from vemviz.errors import VemvizError
from vemviz.volume import Volume, VoxelSize

_BYTES_PER_VOXEL = 48.0
EMPTY = "the label volume is empty (no non-zero voxels): nothing to mesh"


@dataclass(frozen=True)
class _MeshTask:
    """Marching cubes for every label of one block of the padded volume."""

    region: Any  # labels of the block's samples that lie inside the volume
    pad_before: tuple[int, int, int]  # background samples before the region (volume border)
    pad_after: tuple[int, int, int]
    origin: tuple[int, int, int]  # padded-volume index of the first sample
    core: Box  # the samples this block owns (for voxel counts), local to its samples
    out: Path
    surfaces: bool = True  # False: only each label's voxel count and bounding box

    def __call__(self) -> int:
        labels = read_region(self.region).astype(np.int64)
        samples = np.pad(labels, list(zip(self.pad_before, self.pad_after, strict=True)))
        counts = np.bincount(samples[self.core].ravel())
        pieces: dict[str, np.ndarray] = {}
        boxes = []  # label, then start and stop per axis in volume coordinates
        for index, box in enumerate(ndi.find_objects(samples)):
            if box is None:
                continue
            label = index + 1
            starts = [b.start + o - 1 for b, o in zip(box, self.origin, strict=True)]
            stops = [b.stop + o - 1 for b, o in zip(box, self.origin, strict=True)]
            boxes.append([label, *starts, *stops])
            if not self.surfaces:
                continue
            grown = tuple(
                slice(max(s.start - 1, 0), min(s.stop + 1, n))
                for s, n in zip(box, samples.shape, strict=True)
            )
            mask = samples[grown] == label
            if mask.all() or min(mask.shape) < 2:
                continue
            verts, faces, _, _ = marching_cubes(mask.astype(np.float32), level=mesh_mod.LEVEL)
            start = np.array([s.start for s in grown]) + np.array(self.origin)
            keys = np.rint((verts + start) * 2).astype(np.int64)
            pieces[f"k{label}"] = keys
            pieces[f"f{label}"] = faces.astype(np.int32)
        voxels = np.flatnonzero(counts[1:]) + 1
        np.savez(self.out, voxels=np.stack([voxels, counts[voxels]]),
                 boxes=np.asarray(boxes, np.int64).reshape(-1, 7), **pieces)  # fmt: skip
        return len(boxes)


def _tasks(data: Any, grid: Grid, folder: Path, surfaces: bool) -> list[_MeshTask]:
    """One task per block of the padded volume's samples (blocks overlap by one layer)."""
    shape = tuple(s - 2 for s in grid.shape)
    tasks = []
    for i in range(len(grid)):
        box = grid.box(i)
        samples = [(b.start, min(b.stop + 1, n)) for b, n in zip(box, grid.shape, strict=True)]
        # padded index p is volume index p - 1
        inside = [(max(a - 1, 0), min(b - 1, n)) for (a, b), n in zip(samples, shape, strict=True)]
        before = tuple(max(1 - a, 0) for a, _ in samples)
        after = tuple((b - a) - (hi - lo) - pre for (a, b), (lo, hi), pre in zip(
            samples, inside, before, strict=True))  # fmt: skip
        core = tuple(slice(0, b.stop - b.start) for b in box)
        region_box = tuple(slice(lo, hi) for lo, hi in inside)
        empty = any(hi <= lo for lo, hi in inside)
        region = (
            da.zeros([max(hi - lo, 0) for lo, hi in inside], dtype=data.dtype)
            if empty else region_of(data, region_box)
        )  # fmt: skip
        tasks.append(_MeshTask(
            region, before, after, tuple(a for a, _ in samples), core, folder / f"{i}.npz",
            surfaces,
        ))  # fmt: skip
    return tasks


def _weld(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (keys, faces) pieces and merge vertices with equal keys."""
    keys, faces, offset = [], [], 0
    for k, f in pieces:
        keys.append(k)
        faces.append(f + offset)
        offset += len(k)
    unique, inverse = np.unique(np.concatenate(keys), axis=0, return_inverse=True)
    return unique, inverse.ravel()[np.concatenate(faces)]


def _boxes(files: list[Path]) -> list[tuple[slice, ...] | None]:
    """Bounding box of every label (index label - 1, None where absent), as
    `scipy.ndimage.find_objects` gives it: the union of the label's boxes in the blocks."""
    found = []
    for path in files:
        with np.load(path) as data:
            found.append(data["boxes"])
    rows = np.concatenate(found)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    labels, first = np.unique(rows[:, 0], return_index=True)
    starts = np.minimum.reduceat(rows[:, 1:4], first)
    stops = np.maximum.reduceat(rows[:, 4:7], first)
    boxes: list[tuple[slice, ...] | None] = [None] * int(labels.max(initial=0))
    for label, a, b in zip(labels.tolist(), starts.tolist(), stops.tolist(), strict=True):
        boxes[label - 1] = tuple(slice(lo, hi) for lo, hi in zip(a, b, strict=True))
    return boxes


@dataclass(frozen=True)
class _BoxReader:
    """``reader[box]``: that box of a lazy volume as an array, read where it is asked for (in a
    meshing worker process)."""

    data: Any

    def __getitem__(self, box: Box) -> np.ndarray:
        return read_region(region_of(self.data, box))


def _surfaces(
    files: list[Path], voxel: VoxelSize, options: mesh_mod.MeshOptions
) -> tuple[list[int], Iterator[mesh_mod.Surface | None]]:
    sizes: dict[int, int] = defaultdict(int)
    for path in files:
        with np.load(path) as data:
            for label, count in data["voxels"].T.tolist():
                sizes[label] += count
    labels = sorted(sizes)

    def generate() -> Iterator[mesh_mod.Surface | None]:
        pieces: dict[int, list] = defaultdict(list)
        for path in files:
            with np.load(path) as data:
                for name in data.files:
                    if name.startswith("k"):
                        pieces[int(name[1:])].append((data[name], data[f"f{name[1:]}"]))
        for label in labels:
            if sizes[label] < options.min_voxels or not pieces[label]:
                yield None
                continue
            keys, faces = _weld(pieces.pop(label))
            points = (keys / 2.0 - 1.0) * np.asarray(voxel)
            points, faces = mesh_mod.refine(points[:, ::-1], faces.astype(np.int32), options)
            yield mesh_mod.Surface(label, points, faces, mesh_mod.is_closed(faces))

    return labels, generate()


def _interpolated_bytes(itemsize: int, steps: int) -> float:
    """Working bytes per voxel of an object's box for `vemviz.mesh.label_surface` with
    ``steps`` interpolated samples per section: its labels and mask, the section distance maps,
    and the interpolated distance and field (float32 each) at ``steps`` times the depth."""
    return itemsize + 1 + 8 + 8 * steps


def _section_workers(
    boxes: list[tuple[slice, ...] | None], per_voxel: float, options: mesh_mod.MeshOptions,
    budget: int,
) -> int:  # fmt: skip
    """Meshing processes that fit ``budget`` with the largest objects in flight together;
    an object that does not fit alone is refused by label before any meshing."""
    ids = [i + 1 for i, box in enumerate(boxes) if box is not None]
    largest = max(ids, key=lambda i: math.prod(s.stop - s.start for s in boxes[i - 1]))  # type: ignore[union-attr]
    extent = [s.stop - s.start for s in boxes[largest - 1]]  # type: ignore[union-attr]
    need = math.prod(extent) * per_voxel
    if need > budget:
        raise VemvizError(
            f"label {largest} spans {' x '.join(map(str, extent))} voxels; interpolating its "
            f"sections needs about {need / 2**20:.0f} MiB, over --memory-budget: raise it, or "
            "mesh without --interpolate-z"
        )
    return max(1, min(mesh_mod.worker_count(options.workers, len(ids)), int(budget // need)))


def mesh_blocks(
    labels: Volume,
    out_dir: Path,
    *,
    class_name: str = "object",
    opacity: float = 1.0,
    options: mesh_mod.MeshOptions | None = None,
    write_ply: bool = False,
    memory_budget: int = 4 * 2**30,
    scheduler: str | None = None,
    workers: int | None = None,
    block: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Mesh every label of a (lazy) label volume by blocks; same folder as `mesh.mesh_labels`."""
    options = options or mesh_mod.MeshOptions()
    mesh_mod.check_options(options)
    if not np.issubdtype(labels.dtype, np.integer):
        raise VemvizError(f"labels must be an integer volume, got {labels.dtype}")
    voxel = labels.require_voxel_size("meshing in physical units")
    padded = tuple(s + 2 for s in labels.shape)
    with Runner(scheduler, workers) as runner, tempfile.TemporaryDirectory(
        prefix=".vemviz-mesh-", dir=Path(out_dir).resolve().parent
    ) as folder:  # fmt: skip
        if block is None:
            side = (memory_budget / (max(runner.workers, 1) * _BYTES_PER_VOXEL)) ** (1 / 3)
            block = tuple(max(2, min(s, math.floor(side))) for s in padded)
        grid = Grid(padded, tuple(int(b) for b in block))  # type: ignore[arg-type]
        data = lazy(labels)
        steps = mesh_mod.section_steps(voxel, options)
        tasks = _tasks(data, grid, Path(folder), surfaces=steps == 1)
        files = [t.out for t in tasks]
        runner.run(tasks, "mesh: marching cubes by blocks" if steps == 1 else
                   "mesh: objects' boxes by blocks")  # fmt: skip
        if steps == 1:
            ids, surfaces = _surfaces(files, voxel, options)
            if not ids:
                raise VemvizError(EMPTY)
            return mesh_mod.write_meshes(
                surfaces, len(ids), out_dir, labels.shape, voxel, class_name=class_name,
                opacity=opacity, options=options, write_ply=write_ply,
            )  # fmt: skip
        boxes = _boxes(files)
    # thick sections: every object on its own box, in meshing processes as in memory
    ids = [i + 1 for i, box in enumerate(boxes) if box is not None]
    if not ids:
        raise VemvizError(EMPTY)
    per_voxel = _interpolated_bytes(data.dtype.itemsize, steps)
    options = replace(options, workers=_section_workers(boxes, per_voxel, options, memory_budget))
    with mesh_mod.surface_mapper(_BoxReader(data), boxes, voxel, options, len(ids)) as surfaces:  # type: ignore[arg-type]
        return mesh_mod.write_meshes(
            surfaces(mesh_mod.by_box_size(ids, boxes)), len(ids), out_dir, labels.shape, voxel,
            class_name=class_name, opacity=opacity, options=options, write_ply=write_ply,
        )  # fmt: skip
