"""Intensity percentiles of volumes too large to sort: exact value histograms.

A percentile range (for normalising images before a network) is taken from a histogram of
the values rather than by sorting them, because histograms add up: a volume streamed in
slabs (`vemviz.blockwise`) gets exactly the range the whole array in memory gets. Integer
volumes of 8 and 16 bits are counted value by value, so the percentiles are exact (numpy's
linear rule); other types are counted in `FLOAT_BINS` bins over their (min, max), and the
percentiles are those of the bins' centres.
"""

from __future__ import annotations

import numpy as np

from vemviz.errors import VemvizError

FLOAT_BINS = 65536


def value_counts_exact(dtype: np.dtype) -> bool:
    """Whether `value_counts` counts every value exactly (8- and 16-bit integers)."""
    return np.issubdtype(dtype, np.integer) and np.dtype(dtype).itemsize <= 2


def value_counts(values: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Histogram for `range_from_counts`: one bin per value from the dtype's minimum for 8- and
    16-bit integers (exact), else `FLOAT_BINS` bins over ``value_range`` (min, max)."""
    if value_counts_exact(values.dtype):
        info = np.iinfo(values.dtype)
        shifted = values.astype(np.int64).ravel() - info.min
        return np.bincount(shifted, minlength=info.max - info.min + 1)
    return np.histogram(values.astype(np.float32), bins=FLOAT_BINS, range=value_range)[0]


def count_values(values: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
    """`value_counts` of ``values`` in memory, and the (min, max) they were counted over (None
    for the types counted exactly): what `range_from_counts` takes."""
    value_range = None
    if not value_counts_exact(values.dtype):
        value_range = (float(values.min()), float(values.max()))
    return value_counts(values, value_range), value_range


def range_from_counts(
    counts: np.ndarray,
    dtype: np.dtype,
    value_range: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (1, 99),
) -> tuple[float, float]:
    """The ``percentiles`` (numpy's linear rule) of the values `value_counts` counted.

    Exact for 8- and 16-bit integers; for other types the values are the bins' centres. Counts
    add up over blocks, so a volume streamed in pieces gets the same range as in memory.
    """
    if value_counts_exact(dtype):
        values = np.arange(len(counts), dtype=np.float64) + np.iinfo(dtype).min
    else:
        low, high = value_range  # type: ignore[misc]
        if high <= low:
            return float(low), float(high)
        edges = np.linspace(low, high, FLOAT_BINS + 1)
        values = (edges[:-1] + edges[1:]) / 2
    total, cumulative = int(counts.sum()), np.cumsum(counts)
    if total == 0:
        raise VemvizError("no voxels to take the intensity range from")
    result = []
    for q in percentiles:
        position = (total - 1) * q / 100
        k = int(np.floor(position))
        a = values[np.searchsorted(cumulative, k, side="right")]
        b = values[np.searchsorted(cumulative, min(k + 1, total - 1), side="right")]
        result.append(float(a + (position - k) * (b - a)))
    return result[0], result[1]
