"""Training and fine-tuning of the segmentation U-Nets (`vemviz.unet`).

Data. Each labelled volume becomes a `TrainingVolume` at the model's pixel size: the intensity
is normalised like at inference (`vemviz.segment.normalize_intensity`), the target is the
foreground mask (mitochondria) or the boundary map of the instance labels (cells: voxels whose
6-neighbour carries another label, or unlabelled), and both are resampled in-plane to
``config.pixel_nm`` (and along z too when the volume is near-isotropic, so that xz and yz
planes can be drawn as well). Targets stay soft after resampling.

Patches. Every step draws a batch of square patches: a random plane orientation allowed by the
volume (xy only for anisotropic volumes), a random slice and centre, and a random affine map
(rotation, isotropic scale 0.8-1.25, mirror) plus a smooth elastic displacement, all applied in
one `map_coordinates` call per channel. For 2.5D models the slices just before and after the
plane are stacked as channels; with probability ``p_flat`` (always, where the spacing along the
normal is too coarse) the centre slice is repeated instead, so the model also works on
anisotropic volumes. Intensity augmentation: contrast, brightness, gamma, Gaussian blur and
Gaussian noise.

Loss and loop. Binary cross-entropy on the logits plus soft Dice (robust to the strong class
imbalance of membranes and organelles), AdamW, learning rate on a cosine schedule over the time
budget (so a run of any length ends with a small rate), progress via `vemviz.progress.track`,
checkpoints written atomically every ``checkpoint_s`` seconds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

from vemviz.errors import VemvizError
from vemviz.progress import status, track
from vemviz.segment import boundary_map, normalize_intensity
from vemviz.unet import ModelConfig, UNet, save_model
from vemviz.volume import VoxelSize


@dataclass
class TrainingVolume:
    """A normalised image and its soft target, both (Z, Y, X) at the model pixel size."""

    image: np.ndarray
    target: np.ndarray
    normals: tuple[int, ...]  # axes that may serve as the plane normal
    context_ok: bool  # neighbouring slices along the normal are close enough for 2.5D
    weight: float = 1.0


def prepare_volume(
    image: np.ndarray,
    labels: np.ndarray,
    voxel_size_nm: VoxelSize,
    config: ModelConfig,
    weight: float = 1.0,
) -> TrainingVolume:
    """Normalise, derive the target for ``config.target`` and resample to the model pixel size."""
    if image.ndim != 3 or image.shape != labels.shape:
        raise VemvizError(
            f"training needs a (z, y, x) image and labels of the same shape; got {image.shape} "
            f"and {labels.shape}"
        )
    # near-isotropic and thick enough to draw xz / yz planes from
    isotropic = max(voxel_size_nm) <= 1.5 * min(voxel_size_nm) and min(image.shape) >= 32
    if config.target == "mito":
        target = (labels > 0).astype(np.float32)
    elif isotropic:
        target = boundary_map(labels).astype(np.float32)
    else:  # trained slice by slice: the boundaries within each slice (labels may be per slice)
        target = np.stack([boundary_map(plane) for plane in labels]).astype(np.float32)
    if target.max() == target.min():
        raise VemvizError("the training labels hold a single class: nothing to learn from")
    zoom = [v / config.pixel_nm for v in voxel_size_nm]
    if not isotropic:
        zoom[0] = 1.0
    normalized = normalize_intensity(image)
    if any(z < 0.75 for z in zoom):
        sigma = [0.5 * (1 / z - 1) if z < 1 else 0.0 for z in zoom]
        normalized = ndi.gaussian_filter(normalized, sigma)
    if any(abs(z - 1) > 1e-3 for z in zoom):
        normalized = ndi.zoom(normalized, zoom, order=1)
        target = ndi.zoom(target, zoom, order=1)
    return TrainingVolume(
        image=normalized.astype(np.float32),
        target=np.clip(target, 0, 1).astype(np.float32),
        normals=(0, 1, 2) if isotropic else (0,),
        context_ok=voxel_size_nm[0] <= 2 * config.pixel_nm,
        weight=weight,
    )


@dataclass
class Augmentation:
    """Ranges of the random transforms (see the module docstring)."""

    scale: tuple[float, float] = (0.8, 1.25)
    elastic_px: float = 4.0
    contrast: tuple[float, float] = (0.7, 1.4)
    brightness: float = 0.15
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_p: float = 0.5
    noise_std: tuple[float, float] = (0.01, 0.08)
    p_flat: float = 0.2


def _coordinates(rng: np.random.Generator, size: int, centre: np.ndarray, aug: Augmentation):
    angle = rng.uniform(0, 2 * math.pi)
    scale = math.exp(rng.uniform(math.log(aug.scale[0]), math.log(aug.scale[1])))
    matrix = scale * np.array([[math.cos(angle), -math.sin(angle)],
                               [math.sin(angle), math.cos(angle)]])  # fmt: skip
    if rng.random() < 0.5:
        matrix[:, 0] *= -1
    grid = np.stack(np.meshgrid(*[np.arange(size) - (size - 1) / 2] * 2, indexing="ij"))
    coords = np.tensordot(matrix, grid, axes=1) + centre[:, None, None]
    if aug.elastic_px > 0:
        coarse = rng.normal(0, aug.elastic_px, (2, 5, 5))
        coords += np.stack([ndi.zoom(c, size / 5, order=3)[:size, :size] for c in coarse])
    return coords


def _intensity(patch: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Random contrast, brightness, gamma, blur and noise on a normalised (C, H, W) patch."""
    lo, hi = -0.5, 0.5
    unit = np.clip((patch - lo) / (hi - lo), 0, 1) ** rng.uniform(*aug.gamma)
    patch = unit * (hi - lo) + lo
    patch = patch * rng.uniform(*aug.contrast) + rng.uniform(-aug.brightness, aug.brightness)
    if rng.random() < aug.blur_p:
        patch = ndi.gaussian_filter(patch, (0, *[rng.uniform(*aug.blur_sigma)] * 2))
    if rng.random() < aug.noise_p:
        patch = patch + rng.normal(0, rng.uniform(*aug.noise_std), patch.shape)
    return patch.astype(np.float32)


def draw_patch(
    volume: TrainingVolume,
    rng: np.random.Generator,
    size: int,
    context: int,
    aug: Augmentation,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (context, size, size) image patch and its (1, size, size) target."""
    normal = int(rng.choice(volume.normals))
    image = np.moveaxis(volume.image, normal, 0)
    target = np.moveaxis(volume.target, normal, 0)
    index = int(rng.integers(image.shape[0]))
    half = context // 2
    flat = not volume.context_ok or rng.random() < aug.p_flat
    indices = [index if flat else int(np.clip(index + d, 0, image.shape[0] - 1))
               for d in range(-half, half + 1)]  # fmt: skip
    shape = np.array(image.shape[1:])
    centre = rng.uniform(0, 1, 2) * (shape - 1)
    coords = _coordinates(rng, size, centre, aug)
    channels = [ndi.map_coordinates(image[i], coords, order=1, mode="reflect") for i in indices]
    label = ndi.map_coordinates(target[index], coords, order=1, mode="reflect")
    return _intensity(np.stack(channels), rng, aug), label[np.newaxis].astype(np.float32)


def draw_batch(
    volumes: list[TrainingVolume],
    rng: np.random.Generator,
    batch: int,
    size: int,
    context: int,
    aug: Augmentation,
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = np.array([v.weight for v in volumes], dtype=float)
    picks = rng.choice(len(volumes), size=batch, p=weights / weights.sum())
    pairs = [draw_patch(volumes[i], rng, size, context, aug) for i in picks]
    return (torch.from_numpy(np.stack([p[0] for p in pairs])),
            torch.from_numpy(np.stack([p[1] for p in pairs])))  # fmt: skip


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice of the foreground."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice


@dataclass
class TrainOptions:
    seconds: float = 600.0
    max_steps: int = 1_000_000
    batch: int = 8
    patch: int = 160
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_s: float = 300.0
    log_every: int = 25


def train(
    model: UNet,
    volumes: list[TrainingVolume],
    options: TrainOptions,
    *,
    out: Path | None = None,
    device: torch.device | None = None,
    augmentation: Augmentation | None = None,
    info: dict[str, Any] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place until the time budget or step limit; returns the training record.

    With ``out`` the model is saved there every ``checkpoint_s`` seconds and at the end.
    """
    if not volumes:
        raise VemvizError("no training data")
    device = device or torch.device("cpu")
    aug = augmentation or Augmentation()
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr,
                                  weight_decay=options.weight_decay)  # fmt: skip
    record: dict[str, Any] = {**(info or {}), "options": options.__dict__, "losses": []}
    start = last_save = time.monotonic()
    running: list[float] = []
    step = 0
    for step in track(range(1, options.max_steps + 1), "training", total=options.max_steps):
        elapsed = time.monotonic() - start
        if elapsed >= options.seconds:
            step -= 1
            break
        for group in optimizer.param_groups:
            group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * elapsed / options.seconds))
        x, y = draw_batch(volumes, rng, options.batch, options.patch, model.config.context, aug)
        loss = segmentation_loss(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(loss.item())
        if step % options.log_every == 0:
            entry = {"step": step, "seconds": round(elapsed, 1),
                     "loss": round(float(np.mean(running)), 4)}  # fmt: skip
            record["losses"].append(entry)
            running.clear()
            if log is not None:
                log(entry)
        if out is not None and time.monotonic() - last_save >= options.checkpoint_s:
            record.update(steps=step, seconds=round(time.monotonic() - start, 1))
            save_model(model.eval(), out, record)
            model.train()
            last_save = time.monotonic()
    record.update(steps=step, seconds=round(time.monotonic() - start, 1))
    model.eval()
    if out is not None:
        save_model(model, out, record)
    status(f"trained {step} steps in {record['seconds']:.0f} s")
    return record


@torch.no_grad()
def batch_loss(model: UNet, x: torch.Tensor, y: torch.Tensor) -> float:
    """The training loss of ``model`` on one fixed batch (for checks and logs)."""
    device = next(model.parameters()).device
    return float(segmentation_loss(model.eval()(x.to(device)), y.to(device)))


def write_log_line(path: Path) -> Callable[[dict[str, Any]], None]:
    """A ``log`` callback appending JSON lines to ``path``."""

    def log(entry: dict[str, Any]) -> None:
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    return log


def fine_tune(
    image: np.ndarray,
    labels: np.ndarray,
    voxel_size_nm: VoxelSize,
    target: str,
    out: Path,
    *,
    base_model: Path | None = None,
    options: TrainOptions | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Fine-tune the shipped model for ``target`` (or ``base_model``) on labelled slices."""
    from vemviz.device import resolve_device
    from vemviz.unet import load_model, shipped_model

    model = load_model(base_model or shipped_model(target))
    if model.config.target != target:
        raise VemvizError(f"{base_model} is a {model.config.target} model, not a {target} model")
    options = options or TrainOptions(seconds=600.0, lr=5e-4)
    size = min(image.shape[1:]) if image.ndim == 3 else 0
    patch = max(model.config.multiple, min(options.patch, size) // model.config.multiple
                * model.config.multiple)  # fmt: skip
    options.patch = patch
    volume = prepare_volume(image, labels, voxel_size_nm, model.config)
    info = {"fine_tuned_from": str(base_model or f"shipped {target}"), "slices": image.shape[0]}
    return train(model, [volume], options, out=out, device=resolve_device(device), info=info)
