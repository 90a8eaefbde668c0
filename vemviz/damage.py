"""Seeded simulation of serial-section damage, for tests, benchmarks and model training.

Real sections lose whole slices (a section torn or not imaged), get knife marks and charging
stripes that leave bands of black or saturated rows, crack (thin dark curves), collect dust and
stain (dark blotches) and fold (a dark stripe where the section lies doubled). Each kind is made
in two steps so that both the appearance and the truth are known:

1. a mask generator draws the damaged pixels of one slice from a seeded ``numpy`` generator:
   `band_mask` (rows or columns covering a given fraction of the slice), `crack_mask` (a
   random-walk curve from an edge across the slice, 1-3 px wide), `blotch_mask` (a few
   irregular blobs: thresholded smoothed noise inside ellipses), `fold_mask` (a straight
   stripe across the slice at a random angle);
   ``missing`` is the whole slice;
2. `apply_damage` writes the damaged appearance into those pixels: missing slices and cracks
   become black (the dtype's minimum), bands black or saturated (either, at random), blotches a
   dark stain (20 % of the local intensity plus a little noise, so that they are not exactly
   constant), folds a darkened copy of the tissue (35 %), so that detection cannot rely on
   stuck values alone.

`simulate_damage` applies a list of ``(z, kind)`` requests to a copy of a stack and returns the
damaged stack and the boolean mask of every damaged voxel (the truth for scoring). The same
seed gives the same damage.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vemviz.errors import VemvizError

KINDS = ("missing", "band", "crack", "blotch", "fold")


def band_mask(
    shape: tuple[int, int], rng: np.random.Generator, fraction: float = 0.1
) -> np.ndarray:
    """Consecutive rows (or, half of the time, columns) covering ``fraction`` of the slice."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    along_rows = bool(rng.integers(2))
    length = height if along_rows else width
    size = int(np.clip(round(fraction * length), 1, length))
    start = int(rng.integers(0, length - size + 1))
    if along_rows:
        mask[start : start + size] = True
    else:
        mask[:, start : start + size] = True
    return mask


def crack_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random-walk curve entering at a random edge and crossing the slice, 1-3 px wide."""
    height, width = shape
    canvas = np.zeros(shape, dtype=np.uint8)
    # Start on a random edge, heading into the slice.
    edge = int(rng.integers(4))
    y, x = [
        (0.0, rng.uniform(0, width)),
        (float(height), rng.uniform(0, width)),
        (rng.uniform(0, height), 0.0),
        (rng.uniform(0, height), float(width)),
    ][edge]
    angle = [np.pi / 2, -np.pi / 2, 0.0, np.pi][edge] + rng.uniform(-0.6, 0.6)
    step = max(2.0, min(shape) / 40)
    points = []
    for _ in range(int(1.5 * max(shape) / step)):
        points.append((x, y))
        angle += rng.normal(0, 0.25)
        x, y = x + step * np.cos(angle), y + step * np.sin(angle)
    thickness = int(rng.integers(1, 4))
    curve = np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [curve], False, 1, thickness=thickness)
    return canvas.astype(bool)


def blotch_mask(
    shape: tuple[int, int], rng: np.random.Generator, count: int | None = None
) -> np.ndarray:
    """A few irregular blobs (each up to ~12 % of the shorter side in radius)."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    count = int(rng.integers(2, 6)) if count is None else count
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.03, 0.12, size=2) * min(shape) + 2
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        wobble = cv2.GaussianBlur(
            rng.normal(0, 1, shape).astype(np.float32), (0, 0), max(1.0, float(min(rx, ry)) / 3)
        )
        wobble /= max(float(np.abs(wobble).max()), 1e-6)
        mask |= u * u + v * v < 1.0 + 0.5 * wobble
    return mask


def fold_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A straight stripe (2-5 % of the shorter side wide) across the slice at a random angle."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    offset = rng.uniform(0.2, 0.8)
    distance = (xx - offset * width) * np.cos(theta) + (yy - offset * height) * np.sin(theta)
    half = max(1.0, rng.uniform(0.01, 0.025) * min(shape))
    return np.abs(distance) < half


def make_mask(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The damaged pixels of one slice for one kind of damage."""
    if kind == "missing":
        return np.ones(shape, dtype=bool)
    generators = {"band": band_mask, "crack": crack_mask, "blotch": blotch_mask, "fold": fold_mask}
    if kind not in generators:
        raise VemvizError(f"unknown damage kind {kind!r}; choose one of {', '.join(KINDS)}")
    return generators[kind](shape, rng)


def apply_damage(
    image: np.ndarray,
    mask: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    low: float,
    high: float,
) -> np.ndarray:
    """A copy of ``image`` with the damage of ``kind`` drawn into ``mask`` (range low..high)."""
    out = image.astype(np.float32)
    if kind in ("missing", "crack"):
        out[mask] = low
    elif kind == "band":
        out[mask] = high if rng.integers(2) else low
    elif kind == "blotch":
        stain = low + 0.2 * (out - low) + rng.normal(0, 0.01 * (high - low), out.shape)
        out[mask] = stain[mask]
    elif kind == "fold":
        out[mask] = low + 0.35 * (out[mask] - low)
    else:
        raise VemvizError(f"unknown damage kind {kind!r}; choose one of {', '.join(KINDS)}")
    if np.issubdtype(image.dtype, np.integer):
        out = np.clip(np.rint(out), low, high)
    return out.astype(image.dtype)


def simulate_damage(
    stack: np.ndarray,
    requests: Sequence[tuple[int, str]],
    seed: int = 0,
    band_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Damage a copy of ``stack`` (z, y, x) as requested: ``[(z, kind), ...]``.

    Returns ``(damaged, mask)``, the mask true on every damaged voxel. Integer stacks are
    damaged within their dtype's range, float stacks within their own min..max.
    """
    if stack.ndim != 3:
        raise VemvizError(f"damage simulation needs a 3D (z, y, x) volume, not {stack.ndim}-D")
    if np.issubdtype(stack.dtype, np.integer):
        info = np.iinfo(stack.dtype)
        low, high = float(info.min), float(info.max)
    else:
        low, high = float(stack.min()), float(stack.max())
    rng = np.random.default_rng(seed)
    damaged = stack.copy()
    mask = np.zeros(stack.shape, dtype=bool)
    for z, kind in requests:
        if not 0 <= z < stack.shape[0]:
            raise VemvizError(f"slice {z} is outside the volume, which has {stack.shape[0]} slices")
        if kind == "band":
            region = band_mask(stack.shape[1:], rng, band_fraction)
        else:
            region = make_mask(kind, stack.shape[1:], rng)
        damaged[z] = apply_damage(damaged[z], region, kind, rng, low, high)
        mask[z] |= region
    return damaged, mask
