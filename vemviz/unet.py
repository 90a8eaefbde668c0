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


def resample_planes(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of (N, C, H, W) planes to ``size`` (antialiased when shrinking)."""
    if tuple(planes.shape[-2:]) == tuple(size):
        return planes
    shrink = size[0] < planes.shape[-2] or size[1] < planes.shape[-1]
    return F.interpolate(planes, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _window(size: int, overlap: int) -> torch.Tensor:
    """1D blending weights: a linear ramp over the overlap at each end, 1 in between."""
    ramp = torch.ones(size)
    if overlap:
        edge = (torch.arange(overlap, dtype=torch.float32) + 1) / (overlap + 1)
        ramp[:overlap], ramp[-overlap:] = edge, edge.flip(0)
    return ramp


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


@torch.no_grad()
def predict_planes(
    model: UNet,
    planes: torch.Tensor,
    pixel_nm: tuple[float, float],
    *,
    tile: int = 256,
    overlap: int = 32,
) -> torch.Tensor:
    """Probabilities (N, H, W) for normalised planes (N, context, H, W) with ``pixel_nm`` pixels.

    The planes are resampled to the model's pixel size, padded (reflect) to the model's size
    multiple, predicted in overlapping tiles blended by linear ramps, and resampled back.
    """
    config = model.config
    device = next(model.parameters()).device
    height, width = planes.shape[-2:]
    size = (max(round(height * pixel_nm[0] / config.pixel_nm), 1),
            max(round(width * pixel_nm[1] / config.pixel_nm), 1))  # fmt: skip
    x = resample_planes(planes.float(), size)
    m = config.multiple
    tile = max(m, tile // m * m)
    padded = [-(-s // m) * m for s in size]
    pad = (0, padded[1] - size[1], 0, padded[0] - size[0])
    x = F.pad(x, pad, mode="reflect" if min(size) > max(pad) else "replicate")
    tiles_y = min(tile, padded[0])
    tiles_x = min(tile, padded[1])
    out = torch.zeros((x.shape[0], 1, *padded))
    weight = torch.zeros((1, 1, *padded))
    over_y, over_x = min(overlap, tiles_y // 4), min(overlap, tiles_x // 4)
    window = _window(tiles_y, over_y)[:, None] * _window(tiles_x, over_x)[None, :]
    for y0 in _starts(padded[0], tiles_y, tiles_y - 2 * over_y):
        for x0 in _starts(padded[1], tiles_x, tiles_x - 2 * over_x):
            crop = x[..., y0 : y0 + tiles_y, x0 : x0 + tiles_x].to(device)
            prob = torch.sigmoid(model(crop)).cpu()
            out[..., y0 : y0 + tiles_y, x0 : x0 + tiles_x] += prob * window
            weight[..., y0 : y0 + tiles_y, x0 : x0 + tiles_x] += window
    out = (out / weight)[..., : size[0], : size[1]]
    return resample_planes(out, (height, width))[:, 0].clamp_(0, 1)
