"""Conditional diffusion inpainting of EM slices, conditioned on the flow-warped neighbours.

Unconditional inpainting (RePaint) sees only the slice itself; in a volume the best evidence for
a damaged region is the same region in the neighbouring sections. The model here therefore
denoises the damaged slice given five conditioning channels (all intensities normalised to
about [-1, 1] per volume, see `intensity_range`):

``known``   the damaged slice with its damaged pixels set to 0,
``mask``    1 on damaged pixels,
``below``   the nearest good slice below, warped by optical flow to the damaged position,
``above``   the nearest good slice above, warped likewise (`vemviz.flow.warp_pair`, along the
            curved paths of `vemviz.flow.curved_pair_flows`),
``t``       the fractional position of the slice between them (0.5 for a single gap).

The three parts are kept apart as in ``diffusers``:

- **model** (`build_model`, `load_model`, `save_model`): a small ``diffusers.UNet2DModel``
  (``block_out_channels`` (32, 64, 64), no attention, ~1 M parameters, ~2 MB in float16) with
  six input channels (the noisy slice plus the five above). It predicts the clean slice as a
  residual on a base image -- the known pixels, and the distance-weighted blend of the two
  warped neighbours inside the mask (`predict_clean`) -- and its output layer starts at zero,
  so an untrained model reproduces flow interpolation and training only has to learn what the
  flow blend gets wrong.
- **schedulers** (`training_scheduler`, `sampling_scheduler`): a 1000-step cosine DDPM schedule
  with ``prediction_type="sample"`` for training, and DDIM with trailing timestep spacing for
  few-step sampling. The default is 1 step: the model's clean estimate from pure noise, i.e.
  its estimate of the conditional mean, which scored best on held-out FlyEM (PSNR rewards the
  mean; 10-step samples scored 1.4-1.8 dB lower, as posterior samples do).
- **pipeline** (`sample`): DDIM from pure noise; after every step the known pixels are replaced
  by the known slice noised to the next timestep (RePaint), so the damaged pixels are generated
  consistently with the undamaged rest of the slice; the returned image is the model's clean
  prediction at the last step with the known pixels pasted back exactly, averaged over
  ``samples`` independent samples (their mean approaches the conditional mean, which is what
  PSNR rewards). Sampling is deterministic for a given ``seed``.

Training (`training_batch`, `training_loss`, `train_steps`) draws random patches from
slice triplets (`make_triplets`: a target slice and its two flow-warped neighbours one or more
slices away), covers them with random damage from `vemviz.damage` (whole patch, bands, cracks,
blotches, folds) and minimises the squared error of the clean prediction on the damaged pixels
at a random noise level (`noise_levels`: uniform, or with a share drawn from the top of the
schedule, where the 1-step sampler works). ``scripts/train_inpaint.py`` trains the shipped weights;
`fine_tune` runs the same loop on a user's own volume, starting from them.

torch and diffusers are optional dependencies (``pip install vemviz[learn]``); a missing one is
reported as a `VemvizError`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vemviz import damage
from vemviz.errors import VemvizError
from vemviz.flow import cached_pair_flows, curved_pair_flows, warp_pair
from vemviz.intensity import count_values, range_from_counts
from vemviz.progress import track

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DModel

WEIGHTS = Path(__file__).parent / "weights" / "inpaint_diffusion"
CONDITION_CHANNELS = 5
INTENSITY_PERCENTILES = (0.5, 99.5)  # the range mapped to -1..1
MODEL_CONFIG: dict[str, Any] = {
    "in_channels": 1 + CONDITION_CHANNELS,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}
SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "sample",
    "clip_sample": False,
}
# Inputs are padded to a multiple of this (the UNet halves the size twice).
_MULTIPLE = 8
# px: sampling predicts larger images in tiles of this side with this much context around
TILE, TILE_CONTEXT = 256, 32
# Damage kinds drawn for training patches and how often.
TRAINING_DAMAGE = {"missing": 0.35, "band": 0.2, "blotch": 0.2, "crack": 0.1, "fold": 0.15}
# The top of the noise schedule that `training_loss` can over-sample (the 1-step sampler's).
HIGH_NOISE_BAND = 0.05


def _torch():
    try:
        import diffusers  # noqa: F401
        import torch
    except ImportError as exc:
        raise VemvizError(
            "diffusion inpainting needs torch and diffusers: pip install 'vemviz[learn]'"
        ) from exc
    return torch


# --- intensities ---------------------------------------------------------------------------


def intensity_range(stack: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """The 0.5-99.5 percentile range of the undamaged voxels (mapped to -1..1), from their
    histogram (`vemviz.intensity`), so a volume streamed in slabs gets the same range."""
    values = stack[~mask] if mask is not None and mask.any() else stack.ravel()
    if values.size == 0:
        values = stack.ravel()
    counts, value_range = count_values(values)
    return range_of_counts(counts, values.dtype, value_range)


def range_of_counts(
    counts: np.ndarray, dtype: np.dtype, value_range: tuple[float, float] | None = None
) -> tuple[float, float]:
    """`intensity_range` from the histogram of the undamaged voxels (`vemviz.intensity`)."""
    low, high = range_from_counts(counts, dtype, value_range, INTENSITY_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def normalise(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    return ((image.astype(np.float32) - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def denormalise(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    return (image.astype(np.float32) + 1.0) / 2.0 * (high - low) + low


def condition(
    known: np.ndarray, mask: np.ndarray, below: np.ndarray, above: np.ndarray, t: float
) -> np.ndarray:
    """The (5, H, W) float32 conditioning of one damaged slice (normalised intensities)."""
    if not known.shape == mask.shape == below.shape == above.shape:
        raise VemvizError(
            f"slice, mask and neighbours differ in shape: {known.shape}, {mask.shape}, "
            f"{below.shape}, {above.shape}"
        )
    weight = mask.astype(np.float32)
    return np.stack(
        [known * (1.0 - weight), weight, below, above, np.full(known.shape, t, np.float32)]
    ).astype(np.float32)


# --- model ---------------------------------------------------------------------------------


def build_model(**overrides: Any) -> UNet2DModel:
    """A freshly initialised UNet (``MODEL_CONFIG`` with ``overrides``), output layer at zero."""
    _torch()
    from diffusers import UNet2DModel

    model = UNet2DModel(**{**MODEL_CONFIG, **overrides})
    model.conv_out.weight.data.zero_()
    model.conv_out.bias.data.zero_()
    return model


def load_model(path: Path | None = None, device: str = "cpu") -> UNet2DModel:
    """Load a model saved by `save_model` (default: the weights shipped with vemviz)."""
    torch = _torch()
    from diffusers import UNet2DModel

    folder = Path(path) if path is not None else WEIGHTS
    if not (folder / "config.json").is_file():
        raise VemvizError(f"no diffusion model at {folder} (expected config.json and weights)")
    model = UNet2DModel.from_pretrained(
        str(folder), torch_dtype=torch.float32, low_cpu_mem_usage=False
    )
    return model.to(device).eval()


def save_model(model: UNet2DModel, path: Path, info: dict[str, Any] | None = None) -> None:
    """Save the model (float16 safetensors + config.json) to ``path``, replacing it atomically."""
    import copy

    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        half = copy.deepcopy(model).to("cpu")
        for parameter in half.parameters():
            parameter.data = parameter.data.to(torch.float16)
        half.save_pretrained(str(tmp))
        config = tmp / "config.json"
        settings = json.loads(config.read_text())
        settings.pop("_name_or_path", None)  # the folder it was loaded from, on this machine
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        if info is not None:
            (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def predict_clean(
    model: UNet2DModel, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """The model's estimate of the clean slice: base (known pixels, flow blend) + residual."""
    torch = _torch()
    known, mask, below, above, t = (cond[:, i : i + 1] for i in range(CONDITION_CHANNELS))
    base = known + mask * ((1.0 - t) * below + t * above)
    residual = model(torch.cat([noisy, cond], dim=1), timesteps).sample
    return base + residual


def predict_clean_tiled(
    model: UNet2DModel, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """`predict_clean` of an image of any size in bounded memory: images larger than
    `TILE` + 2 `TILE_CONTEXT` px along an axis are predicted in `TILE` px tiles, each with
    `TILE_CONTEXT` px of context on every side that is cropped away (the network works at
    about 1.5 kB per pixel; a full-width band on a 2048 px slice took 1.4 GB untiled)."""
    height, width = noisy.shape[-2:]
    if max(height, width) <= TILE + 2 * TILE_CONTEXT:
        return predict_clean(model, noisy, timesteps, cond)
    out = noisy.new_empty(noisy.shape)
    for y0 in range(0, height, TILE):
        for x0 in range(0, width, TILE):
            y1, x1 = min(y0 + TILE, height), min(x0 + TILE, width)
            ya, xa = max(y0 - TILE_CONTEXT, 0), max(x0 - TILE_CONTEXT, 0)
            yb, xb = min(y1 + TILE_CONTEXT, height), min(x1 + TILE_CONTEXT, width)
            window = np.s_[..., ya:yb, xa:xb]
            tile = predict_clean(model, noisy[window], timesteps, cond[window])
            out[..., y0:y1, x0:x1] = tile[..., y0 - ya : y1 - ya, x0 - xa : x1 - xa]
    return out


# --- schedulers ----------------------------------------------------------------------------


def training_scheduler():
    _torch()
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def sampling_scheduler(steps: int):
    _torch()
    from diffusers import DDIMScheduler

    if steps < 1:
        raise VemvizError(f"the sampler needs at least 1 step, not {steps}")
    scheduler = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    return scheduler


# --- pipeline ------------------------------------------------------------------------------


def _pad(array: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    height, width = array.shape[-2:]
    pad_y, pad_x = -height % _MULTIPLE, -width % _MULTIPLE
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_y), (0, pad_x)]
    return np.pad(array, widths, mode="reflect" if min(height, width) > 8 else "edge"), (
        height,
        width,
    )


def sample(
    model: UNet2DModel,
    cond: np.ndarray,
    *,
    steps: int = 1,
    samples: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Inpaint one slice from its (5, H, W) conditioning; returns the (H, W) normalised slice.

    Known pixels are returned unchanged; damaged pixels are the mean of ``samples`` DDIM
    samples (``steps`` steps each). The same ``seed`` gives the same result.
    """
    torch = _torch()
    if cond.ndim != 3 or cond.shape[0] != CONDITION_CHANNELS:
        raise VemvizError(f"conditioning must be ({CONDITION_CHANNELS}, H, W), not {cond.shape}")
    if samples < 1:
        raise VemvizError(f"need at least one sample, not {samples}")
    device = next(model.parameters()).device
    padded, (height, width) = _pad(cond)
    generator = torch.Generator().manual_seed(seed)
    c = torch.from_numpy(padded).unsqueeze(0).repeat(samples, 1, 1, 1).to(device)
    known, mask = c[:, 0:1], c[:, 1:2]
    keep = 1.0 - mask
    scheduler = sampling_scheduler(steps)
    timesteps = scheduler.timesteps
    x = torch.randn(known.shape, generator=generator).to(device)
    clean = known
    with torch.no_grad():
        for i, step in enumerate(timesteps):
            batch_t = torch.full((samples,), int(step), device=device, dtype=torch.long)
            clean = keep * known + mask * predict_clean_tiled(model, x, batch_t, c)
            if i == len(timesteps) - 1:
                break
            x = scheduler.step(clean, step, x, eta=0.0).prev_sample
            noise = torch.randn(known.shape, generator=generator).to(device)
            renoised = scheduler.add_noise(known, noise, timesteps[i + 1 : i + 2])
            x = keep * renoised + mask * x
    result = clean.mean(dim=0)[0].cpu().numpy()
    return result[:height, :width].astype(np.float32)


# --- training ------------------------------------------------------------------------------


@dataclass
class Triplets:
    """Target slices with their two neighbours warped to them (normalised, (N, H, W) each)."""

    target: np.ndarray
    below: np.ndarray
    above: np.ndarray
    t: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


def make_triplets(
    stack: np.ndarray, gaps: Sequence[int] = (2,), good: Sequence[int] | None = None
) -> Triplets:
    """Triplets from a normalised stack: for every pair of good slices ``gap`` apart whose
    in-between slices are good too, each in-between slice with both ends warped to it."""
    usable = set(range(stack.shape[0]) if good is None else good)
    usable_sorted = np.array(sorted(usable))
    # the flows of slices (z-1, z) bend both the pair that ends at z-1 and the pair that starts
    # at z, up to 4 pairs (at most 8 new flows) apart: the 16 most recent cover that
    pair = cached_pair_flows(stack, 16)
    targets, belows, aboves, ts = [], [], [], []
    pairs = [
        (z, z + gap)
        for gap in gaps
        for z in range(stack.shape[0] - gap)
        if all(k in usable for k in range(z, z + gap + 1))
    ]
    for a, b in track(pairs, "diffusion: warping neighbours"):
        flows = curved_pair_flows(stack, a, b, usable_sorted, pair)
        for z in range(a + 1, b):
            t = (z - a) / (b - a)
            below, above = warp_pair(stack[a], stack[b], t, flows)
            targets.append(stack[z])
            belows.append(below)
            aboves.append(above)
            ts.append(t)
    if not targets:
        raise VemvizError("no run of good slices long enough to learn from (need 3 in a row)")
    return Triplets(
        np.stack(targets).astype(np.float32),
        np.stack(belows).astype(np.float32),
        np.stack(aboves).astype(np.float32),
        np.array(ts, dtype=np.float32),
    )


def random_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A training damage mask (kinds drawn with the `TRAINING_DAMAGE` frequencies)."""
    kinds = list(TRAINING_DAMAGE)
    kind = kinds[rng.choice(len(kinds), p=list(TRAINING_DAMAGE.values()))]
    if kind == "band":
        return damage.band_mask(shape, rng, float(rng.uniform(0.05, 0.5)))
    mask = damage.make_mask(kind, shape, rng)
    return mask if mask.any() else damage.make_mask("missing", shape, rng)


def training_batch(
    sources: Sequence[Triplets],
    weights: Sequence[float],
    rng: np.random.Generator,
    batch: int,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` random (size x size) patches: clean (B, 1, s, s) and conditioning (B, 5, s, s),
    randomly flipped and rotated, each covered with random damage."""
    probabilities = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    clean = np.empty((batch, 1, size, size), np.float32)
    cond = np.empty((batch, CONDITION_CHANNELS, size, size), np.float32)
    for i in range(batch):
        source = sources[rng.choice(len(sources), p=probabilities)]
        n = int(rng.integers(len(source)))
        height, width = source.target.shape[1:]
        y, x = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        window = np.s_[y : y + size, x : x + size]
        layers = [source.target[n][window], source.below[n][window], source.above[n][window]]
        t = float(source.t[n])
        if rng.integers(2):  # swap the two sides: the slice seen from the other direction
            layers = [layers[0], layers[2], layers[1]]
            t = 1.0 - t
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        layers = [np.rot90(a[:, ::-1] if flip else a, k) for a in layers]
        mask = random_mask((size, size), rng)
        clean[i, 0] = layers[0]
        cond[i] = condition(layers[0], mask, layers[1], layers[2], t)
    return clean, cond


def noise_levels(
    count: int, steps: int, generator: torch.Generator, high_noise: float = 0.0
) -> torch.Tensor:
    """``count`` random timesteps of a ``steps``-step schedule: uniform, except that a
    ``high_noise`` fraction (on average) is drawn from its top `HIGH_NOISE_BAND`."""
    torch = _torch()
    timesteps = torch.randint(0, steps, (count,), generator=generator)
    if high_noise > 0:
        top = torch.randint(
            round(steps * (1 - HIGH_NOISE_BAND)), steps, (count,), generator=generator
        )
        timesteps = torch.where(torch.rand(count, generator=generator) < high_noise, top, timesteps)
    return timesteps


def training_loss(
    model: UNet2DModel,
    scheduler: Any,
    clean: torch.Tensor,
    cond: torch.Tensor,
    generator: torch.Generator,
    high_noise: float = 0.0,
) -> torch.Tensor:
    """Mean squared error of the clean prediction on the damaged pixels at random noise levels
    (`noise_levels`; ``high_noise`` favours the 1-step sampler's)."""
    torch = _torch()
    device = clean.device
    steps = scheduler.config.num_train_timesteps
    timesteps = noise_levels(clean.shape[0], steps, generator, high_noise).to(device)
    noise = torch.randn(clean.shape, generator=generator).to(device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction = predict_clean(model, noisy, timesteps, cond)
    mask = cond[:, 1:2]
    return ((prediction - clean) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)


def train_steps(
    model: UNet2DModel,
    optimizer: Any,
    sources: Sequence[Triplets],
    weights: Sequence[float],
    steps: int,
    *,
    batch: int = 16,
    size: int = 64,
    seed: int = 0,
    high_noise: float = 0.0,
    description: str = "diffusion: training",
) -> list[float]:
    """Run ``steps`` optimisation steps on random damaged patches (noise levels as in
    `training_loss`); returns the losses."""
    torch = _torch()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    scheduler = training_scheduler()
    model.train()
    losses = []
    for _ in track(range(steps), description):
        clean, cond = training_batch(sources, weights, rng, batch, size)
        loss = training_loss(
            model,
            scheduler,
            torch.from_numpy(clean).to(device),
            torch.from_numpy(cond).to(device),
            generator,
            high_noise,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def patch_size_for(shape: tuple[int, int], largest: int = 64) -> int:
    """The largest patch side (a multiple of 8, at most ``largest``) that fits the slices."""
    size = min(largest, *shape) // _MULTIPLE * _MULTIPLE
    if size < _MULTIPLE:
        raise VemvizError(f"slices of {shape[0]}x{shape[1]} px are too small to fine-tune on")
    return size


def fine_tune(
    model: UNet2DModel,
    stack: np.ndarray,
    good: Sequence[int],
    steps: int,
    *,
    learning_rate: float = 2e-4,
    batch: int = 8,
    seed: int = 0,
) -> list[float]:
    """Adapt ``model`` to a user's normalised stack for ``steps`` steps; returns the losses.

    Trains on triplets of consecutive good slices (gaps of 2 and 3) with simulated damage.
    """
    torch = _torch()
    if steps < 1:
        raise VemvizError(f"fine-tuning needs at least 1 step, not {steps}")
    triplets = make_triplets(stack, gaps=(2, 3), good=good)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    size = patch_size_for(stack.shape[1:])
    return train_steps(
        model,
        optimizer,
        [triplets],
        [1.0],
        steps,
        batch=batch,
        size=size,
        seed=seed,
        description="diffusion: fine-tuning",
    )
