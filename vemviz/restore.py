"""Find damaged slices in an EM stack and replace them from their good neighbours.

Detection (`detect_damaged_slices`) gives every slice three scores, each judged against the
stack itself so that it works for any modality, dtype and noise level:

- ``contrast``: the slice's intensity spread (1st-99th percentile) divided by the median spread
  of all slices. A blank or missing slice (near-constant) scores close to 0 -> ``"blank"``.
- ``band``: the fraction of the slice lost to pixels stuck at the stack's minimum or maximum
  value (black or saturated), taken as the largest of: rows that are at least 90 % stuck,
  columns likewise, and the area of stuck blobs that survive a morphological opening (so
  scattered dark or bright pixels do not count). The median over the stack is subtracted, so
  padding that every slice shares (e.g. after alignment) is not damage -> ``"band"``.
- ``misfit``: how much worse the slice correlates with its neighbours than is usual locally. The
  normalised cross-correlation (NCC) of each slice with its better-matching neighbour (neighbours
  already found blank or banded are ignored) is compared with the running median of that value
  over 9 slices; the drop is turned into a robust z-score (divided by 1.4826 x the median
  absolute deviation of the drops, with a floor of 0.01 NCC). A slice that does not belong
  (corrupt, displaced, from elsewhere) scores high -> ``"misfit"``.

The thresholds leave every slice of two real stacks unflagged (FlyEM FIB-SEM, 250 slices, and
serial-section TEM of the Drosophila VNC, 20 slices) while flagging blank, banded and foreign
slices inserted into them (see ``tests/test_restore.py``).

Filling (`fill_slices`) replaces whole slices from the nearest good slice on each side; runs of
consecutive bad slices are interpolated across at their fractional positions, and a bad first
or last slice is copied from the nearest good one. ``linear`` cross-fades the two good slices;
``flow`` (also ``auto``) follows the motion between them with optical flow and blends both warped
slices with occlusion-aware weights (`vemviz.flow`). On FlyEM (30 single missing slices) flow
restores 31.06 dB PSNR against 30.69 dB for linear interpolation (runs of three: 29.01 against
28.12 dB). Diffusion inpainting is planned for a later version.
"""

from __future__ import annotations

import re
from typing import Any

import cv2
import numpy as np
from scipy.ndimage import median_filter

from vemviz.errors import VemvizError
from vemviz.flow import PairFlow, interpolate_frame, pair_flows, to_dtype
from vemviz.progress import track

FILL_METHODS = ("auto", "flow", "linear", "diffusion")
THRESHOLDS = {"contrast": 0.1, "band": 0.0005, "misfit": 8.0}
_THUMBNAIL_SIDE = 512
_STUCK_LINE = 0.9
_LOCAL_WINDOW = 9
_MAD_FLOOR = 0.01
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def parse_slice_list(text: str, n_slices: int) -> list[int]:
    """Parse ``"3,17,40-42"`` (0-based z indices, inclusive ranges) into a sorted unique list."""
    indices: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _RANGE.match(part)
        if match:
            start, stop = int(match[1]), int(match[2])
            if start > stop:
                raise VemvizError(f"slice range {part!r} runs backwards; write {stop}-{start}")
            indices.update(range(start, stop + 1))
        elif part.isdigit():
            indices.add(int(part))
        else:
            raise VemvizError(
                f"cannot read slice {part!r}; use 0-based indices and ranges like 3,17,40-42"
            )
    if not indices:
        raise VemvizError(f"no slices given in {text!r}; use 0-based indices like 3,17,40-42")
    _check_in_range(sorted(indices), n_slices)
    return sorted(indices)


def _check_in_range(indices: list[int], n_slices: int) -> None:
    outside = [z for z in indices if not 0 <= z < n_slices]
    if outside:
        raise VemvizError(
            f"slice {outside[0]} is outside the volume, which has slices 0-{n_slices - 1}"
        )


def _check_stack(stack: np.ndarray) -> None:
    if stack.ndim != 3:
        raise VemvizError(f"slice restoration needs a 3D (z, y, x) volume, not {stack.ndim}-D")


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Float32 copy with its longer side at most 512 px (area averaging)."""
    height, width = image.shape
    scale = _THUMBNAIL_SIDE / max(height, width)
    image = image.astype(np.float32)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _spread(image: np.ndarray) -> float:
    low, high = np.percentile(image, [1, 99])
    return float(high - low)


def _stuck_fraction(image: np.ndarray, low: float, high: float) -> float:
    """Largest fraction of the slice in stuck rows, stuck columns or stuck blobs."""
    stuck = ((image == low) | (image == high)).astype(np.uint8)
    size = max(3, min(image.shape) // 50)
    blobs = cv2.morphologyEx(stuck, cv2.MORPH_OPEN, np.ones((size, size), dtype=np.uint8))
    rows = np.mean(stuck.mean(axis=1) >= _STUCK_LINE)
    columns = np.mean(stuck.mean(axis=0) >= _STUCK_LINE)
    return float(max(rows, columns, blobs.mean()))


def _normalised(image: np.ndarray) -> np.ndarray | None:
    centred = image - image.mean()
    norm = float(np.sqrt(np.sum(centred * centred)))
    return centred / norm if norm > 0 else None


def _neighbour_ncc(thumbs: list[np.ndarray], usable: np.ndarray) -> np.ndarray:
    """Best NCC of each slice with a usable neighbour (NaN where there is none)."""
    normed = [_normalised(t) if ok else None for t, ok in zip(thumbs, usable, strict=True)]
    best = np.full(len(thumbs), np.nan)
    for z, image in enumerate(normed):
        if image is None:
            continue
        scores = [
            float(np.sum(image * normed[n]))
            for n in (z - 1, z + 1)
            if 0 <= n < len(normed) and normed[n] is not None
        ]
        if scores:
            best[z] = max(scores)
    return best


def _odd_one_out(thumbs: list[np.ndarray], usable: np.ndarray) -> np.ndarray:
    """True where a slice's nearest usable neighbours match each other better than it.

    A damaged or foreign slice breaks the chain: skipping it raises the similarity of the
    sections around it. Real structure that changes quickly along z (a membrane parallel to
    the sections) lowers both, so it is not mistaken for damage.
    """
    normed = [_normalised(t) if ok else None for t, ok in zip(thumbs, usable, strict=True)]
    good = [z for z, image in enumerate(normed) if image is not None]
    odd = np.zeros(len(thumbs), dtype=bool)
    for below, z, above in zip(good, good[1:], good[2:], strict=False):
        fit = max(
            float(np.sum(normed[z] * normed[below])), float(np.sum(normed[z] * normed[above]))
        )
        odd[z] = float(np.sum(normed[below] * normed[above])) > fit
    return odd


def _misfit_scores(best_ncc: np.ndarray) -> np.ndarray:
    """Robust z-score of each slice's NCC drop below the local (9-slice) median."""
    valid = ~np.isnan(best_ncc)
    scores = np.zeros(len(best_ncc))
    if valid.sum() < 3:
        return scores
    values = best_ncc[valid]
    drop = median_filter(values, size=_LOCAL_WINDOW, mode="nearest") - values
    mad = np.median(np.abs(drop - np.median(drop)))
    scores[valid] = drop / (1.4826 * max(float(mad), _MAD_FLOOR))
    return scores


def detect_damaged_slices(stack: np.ndarray) -> dict[str, Any]:
    """Score every slice for damage and flag the damaged ones.

    Returns a JSON-serialisable dict: ``scores`` (one ``{"contrast", "band", "misfit"}`` dict per
    slice), ``flagged`` (sorted z indices), ``reasons`` (``{z: "blank" | "band" | "misfit"}``,
    the first that applies in that order) and ``threshold`` (the limits used: a slice is flagged
    when contrast < threshold, band > threshold or misfit > threshold).
    """
    _check_stack(stack)
    low, high = float(stack.min()), float(stack.max())
    thumbs, contrast, band = [], [], []
    for image in track(stack, "restore: scoring slices"):
        thumbs.append(_thumbnail(image))
        contrast.append(_spread(thumbs[-1]))
        band.append(_stuck_fraction(image, low, high))
    contrast_ratio = np.array(contrast) / max(float(np.median(contrast)), 1e-12)
    band_excess = np.array(band) - np.median(band)
    blank = contrast_ratio < THRESHOLDS["contrast"]
    banded = band_excess > THRESHOLDS["band"]
    usable = ~(blank | banded)
    misfit = _misfit_scores(_neighbour_ncc(thumbs, usable)) * _odd_one_out(thumbs, usable)
    reasons: dict[int, str] = {}
    for z in range(stack.shape[0]):
        if blank[z]:
            reasons[z] = "blank"
        elif banded[z]:
            reasons[z] = "band"
        elif misfit[z] > THRESHOLDS["misfit"]:
            reasons[z] = "misfit"
    scores = [
        {"contrast": float(c), "band": float(b), "misfit": float(m)}
        for c, b, m in zip(contrast_ratio, band_excess, misfit, strict=True)
    ]
    return {
        "scores": scores,
        "flagged": sorted(reasons),
        "reasons": reasons,
        "threshold": dict(THRESHOLDS),
    }


def _bounds(z: int, good: np.ndarray) -> tuple[int | None, int | None]:
    """Nearest good slice below and above ``z`` (None where there is none)."""
    below, above = good[good < z], good[good > z]
    return (int(below[-1]) if below.size else None, int(above[0]) if above.size else None)


def fill_slices(stack: np.ndarray, slices: list[int], method: str = "auto") -> np.ndarray:
    """Return a copy of ``stack`` with the listed z slices rebuilt from their good neighbours.

    ``method``: ``"linear"``, ``"flow"`` or ``"auto"`` (= flow). Output dtype = input dtype
    (rounded and clipped for integer types).
    """
    _check_stack(stack)
    if method == "diffusion":
        raise VemvizError(
            "diffusion inpainting is not available yet in this version; use --method flow or linear"
        )
    if method not in FILL_METHODS:
        choices = ", ".join(FILL_METHODS)
        raise VemvizError(f"unknown fill method {method!r}; choose one of {choices}")
    n_slices = stack.shape[0]
    bad = sorted(set(slices))
    _check_in_range(bad, n_slices)
    good = np.setdiff1d(np.arange(n_slices), bad)
    if bad and not good.size:
        raise VemvizError("every slice is marked damaged; there is no good slice to restore from")
    out = stack.copy()
    flows: dict[tuple[int, int], PairFlow] = {}
    for z in track(bad, "restore: filling slices"):
        below, above = _bounds(z, good)
        if below is None or above is None:
            out[z] = stack[above if below is None else below]
            continue
        a, b = stack[below], stack[above]
        t = (z - below) / (above - below)
        if method == "linear":
            values = (1.0 - t) * a.astype(np.float32) + t * b.astype(np.float32)
        else:
            if (below, above) not in flows:
                flows = {(below, above): pair_flows(a, b)}
            values = interpolate_frame(a, b, t, flows[(below, above)])
        out[z] = to_dtype(values, stack.dtype)
    return out
