"""Targeted re-imaging: scan fast at low resolution, super-resolve, re-image only where it fails.

Imaging time on an SEM grows with the number of pixels, so a scan at 1/S of the lateral
resolution takes about 1/S^2 of the time. Super-resolution recovers much of the detail, but not
everywhere; this module finds the tiles where the super-resolved image is least reliable, plans
their re-imaging at full resolution within a budget, and merges the re-imaged tiles back in.

Method
------
1. **Super-resolve** the low-resolution scan laterally by ``S`` (`vemviz.sr`).
2. **Describe each tile** (a square of ``tile`` full-resolution pixels on one slice) by how much
   the result can be trusted (`tile_features`):

   - ``consistency``: RMS difference between the low-resolution tile and the super-resolved tile
     area-downsampled back by ``S``; a result that does not explain the measurement is wrong;
   - ``detail``: mean gradient magnitude of the low-resolution tile; fine texture is what low
     resolution loses;
   - ``contrast``: standard deviation of the low-resolution tile;
   - ``disagreement``: RMS difference between the super-resolved and bicubic tiles (two passes
     that disagree mark invented or uncertain detail; zero when the SR method is bicubic).

3. **Predict the error** of each tile with `ErrorModel`: a ridge regression from the log features
   to the log RMS error against the truth, fitted on real low/high-resolution pairs made from
   ``../shared/data`` by ``scripts/train_reimage.py`` and shipped as
   ``vemviz/weights/reimage_error.json`` (per SR method; an SR method without a model of its own
   is ranked by the bicubic model on the bicubic pass, i.e. by how hard each tile is to upscale).
4. **Segmentation** (optional ``target``): the segmentation model's probability on the
   super-resolved volume says where its decisions are uncertain; a tile's uncertainty is the
   mean of ``4 p (1 - p)`` over its pixels (1 where p = 0.5, 0 where the model is sure), and
   ``priority = mse * (uncertainty + UNCERTAINTY_FLOOR)``: a large intensity error matters where
   it can move a boundary or an object, not in a tile the model segments with confidence.
   (``scripts/benchmark.py reimage``, 10 % budget, held-out slices: mitochondria IoU 0.810
   against 0.799-0.805 for three random choices and 0.806 for the intensity error alone;
   neuron VI 1.205 against 1.235-1.287 and 1.280.)
5. **Plan**: tiles ranked by priority, taken until ``budget`` (a fraction of all tiles) is used.
   Each planned tile is re-imaged with a ``margin`` on every side, for registration and blending.
   Time: pixel-count model (time proportional to pixels imaged), optionally a dwell time per
   pixel and an overhead per tile (stage move, focus).
6. **Merge** (`merge_tiles`): each re-imaged tile is registered onto the super-resolved slice by
   normalised cross-correlation with a sub-pixel peak (the stage is not exact; phase correlation
   was tried and is several times less precise on small, differently blurred tiles). That
   match is then refined on the low-resolution scan itself (`refine_on_scan`): shifted by the
   right amount and area-downsampled, the tile reproduces the scan pixels it covers, and the
   scan, unlike the super-resolved slice, holds no invented detail to bias the match (2 px
   stage errors on VNC: 0.11 / 0.18 px RMS in y / x on the SR, 0.007 px after refinement).
   The tile is resampled there and blended with a weight that ramps from 0 at the tile's edge
   to 1 at half the margin: enough to hide the seam, while the inner half of the margin adds
   real pixels (a ramp over the whole margin measured 0.05 dB lower on VNC).

7. **Refit** (`refit_sr`, on by default): the re-imaged tiles are real full-resolution images
   of this very sample, and area-downsampled by ``S`` they are exact examples of the
   low-resolution scan. The learned SR network (`vemviz.inr`) is trained on them and the whole
   scan is super-resolved again before the tiles are merged, so re-imaging improves every tile,
   not only the re-imaged ones. (The self-supervised SR of `vemviz sr` has to guess the
   degradation one octave down; these pairs show it.) The tiles are normalised with the scan's
   intensity mean and standard deviation, as the scan is when the network is applied to it
   (their own statistics differ: the scan is smoother, and the planned tiles are not a random
   sample), and the training patches span the whole tile (wider patches have less of their
   area at the network's zero-padded border, which the scan's large slices hardly have). With
   fewer than `MIN_REFIT_TILES` tiles the plan's SR is kept, and the report says so.

The simulation (`vemviz.stages.simulate_reimage`) runs the loop on a high-resolution volume: it
makes the low-resolution scan by area downsampling, takes the "re-imaged" tiles from the truth
with a random stage error (`truth_tiles`), and scores the merged volume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vemviz import sr as sr_mod
from vemviz.errors import VemvizError
from vemviz.flow import to_dtype
from vemviz.progress import track

FEATURES = ("consistency", "detail", "contrast", "disagreement")
UNCERTAINTY_FLOOR = 1e-3  # keeps tiles the segmentation is sure of ranked by their error
DEFAULT_MODEL = Path(__file__).parent / "weights" / "reimage_error.json"
PLAN_VERSION = 1
MIN_REFIT_TILES = 8
# Refit training steps: on the held-out benchmark volumes 600 steps (tile-sized patches: 1200)
# gave +0.4-0.6 dB more than 3000 (scripts/benchmark.py reimage --train-steps 600 vs 3000):
# longer training on a few hundred small tiles fits them too closely.
REFIT_STEPS = 1200

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in full-resolution pixels
# How far (px) `refine_on_scan` may move a tile from its match on the super-resolved slice: that
# match was 1.4 px off at worst on the phantom's bicubic SR, 0.8 px on VNC's learned SR.
REFINE_PX = 2


def area_downsample(stack: np.ndarray, scale: int) -> np.ndarray:
    """Mean over ``scale x scale`` pixel blocks of each slice (the low-resolution scan).

    The slices are cropped to a multiple of ``scale``; the dtype is kept (rounded for integers).
    """
    if stack.ndim != 3:
        raise VemvizError(f"re-imaging needs a 3D (z, y, x) volume, not {stack.ndim}-D")
    if int(scale) != scale or scale < 2:
        raise VemvizError(f"--scale must be an integer >= 2, got {scale}")
    s = int(scale)
    z, h, w = stack.shape
    if h < s or w < s:
        raise VemvizError(f"slices of {h}x{w} pixels are too small for scale {s}")
    crop = stack[:, : h - h % s, : w - w % s].astype(np.float64)
    blocks = crop.reshape(z, h // s, s, w // s, s).mean(axis=(2, 4))
    return to_dtype(blocks, stack.dtype)


def tile_boxes(height: int, width: int, tile: int) -> list[Box]:
    """Non-overlapping ``tile``-pixel squares covering a slice (the last row/column shorter)."""
    if tile < 8:
        raise VemvizError(f"--tile must be at least 8 pixels, got {tile}")
    return [
        (y, min(y + tile, height), x, min(x + tile, width))
        for y in range(0, height, tile)
        for x in range(0, width, tile)
    ]


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def _low_box(box: Box, scale: int) -> Box:
    y0, y1, x0, x1 = box
    return (
        y0 // scale,
        max(y1 // scale, y0 // scale + 1),
        x0 // scale,
        max(x1 // scale, x0 // scale + 1),
    )


def tile_features(
    low: np.ndarray, sr: np.ndarray, bicubic: np.ndarray, scale: int, boxes: list[Box]
) -> np.ndarray:
    """The `FEATURES` of every box of one slice: (n_boxes, 4), intensities in 0..255 units."""
    low_f = low.astype(np.float32)
    gradient = np.hypot(cv2.Sobel(low_f, cv2.CV_32F, 1, 0), cv2.Sobel(low_f, cv2.CV_32F, 0, 1))
    back = area_downsample(sr[np.newaxis].astype(np.float32), scale)[0]
    rows = []
    for box in boxes:
        y0, y1, x0, x1 = box
        ly0, ly1, lx0, lx1 = _low_box(box, scale)
        low_tile = low_f[ly0:ly1, lx0:lx1]
        rows.append((
            _rms(low_tile, back[ly0:ly1, lx0:lx1]),
            float(gradient[ly0:ly1, lx0:lx1].mean()),
            float(low_tile.std()),
            _rms(sr[y0:y1, x0:x1], bicubic[y0:y1, x0:x1]),
        ))  # fmt: skip
    return np.asarray(rows, dtype=np.float64)


def segmentation_uncertainty(probability: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """Per box, the mean of ``4 p (1 - p)`` over a slice's segmentation probabilities ``p``."""
    p = np.clip(probability.astype(np.float64), 0.0, 1.0)
    undecided = 4.0 * p * (1.0 - p)
    return np.array([undecided[y0:y1, x0:x1].mean() for y0, y1, x0, x1 in boxes])


@dataclass(frozen=True)
class ErrorModel:
    """Ridge regression from log features to the log RMS error of a super-resolved tile."""

    sr_method: str
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict_rms(self, features: np.ndarray) -> np.ndarray:
        x = (np.log1p(features) - self.mean) / self.std
        return np.exp(x @ self.coef + self.intercept)

    def to_json(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}  # fmt: skip


def fit_error_model(
    features: np.ndarray, rms_error: np.ndarray, sr_method: str, ridge: float = 1.0
) -> ErrorModel:
    """Fit `ErrorModel` on (n, 4) features and the measured per-tile RMS errors."""
    if len(features) < 10:
        raise VemvizError(f"need at least 10 tiles to fit an error model, got {len(features)}")
    logs = np.log1p(features)
    mean, std = logs.mean(axis=0), logs.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    x = (logs - mean) / std
    y = np.log(np.maximum(rms_error, 1e-3))
    intercept = float(y.mean())
    coef = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ (y - intercept))
    return ErrorModel(sr_method, mean, std, coef, intercept)


def save_error_models(models: list[ErrorModel], path: Path, provenance: dict[str, Any]) -> None:
    from vemviz.io.atomic import write_json

    write_json(path, {"version": 1, "provenance": provenance,
                      "models": {m.sr_method: m.to_json() for m in models}})  # fmt: skip


def load_error_model(sr_method: str, path: Path = DEFAULT_MODEL) -> ErrorModel:
    """The error model fitted for ``sr_method``, or the bicubic one where there is none (its
    ``sr_method`` then says so: it ranks the tiles of the bicubic pass)."""
    try:
        models = json.loads(Path(path).read_text())["models"]
        method = sr_method if sr_method in models else "bicubic"
        entry = models[method]
        if entry["features"] != list(FEATURES):
            raise VemvizError(f"{path} was trained on other features: {entry['features']}")
        return ErrorModel(method, np.array(entry["mean"]), np.array(entry["std"]),
                          np.array(entry["coef"]), float(entry["intercept"]))  # fmt: skip
    except FileNotFoundError as exc:
        raise VemvizError(f"no re-imaging error model at {path}") from exc
    except (KeyError, ValueError) as exc:
        raise VemvizError(f"{path} is not a re-imaging error model file ({exc})") from exc


def super_resolve(
    low: np.ndarray, scale: int, method: str, training: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(super-resolved, bicubic) volumes of ``low`` upscaled by ``scale``; ``training`` is the
    `vemviz.inr.Training` of a learned method (its defaults when None)."""
    bicubic = sr_mod.upscale_xy(low, scale, method="bicubic")
    if method == "bicubic":
        return bicubic, bicubic
    return sr_mod.super_resolve(low, scale, method, training=training)[0], bicubic


def predict_tile_errors(
    low: np.ndarray,
    sr: np.ndarray,
    bicubic: np.ndarray,
    scale: int,
    boxes: list[Box],
    model: ErrorModel,
) -> np.ndarray:
    """Predicted RMS error of every (slice, box): shape (z, n_boxes)."""
    return np.stack([
        model.predict_rms(tile_features(low[z], sr[z], bicubic[z], scale, boxes))
        for z in track(range(low.shape[0]), "re-imaging: predicting tile errors")
    ])  # fmt: skip


def select_tiles(priority: np.ndarray, budget: float) -> list[tuple[int, int]]:
    """The (slice, box index) pairs with the highest priority, ``budget`` of all tiles at most."""
    if not 0 <= budget <= 1:
        raise VemvizError(f"--budget must be a fraction between 0 and 1, got {budget}")
    count = int(np.floor(budget * priority.size + 1e-9))
    order = np.argsort(-priority, axis=None, kind="stable")[:count]
    return [tuple(int(v) for v in np.unravel_index(i, priority.shape)) for i in order]  # type: ignore[misc]


def random_tiles(shape: tuple[int, int], budget: float, seed: int = 0) -> list[tuple[int, int]]:
    """A random choice of the same number of tiles as `select_tiles` (the baseline)."""
    return select_tiles(np.random.default_rng(seed).random(shape), budget)


def acquisition_box(box: Box, margin: int, height: int, width: int) -> Box:
    y0, y1, x0, x1 = box
    return (
        max(y0 - margin, 0),
        min(y1 + margin, height),
        max(x0 - margin, 0),
        min(x1 + margin, width),
    )


def time_estimate(
    shape_hr: tuple[int, int, int],
    scale: int,
    acquired_pixels: int,
    tiles: int,
    dwell_ns: float | None = None,
    tile_overhead_s: float = 0.0,
) -> dict[str, float]:
    """Imaging time of low-resolution scan + re-imaged tiles against a full high-resolution scan.

    Time is proportional to pixels imaged; with ``dwell_ns`` it is also given in seconds,
    adding ``tile_overhead_s`` per re-imaged tile (stage move, focus).
    """
    full = float(np.prod(shape_hr))
    low = full / scale**2
    fraction = (low + acquired_pixels) / full
    result = {"fraction_of_full_time": fraction, "time_saved": 1.0 - fraction}
    if dwell_ns is not None:
        full_s = full * dwell_ns * 1e-9
        used_s = (low + acquired_pixels) * dwell_ns * 1e-9 + tiles * tile_overhead_s
        result.update(full_scan_s=full_s, plan_s=used_s, time_saved=1.0 - used_s / full_s)
    return result


@dataclass
class Assessment:
    """Everything a plan is chosen from: the SR and bicubic volumes, the tiles, their priority."""

    sr: np.ndarray
    bicubic: np.ndarray
    boxes: list[Box]
    mse: np.ndarray  # predicted squared error per (slice, box)
    priority: np.ndarray
    scale: int
    sr_method: str
    voxel_size_nm: tuple[float, float, float]
    lowres_shape: tuple[int, int, int]
    error_model: str  # the SR method the error model was fitted for
    lowres_sha256: str  # `fingerprint` of the scan: ties the plan to it


def fingerprint(volume: np.ndarray) -> str:
    """SHA-256 of a volume's shape, dtype and values: a plan names the scan it was made for
    (and the SR volume it wrote), so that merging into another one of the same shape fails."""
    digest = hashlib.sha256(f"{volume.shape} {volume.dtype.str}".encode())
    digest.update(np.ascontiguousarray(volume).data)
    return digest.hexdigest()


def assess(
    low: np.ndarray,
    voxel_size_nm: tuple[float, float, float],
    *,
    scale: int = 4,
    tile: int = 128,
    sr_method: str = "bicubic",
    segmenter: Any = None,
    model: ErrorModel | None = None,
    training: Any = None,
) -> Assessment:
    """Super-resolve ``low`` and predict how wrong each tile of the result is.

    ``segmenter`` (optional) maps a (z, y, x) volume at the full-resolution voxel size to the
    segmentation model's per-voxel probability; with it, the priority of a tile is its
    predicted squared error weighted by the segmentation's uncertainty there. ``training``
    goes to a learned SR method.
    """
    if low.ndim != 3:
        raise VemvizError(f"re-imaging needs a 3D (z, y, x) volume, not {low.ndim}-D")
    if int(scale) != scale or scale < 2:
        raise VemvizError(f"--scale must be an integer >= 2, got {scale}")
    model = model or load_error_model(sr_method)
    sr, bicubic = super_resolve(low, int(scale), sr_method, training)
    boxes = tile_boxes(sr.shape[1], sr.shape[2], tile)
    ranked = sr if model.sr_method == sr_method else bicubic
    mse = predict_tile_errors(low, ranked, bicubic, int(scale), boxes, model) ** 2
    priority = mse
    if segmenter is not None:
        probability = segmenter(sr)
        uncertainty = np.stack([segmentation_uncertainty(p, boxes) for p in probability])
        priority = mse * (uncertainty + UNCERTAINTY_FLOOR)
    return Assessment(sr, bicubic, boxes, mse, priority, int(scale), sr_method,
                      tuple(voxel_size_nm), tuple(low.shape), model.sr_method,  # type: ignore[arg-type]
                      fingerprint(low))  # fmt: skip


def make_plan(
    assessment: Assessment,
    *,
    budget: float = 0.1,
    margin: int = 8,
    chosen: list[tuple[int, int]] | None = None,
    dwell_ns: float | None = None,
    tile_overhead_s: float = 0.0,
) -> dict[str, Any]:
    """The JSON-ready plan: the highest-priority tiles within ``budget`` (or ``chosen`` ones)."""
    a = assessment
    chosen = select_tiles(a.priority, budget) if chosen is None else chosen
    _, height, width = a.sr.shape
    hr_voxel = sr_mod.sr_voxel_size(a.voxel_size_nm, a.scale)
    tiles, acquired = [], 0
    for rank, (z, b) in enumerate(chosen):
        y0, y1, x0, x1 = acquisition_box(a.boxes[b], margin, height, width)
        acquired += (y1 - y0) * (x1 - x0)
        tiles.append({
            "rank": rank, "file": f"tile_{rank:05d}.tif", "slice": z, "box_px": list(a.boxes[b]),
            "acquire_px": [y0, y1, x0, x1],
            "acquire_nm": [y0 * hr_voxel[1], y1 * hr_voxel[1], x0 * hr_voxel[2], x1 * hr_voxel[2]],
            "predicted_rms_error": float(np.sqrt(a.mse[z, b])), "priority": float(a.priority[z, b]),
        })  # fmt: skip
    return {
        "version": PLAN_VERSION,
        "scale": a.scale,
        "budget": budget,
        "tile_px": int(a.boxes[0][1] - a.boxes[0][0]),
        "margin_px": margin,
        "sr_method": a.sr_method,
        "error_model": a.error_model,
        "lowres_shape_zyx": list(a.lowres_shape),
        "lowres_sha256": a.lowres_sha256,
        "highres_shape_zyx": list(a.sr.shape),
        "voxel_size_nm_lowres": list(a.voxel_size_nm),
        "voxel_size_nm_highres": list(hr_voxel),
        "tiles_total": int(a.priority.size),
        "tiles": tiles,
        "time": time_estimate(a.sr.shape, a.scale, acquired, len(tiles), dwell_ns, tile_overhead_s),
    }


def refit_sr(
    low: np.ndarray, tiles: list[np.ndarray], scale: int, training: Any = None
) -> np.ndarray:
    """Super-resolve ``low`` with the learned SR network trained on the re-imaged ``tiles``.

    Tiles are cropped to a common square (a multiple of ``scale``) so they stack, normalised
    with ``low``'s statistics and trained on patches as large as they allow; ``training`` is a
    `vemviz.inr.Training` (default settings when None), whose steps are capped at `REFIT_STEPS`.
    """
    from vemviz import inr

    if len(tiles) < MIN_REFIT_TILES:
        raise VemvizError(f"refitting SR needs at least {MIN_REFIT_TILES} re-imaged tiles, "
                          f"got {len(tiles)}")  # fmt: skip
    size = min(min(t.shape) for t in tiles)
    size -= size % scale
    stack = np.stack([t[:size, :size] for t in tiles])
    training = training or inr.Training()
    steps = min(training.steps or REFIT_STEPS, REFIT_STEPS)
    model = inr.train_sr(stack, scale, replace(training, steps=steps, patch=size),
                         norm=(float(low.mean()), float(low.std())))  # fmt: skip
    return sr_mod.super_resolve(low, scale, "learned", model=model)[0]


def truth_tiles(
    truth: np.ndarray, plan: dict[str, Any], stage_error_px: float = 0.0, seed: int = 0
) -> list[np.ndarray]:
    """Simulated re-imaging: the plan's tiles cut from the high-resolution ``truth``.

    Each tile is taken ``stage_error_px`` (at most, random direction) away from where it was
    planned, as a real stage would place it; `merge_tiles` must register it back.
    """
    rng = np.random.default_rng(seed)
    padded = np.pad(truth, ((0, 0), (int(np.ceil(stage_error_px)) + 1,) * 2,
                            (int(np.ceil(stage_error_px)) + 1,) * 2), mode="reflect")  # fmt: skip
    pad = int(np.ceil(stage_error_px)) + 1
    tiles = []
    for entry in plan["tiles"]:
        y0, y1, x0, x1 = entry["acquire_px"]
        dy, dx = rng.uniform(-stage_error_px, stage_error_px, size=2)
        matrix = np.float32([[1, 0, -(x0 + pad + dx)], [0, 1, -(y0 + pad + dy)]])
        image = cv2.warpAffine(padded[entry["slice"]].astype(np.float32), matrix,
                               (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC)  # fmt: skip
        tiles.append(to_dtype(image, truth.dtype))
    return tiles


def _parabola_peak(values: np.ndarray, i: int) -> float:
    """Sub-pixel position of the maximum at ``i`` from a parabola through its neighbours."""
    if 0 < i < len(values) - 1:
        curvature = values[i - 1] - 2 * values[i] + values[i + 1]
        if curvature < 0:
            return i + 0.5 * (values[i - 1] - values[i + 1]) / curvature
    return float(i)


def register_tile(tile: np.ndarray, reference: np.ndarray, max_shift: int) -> tuple[float, float]:
    """Sub-pixel (dy, dx) by which ``tile`` lies displaced from ``reference`` (same shape).

    The tile's centre (``max_shift`` px in from each side) is matched by normalised cross
    correlation at every integer displacement up to ``max_shift``; the peak is refined with a
    parabola per axis. A peak on the search border means the tile does not match where it was
    planned (or moved further than ``max_shift``).
    """
    r = int(max_shift)
    if r < 1 or min(tile.shape) <= 2 * r + 4:
        raise VemvizError(f"a {tile.shape[0]}x{tile.shape[1]} tile is too small to register "
                          f"with a {r} px search radius")  # fmt: skip
    template = tile.astype(np.float32)[r:-r, r:-r]
    score = cv2.matchTemplate(reference.astype(np.float32), template, cv2.TM_CCOEFF_NORMED)
    py, px = np.unravel_index(int(np.argmax(score)), score.shape)
    if py in (0, 2 * r) or px in (0, 2 * r) or score[py, px] < 0.3:
        raise VemvizError(
            f"re-imaged tile does not match its planned place within {r} px (best correlation "
            f"{score[py, px]:.2f}); is it the right tile of the plan?"
        )
    return _parabola_peak(score[:, px], py) - r, _parabola_peak(score[py, :], px) - r


def refine_on_scan(
    tile: np.ndarray, scan: np.ndarray, box: Box, scale: int, start: tuple[float, float]
) -> tuple[float, float]:
    """Sub-pixel (dy, dx) of ``tile`` (acquired at ``box`` of a slice) refined on the
    low-resolution ``scan`` of that slice, starting from ``start`` (`register_tile`).

    The scan is a measurement of the same sample: shifted back by the right (dy, dx) and
    area-downsampled by ``scale`` (the degradation `area_downsample` models), the tile
    reproduces the scan pixels it covers. The shift that maximises their normalised
    correlation is searched within `REFINE_PX` of ``start`` (Powell). Unlike the super-resolved
    slice, whose invented detail biases the match, the scan holds no guess. The start is kept
    when the tile covers too few whole scan pixels (fewer than 4 x 4 inside the border its
    shift blurs) or they are flat.
    """
    from scipy import optimize

    y0, y1, x0, x1 = box
    border = int(np.ceil(np.abs(start).max())) + REFINE_PX + 2  # shift, search, cubic support
    ly0, ly1 = -(-(y0 + border) // scale), (y1 - border) // scale
    lx0, lx1 = -(-(x0 + border) // scale), (x1 - border) // scale
    if ly1 - ly0 < 4 or lx1 - lx0 < 4:
        return start
    measured = scan[ly0:ly1, lx0:lx1].astype(np.float64)
    if measured.std() == 0:
        return start
    measured = (measured - measured.mean()) / measured.std()
    image = tile.astype(np.float32)
    inner = np.s_[ly0 * scale - y0 : ly1 * scale - y0, lx0 * scale - x0 : lx1 * scale - x0]

    def mismatch(shift: np.ndarray) -> float:
        moved = _shifted(image, shift[0], shift[1])[inner]
        down = moved.reshape(ly1 - ly0, scale, lx1 - lx0, scale).mean((1, 3), dtype=np.float64)
        spread = down.std()
        if spread == 0:
            return 1.0
        return 1.0 - float(((down - down.mean()) * measured).mean() / spread)

    begin = np.asarray(start, dtype=np.float64)
    found = optimize.minimize(mismatch, begin, method="Powell",
                              bounds=[(v - REFINE_PX, v + REFINE_PX) for v in begin],
                              options={"xtol": 1e-3, "ftol": 1e-8})  # fmt: skip
    if found.fun >= mismatch(begin):
        return start
    return float(found.x[0]), float(found.x[1])


def _shifted(tile: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``tile`` moved by (dy, dx) px, float32 (cubic, its edge pixels repeated)."""
    height, width = tile.shape
    return cv2.warpAffine(tile.astype(np.float32, copy=False), np.float32([[1, 0, dx], [0, 1, dy]]),
                          (width, height), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)  # fmt: skip


def _ramp(n: int, width: int, start_open: bool, end_open: bool) -> np.ndarray:
    """1D weight: 0 at a closed end rising (cosine) to 1 at ``width`` pixels inside."""
    index = np.arange(n, dtype=np.float64)
    d = np.full(n, np.inf)
    if not start_open:
        d = np.minimum(d, index + 0.5)
    if not end_open:
        d = np.minimum(d, n - index - 0.5)
    t = np.clip(d / max(width, 1), 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _feather(box: Box, ramp: int, height: int, width: int) -> np.ndarray:
    """Blending weight of an acquired box; no ramp on sides that lie on the slice border."""
    y0, y1, x0, x1 = box
    return np.outer(_ramp(y1 - y0, ramp, y0 == 0, y1 == height),
                    _ramp(x1 - x0, ramp, x0 == 0, x1 == width))  # fmt: skip


def merge_tiles(
    sr: np.ndarray,
    scan: np.ndarray,
    plan: dict[str, Any],
    tiles: list[np.ndarray],
    max_shift: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Blend re-imaged ``tiles`` (in plan order) into the super-resolved volume ``sr`` of the
    low-resolution ``scan``; each tile is registered on ``sr`` (`register_tile`), then refined
    on ``scan`` (`refine_on_scan`)."""
    if list(sr.shape) != plan["highres_shape_zyx"]:
        raise VemvizError(f"volume shape {list(sr.shape)} is not the plan's "
                          f"{plan['highres_shape_zyx']}")  # fmt: skip
    if list(scan.shape) != plan["lowres_shape_zyx"]:
        raise VemvizError(f"scan shape {list(scan.shape)} is not the plan's "
                          f"{plan['lowres_shape_zyx']}")  # fmt: skip
    scale = int(plan["scale"])
    if len(tiles) != len(plan["tiles"]):
        raise VemvizError(f"the plan lists {len(plan['tiles'])} tiles, got {len(tiles)}")
    margin = int(plan["margin_px"])
    max_shift = int(margin if max_shift is None else max_shift)
    num = np.zeros(sr.shape, np.float64)
    den = np.zeros(sr.shape, np.float64)
    shifts = []
    for entry, image in track(list(zip(plan["tiles"], tiles, strict=True)), "merging tiles"):
        z = entry["slice"]
        y0, y1, x0, x1 = entry["acquire_px"]
        if image.shape != (y1 - y0, x1 - x0):
            raise VemvizError(f"{entry['file']} is {image.shape[0]}x{image.shape[1]} pixels; "
                              f"the plan asked for {y1 - y0}x{x1 - x0}")  # fmt: skip
        start = register_tile(image, sr[z, y0:y1, x0:x1], max_shift)
        dy, dx = refine_on_scan(image, scan[z], (y0, y1, x0, x1), scale, start)
        moved = _shifted(image, dy, dx)
        feather = _feather((y0, y1, x0, x1), max(1, margin // 2), sr.shape[1], sr.shape[2])
        weight = cv2.warpAffine(feather.astype(np.float32),
                                np.float32([[1, 0, dx], [0, 1, dy]]), (x1 - x0, y1 - y0),
                                borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        num[z, y0:y1, x0:x1] += weight * moved
        den[z, y0:y1, x0:x1] += weight
        shifts.append([round(dy, 2), round(dx, 2)])
    covered = den > 0
    blend = np.minimum(den, 1.0)
    merged = sr.astype(np.float64)
    merged[covered] = (1 - blend[covered]) * merged[covered] + blend[covered] * (
        num[covered] / den[covered]
    )
    report = {"tiles_merged": len(tiles), "shifts_px": shifts}
    return to_dtype(merged, sr.dtype), report
