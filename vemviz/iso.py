"""Isotropic reconstruction: synthesize slices along z so the z spacing matches x/y.

Serial-section EM is usually anisotropic (e.g. 50 nm sections imaged at 4.6 nm pixels). With
factor ``F`` the output has ``round((Z - 1) * F) + 1`` slices and output slice ``k`` sits at
input position ``k / F`` (clamped to the last slice), so for integer ``F`` slice ``i * F`` is an
exact copy of input slice ``i`` and ``F - 1`` slices are synthesized between each pair;
non-integer factors (50 / 4.6 = 10.87) work the same way. The z voxel size is divided by ``F``
(`iso_voxel_size`).

Methods:

- ``linear``: per pixel, linear interpolation between the two bounding slices.
- ``cubic``: a natural cubic spline along z through every input slice (per pixel column, computed
  in blocks of rows to bound memory). Natural end conditions reproduce the project's reference
  numbers for a cubic spline; not-a-knot scored 0.07-0.13 dB lower on FlyEM.
- ``flow``: optical-flow interpolation (`vemviz.flow`): dense flow between each pair of
  consecutive slices, both slices warped toward the new position along paths bent by the flows
  to the slices beyond, and blended with occlusion-aware weights. It follows structures that
  move between sections instead of cross-fading them, and scores best of the three on FlyEM.
- ``inr`` (the default): a self-supervised local implicit function (`vemviz.inr`): trained on
  the volume's own XY planes decimated along one in-plane axis (with their neighbour planes
  along z), applied to its XZ and YZ planes (with their neighbour planes F pixels apart) and the
  two passes averaged, as a residual over the cubic spline; the result is then fused with the
  ``flow`` interpolation, whose errors are partly independent (on FlyEM x8 an equal-weight
  fusion scored 0.12 dB over the network alone, 0.69 dB over flow alone). The fusion weight is
  estimated without any truth, one level coarser (`train_inr`): a second network, trained the
  same way on every other input slice at factor 2F, and flow on those slices predict the input
  slices in between, and the least-squares weight of the two predictions there is the weight at
  F. On FlyEM it came out 0.68 for x4 (the best weight against the truth: 0.70) and 0.77 for x8
  (best: 0.68); both beat equal weights (x4 29.59 -> 29.65 dB, x8 25.75 -> 25.80). It also
  returns a per-voxel uncertainty (half the disagreement of the XZ and YZ passes). A model
  trained on one volume can be reused on another, with its fusion weight.

Measured on FlyEM (250^3, 10 nm), keeping every F-th slice and scoring the synthesized slices
(PSNR / mean SSIM, data range 255): x4 linear 28.11 / 0.759, cubic 28.12 / 0.760,
flow 29.03 / 0.797, inr 29.65 / 0.814; x8 linear 24.33 / 0.598, cubic 24.03 / 0.590,
flow 25.05 / 0.652, inr 25.80 / 0.678 (inr: 6000 training steps for each of the two networks,
260-310 s in all on a 2-core CPU; `scripts/benchmark.py iso`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.interpolate import CubicSpline

from vemviz.errors import VemvizError
from vemviz.flow import cached_pair_flows, curved_pair_flows, interpolate_frame, to_dtype
from vemviz.progress import track
from vemviz.volume import VoxelSize, validate_voxel_size

if TYPE_CHECKING:  # torch is imported only when a learned method runs
    from vemviz import inr

METHODS = ("flow", "linear", "cubic", "inr")
# The method when none is named (`vemviz iso`, the pipelines' iso stage, `reconstruct_z`): it
# beats every classical method on FlyEM at x4 and x8 (`scripts/benchmark.py iso`) at the cost
# of its training (`DEFAULT_TIME_BUDGET`); ``flow`` is the best classical one, in seconds.
DEFAULT_METHOD = "inr"
# Rows per block for the cubic spline; its coefficients take 32 bytes per voxel and pair.
_CUBIC_BLOCK_BYTES = 256 * 2**20
# Training seconds of `train_inr` when none are given: 240 for each of its two networks, as
# for one network of the other learned stages.
DEFAULT_TIME_BUDGET = 480.0
# Input slices below which the fusion weight is not estimated: every other one (the coarser
# level) must leave at least 4 slices, and 3 between them to predict.
MIN_SLICES_FOR_WEIGHT = 7


def output_positions(n_slices: int, factor: float) -> np.ndarray:
    """Input z position (float) of every output slice for ``factor``."""
    n_out = int(round((n_slices - 1) * factor)) + 1
    return np.minimum(np.arange(n_out) / factor, n_slices - 1)


def _validate(stack: np.ndarray, method: str) -> None:
    if method not in METHODS:
        raise VemvizError(f"unknown iso method {method!r}; choose one of {', '.join(METHODS)}")
    if stack.ndim != 3:
        raise VemvizError(f"iso needs a 3D (z, y, x) volume, not {stack.ndim}-D")
    if stack.shape[0] < 2:
        raise VemvizError("isotropic reconstruction needs at least 2 z slices")


def _bracket(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower input slice index and fraction toward the next slice for non-integer positions."""
    lower = np.floor(positions).astype(int)
    return lower, positions - lower


def _linear(stack: np.ndarray, positions: np.ndarray) -> np.ndarray:
    lower, frac = _bracket(positions)
    out = np.empty((len(positions), *stack.shape[1:]), dtype=np.float32)
    for k in track(range(len(positions)), "iso: linear"):
        a = stack[lower[k]].astype(np.float32)
        b = stack[lower[k] + 1].astype(np.float32)
        out[k] = (1.0 - frac[k]) * a + frac[k] * b
    return out


def _cubic(stack: np.ndarray, positions: np.ndarray) -> np.ndarray:
    n_z, height, width = stack.shape
    z = np.arange(n_z)
    rows = max(1, _CUBIC_BLOCK_BYTES // (32 * n_z * width))
    out = np.empty((len(positions), height, width), dtype=np.float32)
    for y0 in track(range(0, height, rows), "iso: cubic spline"):
        block = stack[:, y0 : y0 + rows].astype(np.float32)
        out[:, y0 : y0 + rows] = CubicSpline(z, block, axis=0, bc_type="natural")(positions)
    return out


def interpolate_flow(stack: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Flow interpolation (float32) at input z ``positions``, along curved paths: each pair's
    flows bent by its neighbour pairs'."""
    lower, frac = _bracket(positions)
    out = np.empty((len(positions), *stack.shape[1:]), dtype=np.float32)
    pair = cached_pair_flows(stack, 3)  # the pairs before, at and after the current one
    for i in track(np.unique(lower).tolist(), "iso: optical flow"):
        flows = curved_pair_flows(stack, i, i + 1, pair=pair)
        for k in np.flatnonzero(lower == i):
            out[k] = interpolate_frame(stack[i], stack[i + 1], float(frac[k]), flows)
    return out


_IMPLEMENTATIONS = {"linear": _linear, "cubic": _cubic, "flow": interpolate_flow}


@dataclass
class Reconstruction:
    """`reconstruct_z` output: the volume, the inr uncertainty (float32, 0 on kept slices,
    None for classical methods) and the inr model that produced it (trained or given; None
    when none was given and every slice was kept)."""

    data: np.ndarray
    uncertainty: np.ndarray | None = None
    model: inr.LearnedModel | None = None


def reconstruct_z(
    stack: np.ndarray,
    factor: float,
    method: str = DEFAULT_METHOD,
    *,
    model: inr.LearnedModel | None = None,
    training: inr.Training | None = None,
) -> Reconstruction:
    """Resample ``stack`` (z, y, x) along z by ``factor`` (>= 1); same dtype as the input.

    Returns ``round((Z - 1) * factor) + 1`` slices; slice ``k`` is at input position
    ``k / factor``, and slices at whole positions are exact copies of input slices. Integer
    outputs are rounded and clipped to the dtype's range; float outputs are not clipped (the
    cubic spline may overshoot the input range slightly). For ``inr``, ``model`` skips training;
    otherwise one is trained on ``stack`` with ``training`` (`train_inr`; default
    `inr.Training` with `DEFAULT_TIME_BUDGET`).
    """
    _validate(stack, method)
    if not np.isfinite(factor) or factor < 1:
        raise VemvizError(f"--factor must be a number >= 1, got {factor}")
    positions = output_positions(stack.shape[0], factor)
    if method == "inr" and model is None and (positions != np.round(positions)).any():
        from vemviz import inr

        model = train_inr(stack, factor, training or inr.Training(time_budget=DEFAULT_TIME_BUDGET))
    return resample_z(stack, positions, method, model=model)


def train_inr(
    stack: np.ndarray,
    factor: float,
    training: inr.Training,
    norm: tuple[float, float] | None = None,
) -> inr.LearnedModel:
    """The ``inr`` model of ``stack`` at ``factor`` (`vemviz.inr.train_iso`) with its
    `fusion_weight` against flow estimated one level coarser.

    The training's time budget is shared evenly by the two networks; a stack of fewer than
    `MIN_SLICES_FOR_WEIGHT` slices trains only the first, with the whole budget, and keeps
    equal weights.
    """
    from vemviz import inr

    if stack.shape[0] < MIN_SLICES_FOR_WEIGHT:
        return inr.train_iso(stack, factor, training, norm=norm)
    if training.time_budget is not None:
        training = replace(training, time_budget=training.time_budget / 2)
    model = inr.train_iso(stack, factor, training, norm=norm)
    model.fusion_weight = fusion_weight(stack, factor, training, norm)
    return model


def fusion_weight(
    stack: np.ndarray,
    factor: float,
    training: inr.Training,
    norm: tuple[float, float] | None = None,
) -> float:
    """Weight w of the network against flow (w net + (1 - w) flow) for ``stack`` at
    ``factor``, estimated without truth: a network trained with ``training`` on every other
    slice at factor 2F, and flow on the same slices, predict the slices in between; w is the
    least-squares weight of the two there, clipped to [0, 1]."""
    from vemviz import inr

    coarse = stack[::2]
    between = stack[1 : 2 * coarse.shape[0] - 1 : 2].astype(np.float32)
    positions = np.arange(len(between)) + 0.5
    proxy = inr.train_iso(coarse, 2 * factor, training, norm=norm)
    net = inr.reconstruct_iso(proxy, coarse, positions)[0] - between
    flow = interpolate_flow(coarse, positions) - between
    return least_squares_weight(net, flow)


def least_squares_weight(first: np.ndarray, second: np.ndarray) -> float:
    """The w in [0, 1] that minimises the mean square of w ``first`` + (1 - w) ``second``,
    given the errors of two estimates of the same values (0.5 when they are equal)."""
    first, second = first.astype(np.float64).ravel(), second.astype(np.float64).ravel()
    difference = first - second
    denominator = float(difference @ difference)
    if denominator == 0:
        return 0.5
    return float(np.clip(-(second @ difference) / denominator, 0.0, 1.0))


def resample_z(
    stack: np.ndarray,
    positions: np.ndarray,
    method: str = "flow",
    *,
    model: inr.LearnedModel | None = None,
    flow: np.ndarray | None = None,
) -> Reconstruction:
    """`reconstruct_z` at given input z ``positions`` (increasing, within the stack): the
    block stages (`vemviz.blockwise`) resample a slab at its own part of the whole volume's
    positions. ``inr`` needs its ``model``; ``flow`` is its flow half (`interpolate_flow` at
    the non-whole positions) when that was computed apart (on whole planes, the network on
    tiles)."""
    _validate(stack, method)
    positions = np.asarray(positions, dtype=np.float64)
    if not (np.isfinite(positions).all() and positions.min() >= 0
            and positions.max() <= stack.shape[0] - 1):  # fmt: skip
        raise VemvizError(f"z positions must lie within the stack's 0 .. {stack.shape[0] - 1}")
    kept = positions == np.round(positions)
    out = np.empty((len(positions), *stack.shape[1:]), dtype=stack.dtype)
    out[kept] = stack[positions[kept].astype(int)]
    result = Reconstruction(out)
    if method == "inr":
        result.uncertainty = np.zeros(out.shape, dtype=np.float32)
        result.model = model
    if kept.all():
        return result
    if method != "inr":
        out[~kept] = to_dtype(_IMPLEMENTATIONS[method](stack, positions[~kept]), stack.dtype)
        return result
    from vemviz import inr

    assert model is not None, "inr resamples with a trained model"
    values, spread = inr.reconstruct_iso(model, stack, positions[~kept])
    if flow is None:
        flow = interpolate_flow(stack, positions[~kept])
    weight = model.fusion_weight
    out[~kept] = to_dtype(weight * values + (1 - weight) * flow, stack.dtype)
    result.uncertainty[~kept] = spread
    return result


def interpolate_z(stack: np.ndarray, factor: float, method: str = DEFAULT_METHOD) -> np.ndarray:
    """`reconstruct_z` with default settings, returning only the volume."""
    return reconstruct_z(stack, factor, method).data


def iso_voxel_size(voxel_size_nm: VoxelSize, factor: float) -> VoxelSize:
    """Voxel size after `interpolate_z`: z divided by ``factor``, y and x unchanged."""
    z, y, x = validate_voxel_size(voxel_size_nm)
    return (z / factor, y, x)


def factor_for_spacing(voxel_size_nm: VoxelSize, out_z_nm: float) -> float:
    """The z factor that resamples ``voxel_size_nm`` to an output z spacing of ``out_z_nm``."""
    z = validate_voxel_size(voxel_size_nm)[0]
    if not np.isfinite(out_z_nm) or not 0 < out_z_nm <= z:
        raise VemvizError(
            f"--out-voxel-size must be a z spacing in nm between 0 and the input's {z:g}, "
            f"got {out_z_nm}"
        )
    return z / out_z_nm
