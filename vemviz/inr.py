"""Self-supervised learned upsampling: a local implicit function trained on the volume itself.

One model family serves three stages:

- **isotropic reconstruction** (`vemviz.iso`, method ``inr``): the z axis of anisotropic VEM is
  sampled ``F`` times more coarsely than x and y. The fine structure that is missing along z is
  present in every XY plane, so the model learns from them: an XY plane is decimated along one
  in-plane axis (keep rows ``round(s + k F)`` for a random phase ``s``; non-integer ``F`` gives
  the same irregular gaps as real data) and the network learns to restore every row in
  between. It is then applied to the XZ and YZ planes of the volume, whose rows are the real z
  slices, and the two passes are averaged; half their absolute difference is the per-voxel
  uncertainty. Only the input volume is used for training (never any held-out truth).
  *Neighbour planes* give the network the third dimension: with ``neighbours = K`` it also
  sees, as extra input channels, the K planes on each side of the one it decodes, at the
  spacing of the real slices. In training these are the XY planes of slices z - K ... z + K,
  decimated at the same rows; in application, the XZ (YZ) planes at y +- round(k F)
  (x +- round(k F)), whose rows are the same real slices. Both are then blocks of the volume
  with two axes sampled every F pixels and one dense, only with the two sparse axes swapped,
  so what the network learns about how structure continues into the neighbouring planes
  holds where it is applied. Mirrored at the volume's ends in both cases. On FlyEM (every
  F-th slice kept; `vemviz.iso`'s result, fused with flow) two neighbours on each side
  raised x4 from 29.53 to 29.57 dB and x8 from 25.63 to 25.71 dB at 3000 steps (29.59 and
  25.75 at 6000); four neighbours gave 25.71 at x8, one 29.60 at x4 (6000 steps).
- **missing slices** (`vemviz.restore`, method ``inr``, `train_gap`): XY planes are decimated
  to the z spacing (rows every z/xy voxel ratio) and ``run`` consecutive kept rows removed; the
  network learns to restore them from the kept rows on both sides. It is applied to the XZ and
  YZ planes of the good slices around a gap, as they are.
- **lateral super-resolution** (`vemviz.sr`, method ``learned``): the same idea in XY. Each
  slice is area-downsampled by the scale ``S`` and the network learns to restore it from the
  smaller copy; it is then applied to the original slices (zero-shot, "downsample then
  restore" self-supervision). Every training pair starts the downsampling grid at a random
  offset (0 to S-1 px in y and x): a slice gives S^2 different small copies instead of one,
  which matters for small inputs (FlyEM, 90 s of training: +0.4 dB at x2, +1.0 dB at x4).

The network is a local implicit function (LIIF-style): a residual CNN encodes the
low-resolution plane into a feature map; a query at any continuous coordinate gathers the
features of the low-resolution samples that bracket it (2 rows for iso, 2 x 2 pixels for sr),
adds an encoding of its fractional position between them and decodes the value with a small
MLP. The decoder predicts a residual over the classical interpolation (natural cubic spline
along z for iso, bicubic for sr), so an untrained network starts at the classical result and
any factor or output spacing can be decoded. Intensities are normalised by the volume's mean
and standard deviation, so weights saved with `save_model` transfer to another volume of the
same microscope and resolution (`load_model`).

Training is bounded by a number of steps and a time budget (seconds); the learning rate follows
a cosine schedule over whichever runs out first. With the time budget not binding and a fixed
seed, training and results are deterministic on a given device. CUDA is used when available
(``device="auto"``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.interpolate import CubicSpline
from torch import nn

from vemviz.device import resolve_device
from vemviz.errors import VemvizError
from vemviz.io.atomic import atomic_path
from vemviz.progress import track

KINDS = ("iso", "sr")


@dataclass(frozen=True)
class Architecture:
    """Network size: encoder width and residual blocks, decoder hidden width, and the
    neighbour planes on each side that iso and gap filling see (`LocalImplicitNet`)."""

    channels: int = 32
    blocks: int = 4
    hidden: int = 32
    neighbours: int = 2  # iso and gap filling: planes on each side as extra channels (sr: 0)


# Training steps when `Training.steps` is None. iso (and gap filling) gained from longer
# training (FlyEM, fused result: x4 29.57 -> 29.59 dB, x8 25.71 -> 25.75 from 3000 to 6000);
# self-supervised sr lost at x4 (29.56 -> 29.17 dB): one octave down it learns more of the
# coarser scale's detail, which does not hold at the finest.
DEFAULT_STEPS = {"iso": 6000, "sr": 3000}


@dataclass(frozen=True)
class Training:
    """How to train: stopping (steps, None for the kind's `DEFAULT_STEPS`; seconds), batch and
    patch sizes, optimiser, seed, device."""

    steps: int | None = None
    time_budget: float | None = 240.0
    batch: int = 16
    patch: int = 48
    context: int = 8
    lr: float = 2e-3
    seed: int = 0
    device: str = "auto"
    architecture: Architecture = field(default_factory=Architecture)


@dataclass
class LearnedModel:
    """A trained network with what it was trained for: ``kind`` iso/sr, the factor, and the
    ``spacing`` in pixels of the real slices its neighbour planes stand for (iso: the factor;
    gap filling: the z/xy voxel ratio)."""

    kind: str
    factor: float
    architecture: Architecture
    net: LocalImplicitNet
    spacing: float = 1.0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # intensity (mean, std) to normalise every input by instead of its own; the block stages
    # (`vemviz.blockwise`) set the whole volume's, so that all blocks are scaled alike
    norm: tuple[float, float] | None = None
    # iso: weight of this network's result against the flow interpolation it is fused with
    # (`vemviz.iso.train_inr` estimates it; 0.5 when it was not)
    fusion_weight: float = 0.5


# --- network ----------------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


def _take(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Index ``x`` (batch first) along ``dim`` with shared (1-D) or per-sample (2-D) indices."""
    if index.ndim == 1:
        return torch.index_select(x, dim, index)
    return torch.stack([torch.index_select(x[b], dim - 1, index[b]) for b in range(len(x))])


def _fraction_features(frac: torch.Tensor) -> torch.Tensor:
    angle = math.pi * frac
    return torch.stack([frac, torch.sin(angle), torch.cos(angle)], dim=-1)


class LocalImplicitNet(nn.Module):
    """Encoder on the low-resolution plane; decoder at bracketed continuous coordinates.

    ``axes`` is 1 when only rows are sparse (iso: columns are already at full resolution) and
    2 when rows and columns are (sr). With one sparse axis the input holds the plane and its
    ``arch.neighbours`` neighbour planes on each side as channels (the plane in the middle).
    """

    def __init__(self, axes: int, arch: Architecture) -> None:
        super().__init__()
        self.axes = axes
        width, hidden = arch.channels, arch.hidden
        planes = 2 * arch.neighbours + 1 if axes == 1 else 1
        self.head = nn.Conv2d(planes, width, 3, padding=1, padding_mode="reflect")
        self.body = nn.Sequential(*[_Block(width) for _ in range(arch.blocks)])
        self.proj = nn.Conv2d(width, hidden * 2**axes, 1)
        self.frac = nn.Linear(3 * axes, hidden, bias=False)
        self.mlp = nn.Sequential(
            nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(
        self,
        low: torch.Tensor,
        rows: tuple[torch.Tensor, torch.Tensor],
        cols: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Residual at the queried grid: ``low`` (B, planes, h, w); ``rows``/``cols`` are the
        lower bracketing index and the fraction toward the next sample, shape (n,) or (B, n)."""
        head = self.head(low)
        feats = self.proj(self.body(head) + head)
        batch, _, height, width = feats.shape
        hidden = self.frac.out_features
        feats = feats.view(batch, 2**self.axes, hidden, height, width)
        row_index, row_frac = rows
        acc: torch.Tensor | int = 0
        for corner in range(2**self.axes):
            dr, dc = (corner, 0) if self.axes == 1 else divmod(corner, 2)
            part = _take(feats[:, corner], 2, row_index + dr)
            if cols is not None:
                part = _take(part, 3, cols[0] + dc)
            acc = acc + part
        weight = self.frac.weight
        row_code = _fraction_features(row_frac) @ weight[:, :3].T  # (..., n, hidden)
        acc = acc + _as_rows(row_code)
        if cols is not None:
            col_code = _fraction_features(cols[1]) @ weight[:, 3:].T
            acc = acc + _as_cols(col_code)
        return self.mlp(acc)


def _as_rows(code: torch.Tensor) -> torch.Tensor:
    """(n, H) or (B, n, H) -> broadcastable (B|1, H, n, 1)."""
    code = code if code.ndim == 3 else code[None]
    return code.permute(0, 2, 1)[..., None]


def _as_cols(code: torch.Tensor) -> torch.Tensor:
    code = code if code.ndim == 3 else code[None]
    return code.permute(0, 2, 1)[:, :, None, :]


# --- training ---------------------------------------------------------------------------------


def _normalise(
    stack: np.ndarray, norm: tuple[float, float] | None = None
) -> tuple[np.ndarray, float, float]:
    """``stack`` as float32 (x - mean) / std, with its own mean and std or ``norm``'s."""
    data = stack.astype(np.float32)
    mean, std = norm if norm is not None else (float(data.mean()), float(data.std()))
    std = std if std > 1e-6 else 1.0
    return (data - mean) / std, mean, std


def _bracket(positions: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower bracketing sample (index into ``samples``, at most len-2) and fraction."""
    index = np.clip(np.searchsorted(samples, positions, side="right") - 1, 0, len(samples) - 2)
    gap = samples[index + 1] - samples[index]
    return index, ((positions - samples[index]) / gap).astype(np.float32)


def _iso_context(shape: tuple[int, int], factor: float, context: int) -> int:
    """Low-resolution rows per training patch that every phase and orientation provides."""
    guaranteed = int(np.floor((min(shape) - 1.5 - factor) / factor)) + 1
    if guaranteed < 3:
        raise VemvizError(
            f"the slices ({shape[0]} x {shape[1]} px) are too small to learn a z factor of "
            f"{factor:g}; they need at least {int(np.ceil(3 * factor + 2))} px on each side"
        )
    return min(context, guaranteed)


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into ``0 .. size-1`` at both ends (``-1 -> 1``, ``size -> size-2``)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index > size - 1, period - index, index)


def _decimated_planes(
    planes: np.ndarray, spacing: float, neighbours: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random plane with its ``neighbours`` planes on each side, (2K+1, h, w), randomly
    transposed and mirrored (in-plane and in the order of the planes), and the rows kept
    every ``spacing`` pixels from a random phase (``round(s + k * spacing)``)."""
    z = rng.integers(len(planes))
    stack = planes[_mirror(z + np.arange(-neighbours, neighbours + 1), len(planes))]
    if rng.random() < 0.5:
        stack = stack.transpose(0, 2, 1)
    if rng.random() < 0.5:
        stack = stack[:, ::-1]
    if rng.random() < 0.5:
        stack = stack[:, :, ::-1]
    if rng.random() < 0.5:
        stack = stack[::-1]
    height = stack.shape[1]
    kept = np.round(rng.uniform(0, spacing) + spacing * np.arange(height)).astype(int)
    return stack, kept[kept <= height - 1]


def _iso_sample(
    planes: np.ndarray,
    factor: float,
    neighbours: int,
    rows: int,
    patch: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """One training patch: decimated rows of the plane and its neighbours, bracket
    indices/fractions, cubic base, target."""
    stack, kept = _decimated_planes(planes, factor, neighbours, rng)
    width = stack.shape[2]
    k0 = rng.integers(0, len(kept) - rows + 1)
    c0 = rng.integers(0, width - patch + 1)
    block = np.ascontiguousarray(stack[:, :, c0 : c0 + patch])
    plane = block[neighbours]
    local = kept[k0 : k0 + rows]
    margin = 1 if rows >= 4 else 0
    n_target = int(np.floor(factor * (rows - 1 - 2 * margin)))
    targets = local[margin] + np.arange(n_target)
    base = CubicSpline(kept, plane[kept], axis=0, bc_type="natural")(targets)
    index, frac = _bracket(targets, local)
    return block[:, local], index, frac, base.astype(np.float32), plane[targets]


def _gap_sample(
    planes: np.ndarray,
    spacing: float,
    neighbours: int,
    run: int,
    context: int,
    patch: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """One gap-filling patch: rows every ``spacing`` px, ``run`` consecutive ones removed
    (from the plane and its neighbours alike, as a missing slice is missing from every plane).

    The kept rows are ``context`` on each side of the gap; the targets are the removed rows.
    Positions are in units of kept rows (the gap is one unit), as `_decode_planes` sees them.
    """
    stack, kept = _decimated_planes(planes, spacing, neighbours, rng)
    width = stack.shape[2]
    k0 = rng.integers(0, len(kept) - (2 * context + run) + 1)
    window = kept[k0 : k0 + 2 * context + run]
    local = np.concatenate([window[:context], window[context + run :]])
    c0 = rng.integers(0, width - patch + 1)
    block = np.ascontiguousarray(stack[:, :, c0 : c0 + patch])
    plane = block[neighbours]
    index = np.full(run, context - 1)
    frac = ((np.arange(run) + 1) / (run + 1)).astype(np.float32)
    base = CubicSpline(np.arange(2 * context), plane[local], axis=0, bc_type="natural")(
        index + frac
    )
    targets = plane[window[context:-context]]
    return block[:, local], index, frac, base.astype(np.float32), targets


def _sr_sample(
    slices: np.ndarray, scale: float, patch: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """One training patch: the slice area-downsampled by ``scale``, restored to the slice."""
    plane = slices[rng.integers(len(slices))]
    if plane.shape[0] == plane.shape[1] and rng.random() < 0.5:
        plane = plane.T
    if rng.random() < 0.5:
        plane = plane[::-1]
    if rng.random() < 0.5:
        plane = plane[:, ::-1]
    step = math.ceil(scale)  # a random phase of the downsampling grid
    height, width = plane.shape[0] - step + 1, plane.shape[1] - step + 1
    if scale == step:  # whole blocks of step x step pixels, as the scan averaged them
        height, width = height // step * step, width // step * step
    dy, dx = rng.integers(step), rng.integers(step)
    plane = np.ascontiguousarray(plane[dy : dy + height, dx : dx + width])
    small = _area_down(plane, scale)
    base = _bicubic(small, (height, width))
    r0, c0 = rng.integers(0, height - patch + 1), rng.integers(0, width - patch + 1)
    (ri, rf), (ci, cf) = (
        _sr_axis(small.shape[0], height, r0, patch),
        _sr_axis(small.shape[1], width, c0, patch),
    )
    crop_rows = slice(ri[1], ri[1] + ri[2])
    crop_cols = slice(ci[1], ci[1] + ci[2])
    window = (slice(r0, r0 + patch), slice(c0, c0 + patch))
    low = small[None, crop_rows, crop_cols]
    return low, (ri[0], ci[0]), (rf, cf), base[window], plane[window]


def _sr_positions(n_small: int, n_large: int) -> np.ndarray:
    """Position of each large pixel centre in small-pixel units (OpenCV resize convention)."""
    return (np.arange(n_large) + 0.5) * (n_small / n_large) - 0.5


def _sr_axis(
    n_small: int, n_large: int, start: int, patch: int
) -> tuple[tuple[np.ndarray, int, int], np.ndarray]:
    """Bracket indices (relative to a small crop), the crop start and length, fractions."""
    positions = _sr_positions(n_small, n_large)[start : start + patch]
    index, frac = _bracket(positions, np.arange(n_small, dtype=np.float64))
    length = min(n_small, int(np.ceil(patch * n_small / n_large)) + 8)
    first = int(np.clip(index.min() - 3, 0, n_small - length))
    return (index - first, first, length), frac


def _area_down(plane: np.ndarray, scale: float) -> np.ndarray:
    height, width = plane.shape
    size = (max(2, round(width / scale)), max(2, round(height / scale)))
    return cv2.resize(plane, size, interpolation=cv2.INTER_AREA)


def _bicubic(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(plane, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _to_tensor(arrays: list[np.ndarray], device: torch.device, dtype=torch.float32):
    return torch.as_tensor(np.stack(arrays), dtype=dtype, device=device)


def _train(
    kind: str,
    factor: float,
    sampler,
    training: Training,
    device: torch.device,
    spacing: float = 1.0,
    norm: tuple[float, float] | None = None,
) -> LearnedModel:
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    net = LocalImplicitNet(1 if kind == "iso" else 2, training.architecture).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=training.lr)
    losses: list[float] = []
    start = time.perf_counter()
    budget = training.time_budget
    steps = training.steps or DEFAULT_STEPS[kind]
    for step in track(range(steps), f"{kind}: training ({device.type})"):
        elapsed = time.perf_counter() - start
        progress = step / steps
        if budget is not None:
            if elapsed >= budget:
                break
            progress = max(progress, elapsed / budget)
        for group in optimiser.param_groups:
            group["lr"] = training.lr * 0.5 * (1 + math.cos(math.pi * progress))
        samples = [sampler(rng) for _ in range(training.batch)]
        loss = _loss(kind, net, samples, device)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    net.eval()
    seconds = time.perf_counter() - start
    return LearnedModel(kind, factor, training.architecture, net, spacing, losses, seconds, norm)


def _loss(kind: str, net: LocalImplicitNet, samples: list, device: torch.device) -> torch.Tensor:
    low = _to_tensor([s[0] for s in samples], device)
    base = _to_tensor([s[3] for s in samples], device)
    target = _to_tensor([s[4] for s in samples], device)
    if kind == "iso":
        rows = (
            _to_tensor([s[1] for s in samples], device, torch.long),
            _to_tensor([s[2] for s in samples], device),
        )
        predicted = base + net(low, rows)[:, 0]
        inner = (slice(None), slice(None), slice(4, -4))  # away from the patch's side edges
        return torch.nn.functional.l1_loss(predicted[inner], target[inner])
    rows = (
        _to_tensor([s[1][0] for s in samples], device, torch.long),
        _to_tensor([s[2][0] for s in samples], device),
    )
    cols = (
        _to_tensor([s[1][1] for s in samples], device, torch.long),
        _to_tensor([s[2][1] for s in samples], device),
    )
    predicted = base + net(low, rows, cols)[:, 0]
    return torch.nn.functional.l1_loss(predicted, target)


def train_iso(
    stack: np.ndarray,
    factor: float,
    training: Training = Training(),
    norm: tuple[float, float] | None = None,
) -> LearnedModel:
    """Learn z upsampling by ``factor`` from the XY planes of ``stack`` (z, y, x); ``norm``
    fixes the intensity normalisation (`LearnedModel.norm`), e.g. to a whole volume's when
    ``stack`` is a sample of it."""
    _check_stack(stack)
    if not np.isfinite(factor) or factor <= 1:
        raise VemvizError(f"learned isotropic reconstruction needs a factor > 1, got {factor}")
    device = resolve_device(training.device)
    planes, _, _ = _normalise(stack, norm)
    rows = _iso_context(stack.shape[1:], factor, training.context)
    patch = min(training.patch, *stack.shape[1:])
    if patch < 12:
        raise VemvizError("learned isotropic reconstruction needs slices of at least 12 x 12 px")

    neighbours = training.architecture.neighbours

    def sampler(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return _iso_sample(planes, factor, neighbours, rows, patch, rng)

    return _train("iso", factor, sampler, training, device, spacing=factor, norm=norm)


def train_gap(
    stack: np.ndarray, spacing: float, run: int, training: Training = Training()
) -> LearnedModel:
    """Learn to fill ``run`` consecutive missing z slices from the XY planes of ``stack``.

    ``spacing`` is the z/xy voxel ratio (1 for isotropic voxels). The network sees the good
    slices on both sides as they are (not decimated) and decodes the missing ones at fractions
    ``1/(run+1) ... run/(run+1)`` between its two neighbours; `reconstruct_iso` applies it.
    """
    _check_stack(stack)
    if run < 1 or not np.isfinite(spacing) or spacing <= 0:
        raise VemvizError(f"gap filling needs run >= 1 and a spacing > 0, got {run}, {spacing}")
    device = resolve_device(training.device)
    planes, _, _ = _normalise(stack)
    rows = _iso_context(stack.shape[1:], spacing, 2 * training.context + run)
    context = (rows - run) // 2
    patch = min(training.patch, *stack.shape[1:])
    if context < 1 or patch < 12:
        raise VemvizError(
            f"slices of {stack.shape[1]} x {stack.shape[2]} px are too small to learn to fill "
            f"{run} missing slice(s) at a z/xy ratio of {spacing:g}"
        )

    neighbours = training.architecture.neighbours

    def sampler(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return _gap_sample(planes, spacing, neighbours, run, context, patch, rng)

    return _train("iso", spacing * (run + 1), sampler, training, device, spacing=spacing)


def train_sr(
    stack: np.ndarray,
    scale: float,
    training: Training = Training(),
    norm: tuple[float, float] | None = None,
) -> LearnedModel:
    """Learn lateral upscaling by ``scale`` from the slices of ``stack`` downsampled by it
    (``norm`` as in `train_iso`)."""
    _check_stack(stack)
    if not np.isfinite(scale) or scale <= 1:
        raise VemvizError(f"learned super-resolution needs a scale > 1, got {scale}")
    device = resolve_device(training.device)
    slices, _, _ = _normalise(stack, norm)
    patch = min(training.patch, min(stack.shape[1:]) - 2 * math.ceil(scale) + 2)
    if min(stack.shape[1:]) / scale < 4:
        raise VemvizError(
            f"slices of {stack.shape[1]} x {stack.shape[2]} px are too small to learn x{scale:g} "
            "super-resolution from themselves"
        )

    def sampler(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        return _sr_sample(slices, scale, patch, rng)

    # a slice's neighbours in z have no counterpart in its downsampled training copies
    training = replace(training, architecture=replace(training.architecture, neighbours=0))
    return _train("sr", scale, sampler, training, device, norm=norm)


def _check_stack(stack: np.ndarray) -> None:
    if stack.ndim != 3:
        raise VemvizError(f"learned upsampling needs a 3D (z, y, x) volume, not {stack.ndim}-D")
    if not np.isfinite(stack).all():
        raise VemvizError("the volume contains NaN or infinite values")


# --- inference --------------------------------------------------------------------------------


def _device_of(model: LearnedModel) -> torch.device:
    return next(model.net.parameters()).device


def _planes_batch(voxels_per_plane: int, device: torch.device) -> int:
    """Planes decoded together: about 64 k query points per batch on the CPU, 2 M on a GPU.
    On the CPU small batches stay in cache: a 48 x 512 x 512 block (x2) decoded in 29 s with
    64 k and 127 s with 2 M points, and peaked 0.3 instead of 2.1 GB above its arrays."""
    points = 2_000_000 if device.type == "cuda" else 64_000
    return max(1, points // max(1, voxels_per_plane))


def reach(model: LearnedModel) -> int:
    """Rows and columns on each side that a decoded value depends on: the encoder's 3 x 3
    convolutions (the head and two per residual block) and the bracketing sample beyond."""
    return 1 + 2 * model.architecture.blocks + 1


def neighbour_offsets(model: LearnedModel) -> np.ndarray:
    """In-plane offsets (pixels) of the neighbour planes an iso model reads: round(k spacing)."""
    k = model.architecture.neighbours
    return np.round(np.arange(-k, k + 1) * model.spacing).astype(int)


@torch.no_grad()
def _decode_planes(
    model: LearnedModel, planes: np.ndarray, positions: np.ndarray, description: str
) -> np.ndarray:
    """Upsample the rows of ``planes`` (n, rows, cols), normalised, to ``positions``; plane
    ``i`` is decoded with planes ``i + neighbour_offsets`` (mirrored at the ends) beside it."""
    device = _device_of(model)
    n_rows = planes.shape[1]
    index, frac = _bracket(positions, np.arange(n_rows, dtype=np.float64))
    rows = (torch.as_tensor(index, device=device), torch.as_tensor(frac, device=device))
    offsets = neighbour_offsets(model)
    out = np.empty((len(planes), len(positions), planes.shape[2]), dtype=np.float32)
    step = _planes_batch(len(positions) * planes.shape[2], device)
    for p0 in track(range(0, len(planes), step), description):
        ids = np.arange(p0, min(p0 + step, len(planes)))
        block = planes[p0 : p0 + step]
        base = CubicSpline(np.arange(n_rows), block, axis=1, bc_type="natural")(positions)
        stacks = planes[_mirror(ids[:, None] + offsets, len(planes))]
        low = torch.as_tensor(np.ascontiguousarray(stacks), device=device)
        residual = model.net(low, rows)[:, 0].cpu().numpy()
        out[p0 : p0 + step] = base + residual
    return out


def reconstruct_iso(
    model: LearnedModel, stack: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slices of ``stack`` (z, y, x) at z ``positions`` and their uncertainty (same units).

    The XZ pass decodes each y plane, the YZ pass each x plane; the result is their mean and
    the uncertainty half their absolute difference.
    """
    _check_model(model, "iso")
    _check_stack(stack)
    if stack.shape[0] < 2:
        raise VemvizError("isotropic reconstruction needs at least 2 z slices")
    data, mean, std = _normalise(stack, model.norm)
    xz = _decode_planes(model, data.transpose(1, 0, 2), positions, "iso: inr XZ planes")
    yz = _decode_planes(model, data.transpose(2, 0, 1), positions, "iso: inr YZ planes")
    xz, yz = xz.transpose(1, 0, 2), yz.transpose(1, 2, 0)
    fused = (xz + yz) * (0.5 * std) + mean
    return fused, np.abs(xz - yz) * (0.5 * std)


@torch.no_grad()
def upscale_sr(model: LearnedModel, stack: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Every slice of ``stack`` upscaled to ``shape`` (height, width) by the model, float32."""
    _check_model(model, "sr")
    _check_stack(stack)
    device = _device_of(model)
    data, mean, std = _normalise(stack, model.norm)
    axes = []
    for n_small, n_large in zip(stack.shape[1:], shape, strict=True):
        index, frac = _bracket(
            _sr_positions(n_small, n_large), np.arange(n_small, dtype=np.float64)
        )
        axes.append((torch.as_tensor(index, device=device), torch.as_tensor(frac, device=device)))
    out = np.empty((stack.shape[0], *shape), dtype=np.float32)
    step = _planes_batch(shape[0] * shape[1], device)
    for z0 in track(range(0, len(data), step), "sr: learned upscaling"):
        block = data[z0 : z0 + step]
        base = np.stack([_bicubic(s, shape) for s in block])
        low = torch.as_tensor(block, device=device)[:, None]
        residual = model.net(low, axes[0], axes[1])[:, 0].cpu().numpy()
        out[z0 : z0 + step] = (base + residual) * std + mean
    return out


def training_report(model: LearnedModel) -> dict:
    """What a report says of a model's training (nothing of it for a loaded model)."""
    losses = model.losses
    return {
        "model_factor": model.factor,
        **({"fusion_weight": round(model.fusion_weight, 4)} if model.kind == "iso" else {}),
        "training_steps": len(losses),
        "training_seconds": round(model.seconds, 2),
        "training_loss_first_last": [losses[0], losses[-1]] if losses else None,
    }


def _check_model(model: LearnedModel, kind: str) -> None:
    if model.kind != kind:
        raise VemvizError(f"this model was trained for {model.kind!r}, not {kind!r}")


# --- persistence ------------------------------------------------------------------------------


def save_model(model: LearnedModel, path: str | Path) -> None:
    """Write the weights and what they were trained for (a small .pt file), atomically."""
    payload = {
        "format": "vemviz-inr-1",
        "kind": model.kind,
        "factor": model.factor,
        "spacing": model.spacing,
        "fusion_weight": model.fusion_weight,
        "architecture": asdict(model.architecture),
        "state": {k: v.cpu() for k, v in model.net.state_dict().items()},
    }
    with atomic_path(path) as temp:
        torch.save(payload, temp)


def load_model(path: str | Path, kind: str, device: str = "auto") -> LearnedModel:
    """Read a model written by `save_model`; ``kind`` (iso/sr) must match."""
    path = Path(path)
    if not path.is_file():
        raise VemvizError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise VemvizError(f"{path} is not a vemviz model file ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != "vemviz-inr-1":
        raise VemvizError(f"{path} is not a vemviz model file")
    arch = Architecture(**{"neighbours": 0, **payload["architecture"]})  # files before neighbours
    net = LocalImplicitNet(1 if payload["kind"] == "iso" else 2, arch)
    spacing = float(payload.get("spacing", 1.0))
    model = LearnedModel(payload["kind"], float(payload["factor"]), arch, net, spacing,
                         fusion_weight=float(payload.get("fusion_weight", 0.5)))  # fmt: skip
    _check_model(model, kind)
    model.net.load_state_dict(payload["state"])
    model.net.to(resolve_device(device)).eval()
    return model
