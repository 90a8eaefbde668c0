"""A compact 2D U-Net and the model files vemviz ships and writes.

The network is the U-Net of Ronneberger et al. (2015) made small enough to train on a CPU:
``levels`` resolution levels, ``base`` channels at the top level doubling per level, each
level two 3x3 convolutions with GroupNorm and ReLU, max-pooling down, bilinear upsampling and
skip concatenation up, one output channel of logits. Its input is a 2D image plane with
``context`` channels: 1 for a plain 2D model, 3 for a 2.5D model that also sees the slices
just before and after the plane (along the plane's normal).

A model file is a ``torch.save`` dict holding only tensors and plain values (so it loads with
``weights_only=True``, never running code): ``config`` (target, pixel size in nm the network
was trained at, architecture, normalisation), ``state_dict`` (float16 to keep the files a few
MB) and ``training`` (data, steps, losses). The weights trained by ``scripts/train_seg.py``
ship in ``vemviz/weights/`` and are found by `shipped_model`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vemviz.errors import VemvizError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelConfig:
    """What a model predicts and how its input must be prepared."""

    target: str  # "mito" (foreground probability) or "cells" (boundary probability)
    pixel_nm: float  # in-plane pixel size the network works at; inputs are resampled to it
    context: int = 1  # input slices per plane: 1 (2D) or 3 (2.5D)
    base: int = 16
    levels: int = 4

    @property
    def multiple(self) -> int:
        """Plane sizes must be a multiple of this (one halving per level)."""
        return 2 ** (self.levels - 1)


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    groups = min(8, channels_out // 4)
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.GroupNorm(groups, channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
        nn.GroupNorm(groups, channels_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net mapping (N, context, H, W) to (N, 1, H, W) logits; H, W multiples of 2**(levels-1)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base * 2**i for i in range(config.levels)]
        self.down = nn.ModuleList()
        channels = config.context
        for width in widths:
            self.down.append(_block(channels, width))
            channels = width
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def save_model(model: UNet, path: Path, training: dict[str, Any]) -> None:
    """Write a model file (float16 weights) atomically."""
    from vemviz.io.atomic import atomic_path

    state = {k: v.detach().cpu().half() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"config": asdict(model.config), "state_dict": state, "training": training}, tmp)


def load_model(path: Path, device: str | torch.device = "cpu") -> UNet:
    """Read a model file written by `save_model` (no code is executed while loading)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        model = UNet(ModelConfig(**payload["config"]))
        model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise VemvizError(f"cannot load segmentation model {path}: {exc}") from exc
    model.training_info = payload.get("training", {})  # type: ignore[assignment]
    return model.to(device).eval()


def shipped_model(target: str) -> Path:
    """Path of the weights shipped for ``target``."""
    path = WEIGHTS_DIR / f"{target}.pt"
    if not path.is_file():
        raise VemvizError(f"no shipped {target} model at {path}; reinstall vemviz")
    return path


def segmentation_model(target: str, path: Path | None = None) -> UNet:
    """The network that segments ``target``: the model file at ``path`` (a `vemviz train-seg`
    result, which must be one for ``target``) or the shipped weights, on the best device."""
    from vemviz.device import resolve_device

    model = load_model(path or shipped_model(target), resolve_device("auto"))
    if model.config.target != target:
        raise VemvizError(f"{path} is a {model.config.target} model, not a {target} one")
    return model


def resample_planes(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of (N, C, H, W) planes to ``size`` (antialiased when shrinking)."""
    if tuple(planes.shape[-2:]) == tuple(size):
        return planes
    shrink = size[0] < planes.shape[-2] or size[1] < planes.shape[-1]
    return F.interpolate(planes, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def tile_geometry(
    pixel_nm: tuple[float, float], model_pixel_nm: float, tile: int = 256
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Tile cores and context (input pixels, per plane axis) of `predict_planes`.

    A window of ``tile`` model pixels is a core of ``3/4 tile`` plus ``tile / 8`` of context
    on each side, converted to input pixels of ``pixel_nm``.
    """
    context = tile // 8
    cores = tuple(max(1, round((tile - 2 * context) * model_pixel_nm / p)) for p in pixel_nm)
    halos = tuple(math.ceil(context * model_pixel_nm / p) for p in pixel_nm)
    return cores, halos  # type: ignore[return-value]


def tile_grid(length: int, core: int, context: int) -> list[tuple[int, int, int, int]]:
    """Tiles of one plane axis: (core start, core stop, window start, window stop).

    Cores of at most ``core`` pixels, all of about the same size, cover ``[0, length)`` from
    0 (so no thin last tile); each window adds ``context`` pixels on both sides, clipped to the
    plane. The grid depends only on the plane's length.
    """
    size = -(-length // -(-length // core))
    return [
        (s, min(s + size, length), max(s - context, 0), min(s + size + context, length))
        for s in range(0, length, size)
    ]


def _predict_window(
    model: UNet, window: torch.Tensor, pixel_nm: tuple[float, float]
) -> torch.Tensor:
    """Probabilities (N, h, w) of one window (N, context, h, w), one plane per forward pass."""
    config = model.config
    device = next(model.parameters()).device
    height, width = window.shape[-2:]
    size = (max(round(height * pixel_nm[0] / config.pixel_nm), 1),
            max(round(width * pixel_nm[1] / config.pixel_nm), 1))  # fmt: skip
    x = resample_planes(window.float(), size)
    m = config.multiple
    padded = [-(-s // m) * m for s in size]
    pad = (0, padded[1] - size[1], 0, padded[0] - size[0])
    x = F.pad(x, pad, mode="reflect" if min(size) > max(pad) else "replicate")
    prob = torch.cat([torch.sigmoid(model(x[n : n + 1].to(device))).cpu() for n in range(len(x))])
    return resample_planes(prob[..., : size[0], : size[1]], (height, width))[:, 0]


@torch.no_grad()
def predict_planes(
    model: UNet,
    planes: torch.Tensor,
    pixel_nm: tuple[float, float],
    *,
    tile: int = 256,
    offset: tuple[int, int] = (0, 0),
    full: tuple[int, int] | None = None,
    area: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Probabilities for normalised planes (N, context, H, W) with ``pixel_nm`` pixels.

    The planes are cut into a fixed grid of tiles anchored at the origin of the whole plane
    (`tile_geometry`, `tile_grid`); each tile is predicted from its window alone (resampled to
    the model's pixel size, padded to its size multiple) and only its core is kept. A tile's
    value therefore does not depend on what else is predicted: a block of a larger plane
    gives exactly the whole plane's values. ``planes`` may be such a block: it starts at
    ``offset`` of a plane of size ``full``, and the result covers ``area`` (row start, stop,
    column start, stop, in whole-plane pixels; default the block), whose tiles' windows must
    lie in the block (`prediction_box` in `vemviz.segment` gives the block to read).
    """
    height, width = planes.shape[-2:]
    full = full or (height, width)
    r_lo, r_hi, c_lo, c_hi = area or (offset[0], offset[0] + height, offset[1], offset[1] + width)
    (core_r, core_c), (halo_r, halo_c) = tile_geometry(pixel_nm, model.config.pixel_nm, tile)
    out = torch.zeros((planes.shape[0], r_hi - r_lo, c_hi - c_lo))
    for r0, r1, wr0, wr1 in tile_grid(full[0], core_r, halo_r):
        if r1 <= r_lo or r0 >= r_hi:
            continue
        for c0, c1, wc0, wc1 in tile_grid(full[1], core_c, halo_c):
            if c1 <= c_lo or c0 >= c_hi:
                continue
            if (
                wr0 < offset[0]
                or wc0 < offset[1]
                or wr1 > offset[0] + height
                or wc1 > offset[1] + width
            ):
                raise VemvizError("a tile's window reaches outside the planes given")
            window = planes[
                ..., wr0 - offset[0] : wr1 - offset[0], wc0 - offset[1] : wc1 - offset[1]
            ]
            prob = _predict_window(model, window, pixel_nm)
            y0, y1, x0, x1 = max(r0, r_lo), min(r1, r_hi), max(c0, c_lo), min(c1, c_hi)
            out[:, y0 - r_lo : y1 - r_lo, x0 - c_lo : x1 - c_lo] = prob[
                :, y0 - wr0 : y1 - wr0, x0 - wc0 : x1 - wc0
            ]
    return out.clamp_(0, 1)
