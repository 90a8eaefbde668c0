"""One slice at a time: reading the slices of a stack that may not fit in memory, and keeping
per-slice masks sparse.

Damage detection (`vemviz.restore.scan_damage`) looks at each slice with its nearest
neighbours, several times over the stack, and what it finds is a few regions in a few slices.
Neither needs the whole volume in memory:

- `SliceSource` reads slice ``z`` of a numpy array directly, and of a dask array (a lazily
  opened zarr or OME-Zarr volume) through a cache of two slabs of whole planes, each the
  depth of the array's z chunks (capped by ``slab_bytes``), so a slice's neighbours are
  mostly read from memory and every chunk is decoded once per sweep over the stack. It also
  gives each slice's pixels outside its section (the padding of an aligned stack), from a
  mask array or from the alignment's transforms (`vemviz.align.section_mask`), computed
  per slice.
- `sweep` computes something per slice (with whatever neighbours it reads) for a list of
  slices: in this process, or as tasks of the slices of one z chunk, each reading through
  its own copy of the source, on the workers of a `vemviz.chunked.Runner` (threads, or a
  dask.distributed cluster). Each slice's result is computed by the same function either
  way, so the two agree exactly.
- `SliceMasks` keeps, per damaged slice, the bounding box of its mask and the mask within
  it; `dense` expands it to a (z, y, x) bool array for callers that hold volumes in memory.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vemviz.progress import track

# Runs a list of no-argument tasks with a progress description; returns their results (in any
# order): `vemviz.chunked.Runner.run`.
Run = Callable[[Sequence[Callable[[], Any]], str], list]

_SLABS_KEPT = 2
_OUTSIDE_KEPT = 8  # a slice and its references, and the next slice's


class SliceSource:
    """Slices of a (z, y, x) ``stack`` (numpy or dask) and, per slice, the pixels outside its
    section (``outside``: z -> (y, x) bool; none when None)."""

    def __init__(
        self,
        stack: Any,
        outside: Callable[[int], np.ndarray] | None = None,
        slab_bytes: int = 2**28,
    ) -> None:
        self.stack = stack
        self._outside = outside
        self._slab_bytes = slab_bytes
        self.shape: tuple[int, int, int] = tuple(int(n) for n in stack.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(stack.dtype)
        self.in_memory = isinstance(stack, np.ndarray)
        plane_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        # the depth of the stack's z chunks (a chunk is decoded whole, whatever is read of it)
        self.chunk = self.shape[0] if self.in_memory else int(stack.chunks[0][0])
        self.slab = max(1, min(self.chunk, slab_bytes // max(plane_bytes, 1)))
        self._slabs: OrderedDict[int, np.ndarray] = OrderedDict()
        empty = np.zeros(self.shape[1:], dtype=bool)
        self.outside = functools.lru_cache(maxsize=_OUTSIDE_KEPT)(
            outside if outside is not None else lambda z: empty
        )

    @classmethod
    def aligned(cls, stack: Any, transforms: dict[str, Any] | None, **kwargs: Any) -> SliceSource:
        """The slices of an aligned stack; its padding is outside (none without transforms)."""
        from vemviz.align import check_transforms_shape, section_mask

        if transforms is None:
            return cls(stack, **kwargs)
        check_transforms_shape(transforms, stack.shape)
        plane = tuple(int(n) for n in stack.shape[1:])
        return cls(stack, lambda z: ~section_mask(transforms, z, plane), **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.shape[0]

    def copy(self) -> SliceSource:
        """The same slices with caches of their own (for a task run alongside others)."""
        return SliceSource(self.stack, self._outside, self._slab_bytes)

    def __reduce__(self) -> tuple[Any, ...]:
        # sent to a worker process without its caches (rebuilt there, empty)
        return SliceSource, (self.stack, self._outside, self._slab_bytes)

    def image(self, z: int) -> np.ndarray:
        """Slice ``z`` as a numpy array (a view of the stack or of a cached slab)."""
        if self.in_memory:
            return self.stack[z]
        start = z - z % self.slab
        if start not in self._slabs:
            if len(self._slabs) >= _SLABS_KEPT:
                self._slabs.popitem(last=False)
            stop = min(start + self.slab, self.shape[0])
            self._slabs[start] = np.asarray(self.stack[start:stop].compute(scheduler="threads"))
        self._slabs.move_to_end(start)
        return self._slabs[start][z - start]

    def value_range(self) -> tuple[float, float]:
        """The stack's minimum and maximum."""
        if self.in_memory:
            return float(self.stack.min()), float(self.stack.max())
        import dask

        low, high = dask.compute(self.stack.min(), self.stack.max(), scheduler="threads")
        return float(low), float(high)


def sweep(
    source: SliceSource,
    compute: Callable[[Any, int], Any],
    slices: Sequence[int],
    description: str,
    run: Run | None = None,
    reader: Callable[[SliceSource], Any] | None = None,
) -> dict[int, Any]:
    """``{z: compute(read, z)}`` for every z in ``slices``; ``read`` is ``reader(source)``
    (default: ``source.image``, z -> slice z; a reader can warp and cache, or give the source
    itself).

    Without ``run``, in this process, in order. With ``run`` (`Run`), as tasks of the slices
    of one z chunk of the source each (a chunk is decoded whole, so a task that reads all of
    its slices reads it as one process would), every task with its own copy of the source, so
    they read in parallel without sharing caches.
    """
    reader = reader or _plain_reader
    if run is None:
        read = reader(source)
        return {z: compute(read, z) for z in track(slices, description)}
    groups: dict[int, list[int]] = {}
    for z in slices:
        groups.setdefault(z // source.chunk, []).append(z)
    tasks = [
        functools.partial(_sweep_task, source.copy(), reader, compute, group)
        for group in groups.values()
    ]
    results: dict[int, Any] = {}
    for part in run(tasks, description):
        results.update(part)
    return results


def _plain_reader(source: SliceSource) -> Callable[[int], np.ndarray]:
    return source.image


def _sweep_task(
    source: SliceSource,
    reader: Callable[[SliceSource], Any],
    compute: Callable[[Any, int], Any],
    slices: list[int],
) -> dict[int, Any]:
    read = reader(source)
    return {z: compute(read, z) for z in slices}


def crop(mask: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """A (y, x) bool mask as (y0, x0, the mask within its bounding box); None if all false."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, x0 = int(rows[0]), int(cols[0])
    return y0, x0, mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1].copy()


class SliceMasks:
    """Per-slice bool masks of a stack of ``shape``, each kept as its bounding box and the
    mask inside it; slices without a true pixel hold nothing."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self._crops: dict[int, tuple[int, int, np.ndarray]] = {}

    def set(self, z: int, mask: np.ndarray) -> None:
        self.put(z, crop(mask))

    def put(self, z: int, cropped: tuple[int, int, np.ndarray] | None) -> None:
        """Set slice ``z``'s mask from its `crop` (None: no true pixel)."""
        if cropped is None:
            self._crops.pop(z, None)
        else:
            self._crops[z] = cropped

    def get(self, z: int) -> np.ndarray:
        """Slice ``z``'s mask, (y, x) bool."""
        out = np.zeros(self.shape[1:], dtype=bool)
        if z in self._crops:
            y0, x0, crop = self._crops[z]
            out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def count(self, z: int) -> int:
        return int(self._crops[z][2].sum()) if z in self._crops else 0

    def damaged(self) -> np.ndarray:
        """Per slice, whether its mask has a true pixel."""
        out = np.zeros(self.shape[0], dtype=bool)
        out[list(self._crops)] = True
        return out

    def touching(self, region: np.ndarray) -> np.ndarray:
        """Per slice, whether its mask has a true pixel inside ``region`` ((y, x) bool)."""
        out = np.zeros(self.shape[0], dtype=bool)
        for z, (y0, x0, crop) in self._crops.items():
            out[z] = bool((crop & region[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]).any())
        return out

    def copy(self) -> SliceMasks:
        other = SliceMasks(self.shape)
        other._crops = dict(self._crops)
        return other

    def dense(self) -> np.ndarray:
        """All slices' masks as one (z, y, x) bool array."""
        out = np.zeros(self.shape, dtype=bool)
        for z in self._crops:
            out[z] = self.get(z)
        return out
