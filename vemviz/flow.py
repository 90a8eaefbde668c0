"""Optical-flow interpolation between two EM slices, shared by `restore` and `iso`.

Adjacent sections of a volume show the same structures slightly moved and deformed, so a slice
that lies between two known slices ``a`` (position 0) and ``b`` (position 1) is estimated better
by following that motion than by cross-fading the two images:

1. `pair_flows` computes dense optical flow both ways, ``a -> b`` and ``b -> a``, with
   Farneback's polynomial-expansion method (OpenCV) on 8-bit copies of the two slices scaled to
   their common intensity range. Farneback with a large window (41 px) was chosen by measurement:
   on FlyEM (10 nm FIB-SEM, every 4th slice kept, straight paths) it gave 28.99 dB against
   28.63-28.75 dB for DIS (medium/fast presets) and 28.70 dB for Farneback with the 15 px
   default window.
2. `interpolate_frame` warps both slices toward the fractional position ``t`` (backward warping:
   the pixel at ``x`` of the new slice is read from ``a`` at ``x + t * flow_ba(x)`` and from ``b``
   at ``x + (1 - t) * flow_ab(x)``) and blends them, weighting each by its distance
   (``1 - t`` and ``t``) times a forward-backward consistency confidence: where a flow followed
   forward and then back does not return to its start (occlusion, a structure that appears or
   ends between the sections), that side's warp is trusted less and the other side dominates.
   Where both sides are inconsistent the blend falls back to the distance weights. Farneback
   flows are smooth and rarely disagree: on FlyEM, and on a synthetic disc moving over texture,
   this weighting changed PSNR by under 0.02 dB against plain distance weights.
3. Curved paths (`bend_pair`, the idea of quadratic video interpolation, Xu et al. 2019): a
   straight path from ``a`` to ``b`` is all two slices can tell, but structures curve through z
   (a neurite bending away). Given the slice beyond ``a`` (at ``-h`` pair spacings), the
   content of each pixel of ``a`` follows the parabola ``d(t) = v t + c t^2`` through its
   flows to ``b`` (``d(1)``) and to that slice (``d(-h)``):
   ``c = (flow_a_beyond + h * flow_ab) / (h (1 + h))``. Its departure from the straight line,
   ``c (t^2 - t)``, is subtracted from ``a``'s sample position; likewise for ``b`` with
   ``1 - t`` and the slice beyond ``b``. On FlyEM (every F-th slice kept, slices in between
   scored) this gained 0.04 dB at F = 2, 0.05 dB at F = 4 and 0.14 dB at F = 8 over straight
   paths. Without a slice beyond (the ends of a stack) the path stays straight.

All functions take and return 2D arrays (`curved_pair_flows` and `cached_pair_flows` take a
stack and slice indices); `to_dtype` converts float results back to the input dtype (rounded and
clipped for integer types).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

# Farneback parameters (pyramid scale, levels, window, iterations, poly_n, poly_sigma, flags).
_FARNEBACK = (0.5, 3, 41, 3, 5, 1.1, 0)
# Forward-backward consistency: an error of this many pixels lowers a side's confidence to 1/e.
_CONSISTENCY_PX = 2.0
# Confidence floor, so that a pixel inconsistent on both sides keeps the distance weights.
_CONFIDENCE_FLOOR = 1e-2


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Return float ``values`` as ``dtype``: rounded and clipped to its range for integers."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def to_uint8_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale two images to uint8 with one shared intensity range (0.5-99.5 percentiles)."""
    lo, hi = np.percentile(np.concatenate([a.ravel(), b.ravel()]), [0.5, 99.5])
    scale = 255.0 / max(float(hi - lo), 1e-6)
    return tuple(  # type: ignore[return-value]
        np.clip((image.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)
        for image in (a, b)
    )


def dense_flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Flow (H, W, 2) float32, (dx, dy) per pixel, such that ``src(x) ~ dst(x + flow(x))``.

    Both inputs must already be uint8 (see `pair_flows`).
    """
    return cv2.calcOpticalFlowFarneback(src, dst, None, *_FARNEBACK)


def warp(image: np.ndarray, flow: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Sample ``image`` (float32 result) at ``x + scale * flow(x)``, bilinear, edges reflected."""
    height, width = image.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x = (grid_x + np.float32(scale) * flow[..., 0]).astype(np.float32, copy=False)
    map_y = (grid_y + np.float32(scale) * flow[..., 1]).astype(np.float32, copy=False)
    return cv2.remap(
        image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def consistency_error(flow: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Per-pixel length of ``flow(x) + back(x + flow(x))``: 0 where the flows agree."""
    returned = np.dstack([warp(back[..., 0], flow), warp(back[..., 1], flow)])
    return np.linalg.norm(flow + returned, axis=2)


def _confidence(error: np.ndarray) -> np.ndarray:
    return np.exp(-((error / _CONSISTENCY_PX) ** 2)) + _CONFIDENCE_FLOOR


@dataclass(frozen=True)
class PairFlow:
    """Flows between slices ``a`` and ``b``, the confidence of each direction per pixel and,
    once `bend_pair` has seen the slices beyond, the bends of the paths through ``a`` and ``b``."""

    a_to_b: np.ndarray
    b_to_a: np.ndarray
    confidence_a: np.ndarray  # trust in samples taken from ``a`` (consistency of b_to_a)
    confidence_b: np.ndarray  # trust in samples taken from ``b`` (consistency of a_to_b)
    bend_a: np.ndarray | None = None  # c of the parabola through a's pixels (None: straight)
    bend_b: np.ndarray | None = None


def pair_flows(a: np.ndarray, b: np.ndarray) -> PairFlow:
    """Forward and backward dense flow between two slices of any dtype, with confidences."""
    a8, b8 = to_uint8_pair(a, b)
    a_to_b, b_to_a = dense_flow(a8, b8), dense_flow(b8, a8)
    return PairFlow(
        a_to_b,
        b_to_a,
        _confidence(consistency_error(b_to_a, a_to_b)),
        _confidence(consistency_error(a_to_b, b_to_a)),
    )


def _bend(inward: np.ndarray, outward: np.ndarray, distance: float) -> np.ndarray:
    """``c`` of ``d(t) = v t + c t^2`` with ``d(1) = inward`` and ``d(-distance) = outward``."""
    h = float(distance)
    return ((outward + h * inward) / (h * (1.0 + h))).astype(np.float32)


def bend_pair(
    flows: PairFlow,
    before: PairFlow | None,
    after: PairFlow | None,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> PairFlow:
    """``flows`` of the pair (a, b) with curved paths through its slices.

    ``before`` is `pair_flows` of (the slice beyond ``a``, ``a``), ``after`` of (``b``, the
    slice beyond ``b``), either None where there is no such slice; ``spacing`` gives their
    distances from ``a`` and ``b`` in units of the pair's own spacing.
    """
    if spacing[0] <= 0 or spacing[1] <= 0:
        raise ValueError(f"spacings must be positive, got {spacing}")
    return replace(
        flows,
        bend_a=None if before is None else _bend(flows.a_to_b, before.b_to_a, spacing[0]),
        bend_b=None if after is None else _bend(flows.b_to_a, after.a_to_b, spacing[1]),
    )


PairFlows = Callable[[int, int], PairFlow]


def cached_pair_flows(stack: np.ndarray, size: int) -> PairFlows:
    """``pair(i, j)``: `pair_flows` of slices ``i`` and ``j`` of ``stack``, remembering the
    ``size`` most recently used pairs, so neighbouring pairs share the flows that bend them."""
    return functools.lru_cache(maxsize=size)(lambda i, j: pair_flows(stack[i], stack[j]))


def curved_pair_flows(
    stack: np.ndarray,
    below: int,
    above: int,
    good: np.ndarray | None = None,
    pair: PairFlows | None = None,
) -> PairFlow:
    """`pair_flows` of slices ``below`` and ``above`` of ``stack``, bent (`bend_pair`) by the
    nearest slices beyond them among ``good`` (sorted indices; default: every slice). ``pair``
    computes the flows of two slices (default: afresh; see `cached_pair_flows`)."""
    pair = pair or (lambda i, j: pair_flows(stack[i], stack[j]))
    good = np.arange(len(stack)) if good is None else np.asarray(good)
    beyond_below, beyond_above = good[good < below], good[good > above]
    before = int(beyond_below[-1]) if beyond_below.size else None
    after = int(beyond_above[0]) if beyond_above.size else None
    gap = above - below
    return bend_pair(
        pair(below, above),
        None if before is None else pair(before, below),
        None if after is None else pair(above, after),
        (
            1.0 if before is None else (below - before) / gap,
            1.0 if after is None else (after - above) / gap,
        ),
    )


def warp_pair(
    a: np.ndarray, b: np.ndarray, t: float, flows: PairFlow
) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` (float32) each warped to the fractional position ``t`` between them."""
    s = 1.0 - t
    to_a, to_b = t * flows.b_to_a, s * flows.a_to_b
    if flows.bend_a is not None:
        to_a = to_a - (t * t - t) * flows.bend_a
    if flows.bend_b is not None:
        to_b = to_b - (s * s - s) * flows.bend_b
    return warp(a, to_a), warp(b, to_b)


def interpolate_frame(a: np.ndarray, b: np.ndarray, t: float, flows: PairFlow) -> np.ndarray:
    """Slice at fractional position ``t`` (0 = ``a``, 1 = ``b``) as float32.

    ``flows`` is ``pair_flows(a, b)``, curved by `bend_pair` where the slices beyond are known;
    compute it once per pair and reuse it for every ``t``.
    """
    from_a, from_b = warp_pair(a, b, t, flows)
    weight_a = (1.0 - t) * flows.confidence_a
    weight_b = t * flows.confidence_b
    return (weight_a * from_a + weight_b * from_b) / (weight_a + weight_b)
