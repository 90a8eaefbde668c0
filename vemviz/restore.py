"""Find damaged slices and damaged regions in an EM stack and restore them from their neighbours.

**Detection** (`detect_damage`) judges every slice against the stack itself, so that it works
for any modality, dtype and noise level, and returns per-slice scores plus a boolean damage
mask of the stack:

- ``contrast``: the slice's intensity spread (1st-99th percentile) divided by the median spread
  of all slices. A blank or missing slice (near-constant) scores close to 0 -> ``"blank"``
  (whole slice damaged).
- ``band``: the fraction of the slice lost to pixels stuck at the stack's minimum or maximum
  value (black or saturated), taken as the largest of: rows that are at least 90 % stuck,
  columns likewise, and the area of stuck blobs that survive a morphological opening (so
  scattered dark or bright pixels do not count). The median over the stack is subtracted, so
  padding that every slice shares is not damage -> ``"band"``; its stuck pixels join the
  mask. The padding an alignment adds differs from section to section: given as ``outside``
  (`vemviz.align.section_masks`; ``vemviz inpaint --transforms``, or the pipeline after an
  align stage), it is left out of every score and of the mask (on 60 jittered, aligned FlyEM
  sections with two damaged: 31 slices flagged without it, the two damaged ones with it).
- ``region``: local damage (cracks, blotches, folds, bands of any value). Each slice is
  compared with its two nearest usable neighbours (one on each side where possible), each
  warped onto it with fast DIS optical flow computed between the two neighbours (not with the
  damaged slice, whose damage would pull the flow). Each residual is taken at three levels:
  smoothed by a Gaussian (sigma 1.5 px; blotches, folds, bands), averaged along a 15 px segment
  at the best of 8 orientations (thin cracks, whose depth a Gaussian dilutes), and as it is.
  At each level the two residuals are combined into the smaller one where they agree in sign
  and 0 where they do not, so damage in one neighbour does not show up in this slice, and
  divided by the stack's noise scale for that level (median over slices of 1.4826 x the median
  absolute deviation of the residual against the lower neighbour). Pixels above a seed
  threshold in the smoothed or the line level start regions that grow through 8-connected
  pixels above 40 % of it in any level (the raw level carries a 1 px crack along its length);
  regions of at least 12 px are kept, their holes filled and the mask dilated by 2 px. Without
  the line and raw levels and the 8-connectivity, one 1 px crack in five went unseen on FlyEM
  and crack pixel recall was 0.91. Where a slice's references are damaged themselves, each
  region is checked against the nearest slices undamaged around it and dropped unless it
  reaches half the seed there (an echo of the neighbours' damage). The seed threshold is 10,
  raised to 2.5 x the median over slices of each slice's 99.9th score percentile for stacks
  whose neighbours differ much (thick serial sections), so undamaged real slices are not
  flagged -> ``"region"``.
- ``misfit``: how much worse the slice correlates with its neighbours than is usual locally. The
  normalised cross-correlation (NCC) of each slice with its better-matching neighbour (neighbours
  already found blank or banded are ignored) is compared with the running median of that value
  over 9 slices; the drop is turned into a robust z-score (divided by 1.4826 x the median
  absolute deviation of the drops, with a floor of 0.01 NCC), counted only where the slice's
  neighbours match each other better than it. A slice that does not belong (corrupt, displaced,
  from elsewhere) scores high -> ``"misfit"``, as does a slice whose damaged region covers more
  than half of it; both are damaged as a whole. A slice with a smaller damaged region is
  reported as ``"region"`` even if its misfit is high (the region explains the misfit).

The thresholds leave every slice of two real stacks unflagged (FlyEM FIB-SEM, 250 slices, and
serial-section TEM of the Drosophila VNC, 20 slices) while flagging blank, banded and foreign
slices inserted into both, and simulated cracks, blotches and folds in FlyEM (see
``tests/test_restore.py`` and ``scripts/benchmarks/restore.py``). On thick serial sections
(VNC, 50 nm) neighbouring sections differ too much for local damage to stand out.

`scan_damage` runs the same detection on a `vemviz.slices.SliceSource`, which reads the slices
one at a time (a volume on disk need not fit in memory), and returns the mask per slice;
`detect_damage` is it for an array in memory.

**Restoration** (`fill_damage`) replaces the masked voxels of each damaged slice from the
nearest undamaged slice on each side (runs of damaged slices are interpolated across at their
fractional positions; a damaged first or last slice is copied from the nearest good one):
``linear`` cross-fades the two good slices; ``flow`` follows the motion between them with
optical flow, along paths bent by the flows to the next good slices beyond, and blends both
warped slices with occlusion-aware weights (`vemviz.flow`);
``diffusion`` samples the masked pixels from the conditional diffusion model of
`vemviz.diffusion`, conditioned on the rest of the slice and both flow-warped neighbours,
optionally fine-tuned on the stack's own undamaged slices first; ``inr`` uses the local
implicit network of `vemviz.inr` (`vemviz.inr.train_gap`), trained on the XY planes of the
undamaged slices to restore runs of missing rows (one network per run length, rows spaced by
the z/xy voxel ratio, with its neighbour planes), and decodes the missing slices from up to 8
good slices on each side, so it sees how structure continues through several sections, not
only the two nearest (``scripts/benchmark.py restore`` on FlyEM: one missing slice 32.39 dB
against flow 31.70 and linear 31.57; two consecutive 31.30 against 30.65 and 29.83);
``ensemble`` averages the inr and diffusion fills: the two learn from different evidence (the
XY planes of this volume; the flow warps, trained on other volumes), so their errors partly
cancel (same benchmark: 32.36 and 31.43 dB; bands 32.17 against diffusion 31.83, blotches 32.60
against 32.17); ``auto`` uses
flow for slices damaged as a whole and diffusion for partial damage. `fill_slices` does the
same for a list of whole slices.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from vemviz.errors import VemvizError
from vemviz.flow import (
    PairFlow,
    curved_pair_flows,
    interpolate_frame,
    to_dtype,
    to_uint8_pair,
    warp,
    warp_pair,
)
from vemviz.progress import track
from vemviz.slices import Run, SliceMasks, SliceSource, crop, sweep

FILL_METHODS = ("auto", "flow", "linear", "diffusion", "inr", "ensemble")
INR_METHODS = ("inr", "ensemble")  # the fill methods that train the inr (need the voxel size)
DIFFUSION_METHODS = ("diffusion", "ensemble")
THRESHOLDS = {"contrast": 0.1, "band": 0.0005, "misfit": 8.0, "region": 10.0}
# A slice whose damaged fraction reaches this is restored (and reported) as a whole.
WHOLE_FRACTION = 0.5
_THUMBNAIL_SIDE = 512
_STUCK_LINE = 0.9
_LOCAL_WINDOW = 9
_MAD_FLOOR = 0.01
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
_RESIDUAL_SIGMA = 1.5
_LINE_LENGTH = 15  # px: thin cracks are scored by the mean residual along such a segment
_LINE_ANGLES = 8
_SEED_LEVELS = 2  # Gaussian and line residuals seed regions; the raw residual only extends them
_REGION_GROW = 0.4
_REGION_MIN_AREA = 12
_REGION_DILATE = 2
_REGION_TAIL = 2.5
_ECHO_SEED = 0.8
_ECHO_MARGIN = 8
_BLIND_PX = 12  # residuals are not scored this close to pixels outside a section
_DIFFUSION_MARGIN = 32
INR_CONTEXT = 8  # good slices used on each side of a gap by the inr filler


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


def _stuck(image: np.ndarray, low: float, high: float, inside: np.ndarray) -> np.ndarray:
    """uint8 map of the pixels inside the section stuck at ``low`` or ``high``."""
    return (((image == low) | (image == high)) & inside).astype(np.uint8)


def _stuck_lines(stuck: np.ndarray, inside: np.ndarray, axis: int) -> np.ndarray:
    """Rows (axis 1) or columns (axis 0) whose pixels inside the section are mostly stuck."""
    return stuck.sum(axis=axis) >= _STUCK_LINE * np.maximum(inside.sum(axis=axis), 1)


def _stuck_fraction(image: np.ndarray, low: float, high: float, inside: np.ndarray) -> float:
    """Largest fraction of the slice in stuck rows, stuck columns or stuck blobs."""
    stuck = _stuck(image, low, high, inside)
    size = max(3, min(image.shape) // 50)
    blobs = cv2.morphologyEx(stuck, cv2.MORPH_OPEN, np.ones((size, size), dtype=np.uint8))
    rows = np.mean(_stuck_lines(stuck, inside, 1))
    columns = np.mean(_stuck_lines(stuck, inside, 0))
    return float(max(rows, columns, blobs.sum() / max(int(inside.sum()), 1)))


def _normalised(image: np.ndarray) -> np.ndarray | None:
    centred = image - image.mean()
    norm = float(np.sqrt(np.sum(centred * centred)))
    return centred / norm if norm > 0 else None


def _normed_thumbnails(
    source: SliceSource, usable: np.ndarray
) -> Callable[[int], np.ndarray | None]:
    """A `vemviz.slices.sweep` reader: z -> the slice's normalised thumbnail (None where it is
    not ``usable`` or constant), the last few cached."""

    @functools.lru_cache(maxsize=4)
    def normed(z: int) -> np.ndarray | None:
        return _normalised(_thumbnail(source.image(z))) if usable[z] else None

    return normed


def _fit_to_neighbours(
    n_slices: int, normed: Callable[[int], np.ndarray | None], z: int
) -> tuple[float, bool] | None:
    """Slice z's best NCC with a usable neighbour (NaN where there is none), and whether its
    nearest usable slices on each side match each other better than it (``normed(z)``: the
    slice's normalised thumbnail of a stack of ``n_slices``, None where it is not usable;
    then the result is None).

    A damaged or foreign slice breaks the chain: skipping it raises the similarity of the
    sections around it. Real structure that changes quickly along z (a membrane parallel to
    the sections) lowers both, so it is not mistaken for damage.
    """
    image = normed(z)
    if image is None:
        return None
    scores = [
        float(np.sum(image * other))
        for other in (normed(k) for k in (z - 1, z + 1) if 0 <= k < n_slices)
        if other is not None
    ]
    below = next((normed(k) for k in range(z - 1, -1, -1) if normed(k) is not None), None)
    above = next((normed(k) for k in range(z + 1, n_slices) if normed(k) is not None), None)
    odd = False
    if below is not None and above is not None:
        fit = max(float(np.sum(image * below)), float(np.sum(image * above)))
        odd = float(np.sum(below * above)) > fit
    return (max(scores) if scores else float("nan")), odd


def _misfit_scores(best_ncc: np.ndarray) -> np.ndarray:
    """Robust z-score of each slice's NCC drop below the local (9-slice) median."""
    valid = ~np.isnan(best_ncc)
    scores = np.zeros(len(best_ncc))
    if valid.sum() < 3:
        return scores
    values = best_ncc[valid]
    drop = ndimage.median_filter(values, size=_LOCAL_WINDOW, mode="nearest") - values
    mad = np.median(np.abs(drop - np.median(drop)))
    scores[valid] = drop / (1.4826 * max(float(mad), _MAD_FLOOR))
    return scores


def _stuck_mask(image: np.ndarray, low: float, high: float, inside: np.ndarray) -> np.ndarray:
    """Stuck pixels in stuck rows, stuck columns or stuck blobs (as `_stuck_fraction`)."""
    stuck = _stuck(image, low, high, inside)
    size = max(3, min(image.shape) // 50)
    mask = cv2.morphologyEx(stuck, cv2.MORPH_OPEN, np.ones((size, size), np.uint8)).astype(bool)
    mask[_stuck_lines(stuck, inside, 1)] = True
    mask[:, _stuck_lines(stuck, inside, 0)] = True
    return mask & stuck.astype(bool)


def _references(z: int, usable: np.ndarray) -> list[int]:
    """The nearest usable slice on each side of ``z``, or the two nearest on one side."""
    others = np.flatnonzero(usable)
    others = others[others != z]
    below, above = others[others < z], others[others > z]
    if below.size and above.size:
        return [int(below[-1]), int(above[0])]
    return [int(k) for k in sorted(others, key=lambda k: abs(k - z))[:2]]


class _Residuals:
    """Smoothed residuals of slices against reference slices warped onto them.

    The flow is computed between the two references (never with the slice itself, whose damage
    would pull the flow), and each reference is warped to the slice's fractional position.
    """

    def __init__(self, source: SliceSource) -> None:
        self.source = source
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)

    def pair(self, z: int, refs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``z`` minus each of the two references warped onto it, float32 (3, H, W) each:
        smoothed by a Gaussian, averaged along the best-oriented short line (`_line_mean`), raw;
        0 within `_BLIND_PX` of pixels that lie outside the slice's or a reference's section."""
        a, b = refs
        stack_a, stack_b = self.source.image(a), self.source.image(b)
        a8, b8 = to_uint8_pair(stack_a, stack_b)
        t = (z - a) / (b - a)
        from_a = warp(stack_a, self.dis.calc(b8, a8, None), t)
        from_b = warp(stack_b, self.dis.calc(a8, b8, None), 1.0 - t)
        image = self.source.image(z).astype(np.float32)
        blind = np.logical_or.reduce([self.source.outside(k) for k in (z, a, b)])
        if blind.any():
            blind = ndimage.binary_dilation(blind, iterations=_BLIND_PX)
        pairs = []
        for ref in (from_a, from_b):
            residual = image - _matched(ref, image, ~blind)
            smooth = cv2.GaussianBlur(residual, (0, 0), _RESIDUAL_SIGMA)
            pairs.append(np.where(blind, 0, np.stack([smooth, _line_mean(residual), residual])))
        return pairs[0], pairs[1]


def _line_offsets(length: int, angles: int) -> list[np.ndarray]:
    """Per orientation, the (dy, dx) pixel offsets of a ``length`` px segment centred at 0."""
    steps = np.arange(length) - length // 2
    offsets = []
    for k in range(angles):
        angle = np.pi * k / angles
        line = np.rint(np.column_stack([steps * np.sin(angle), steps * np.cos(angle)]))
        offsets.append(np.unique(line.astype(int), axis=0))
    return offsets


_LINE_OFFSETS = _line_offsets(_LINE_LENGTH, _LINE_ANGLES)


def _line_mean(residual: np.ndarray) -> np.ndarray:
    """The residual averaged along a short segment at the orientation where that mean is
    largest in magnitude (signed): a thin crack keeps its full depth, noise averages out."""
    r = _LINE_LENGTH // 2
    padded = np.pad(residual, r, mode="reflect")
    height, width = residual.shape
    best = np.zeros_like(residual)
    for offsets in _LINE_OFFSETS:
        total = np.zeros_like(residual)
        for dy, dx in offsets:
            total += padded[r + dy : r + dy + height, r + dx : r + dx + width]
        mean = total / len(offsets)
        best = np.where(np.abs(mean) > np.abs(best), mean, best)
    return best


def _matched(reference: np.ndarray, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``reference`` with gain and offset fitted to ``image`` (least squares on every 4th
    ``valid`` pixel, refitted once without those differing by more than 3 robust deviations,
    i.e. damage)."""
    sample = valid[::4, ::4]
    if sample.sum() < 16:
        sample = np.ones_like(sample)
    reference_sample, image_sample = reference[::4, ::4][sample], image[::4, ::4][sample]
    keep = np.ones(image_sample.shape, dtype=bool)
    for _ in range(2):
        x, y = reference_sample[keep], image_sample[keep]
        gain = float(np.cov(x, y)[0, 1] / max(float(np.var(x)), 1e-6))
        offset = float(y.mean()) - gain * float(x.mean())
        diff = image_sample - (gain * reference_sample + offset)
        keep = np.abs(diff - np.median(diff)) <= 3 * max(_mad(diff), 1e-6)
    return gain * reference + offset


def _mad(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation (a robust standard deviation)."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _agreeing(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The smaller magnitude where the two residuals agree in sign, else 0."""
    agree = np.sign(first) == np.sign(second)
    return np.where(agree, np.minimum(np.abs(first), np.abs(second)), 0.0)


def _span_factor(z: int, refs: list[int]) -> float:
    """How much larger natural residuals are than against the two slices either side of ``z``:
    half the span of references that bracket ``z`` (a slice beside a blank one), and the
    distance to the further reference where both lie on one side (the stack's ends: ``z`` is
    extrapolated; on an aligned FlyEM stack the end slices scored 9.9 and 13.8, the others
    3-7)."""
    if min(refs) < z < max(refs):
        return max(1.0, (max(refs) - min(refs)) / 2.0)
    return float(max(abs(k - z) for k in refs))


def _region_mask(score: np.ndarray, seed: float) -> np.ndarray:
    """Regions above ``_REGION_GROW * seed`` in any level of ``score`` (levels, H, W) that hold
    a pixel above ``seed`` in a seeding level, cleaned."""
    seeding = score[:_SEED_LEVELS].max(axis=0)
    # 8-connected, so that a thin diagonal crack is one region, not a chain of single pixels
    labels, count = ndimage.label(score.max(axis=0) > _REGION_GROW * seed, np.ones((3, 3)))
    if count == 0:
        return np.zeros(score.shape[1:], dtype=bool)
    peaks = ndimage.maximum(seeding, labels, index=np.arange(1, count + 1))
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = np.concatenate([[False], (peaks > seed) & (areas >= _REGION_MIN_AREA)])
    mask = ndimage.binary_fill_holes(keep[labels])
    if mask.any():
        mask = ndimage.binary_dilation(mask, iterations=_REGION_DILATE)
    return mask


def _region_scores(
    source: SliceSource, usable: np.ndarray, run: Run | None = None
) -> tuple[SliceMasks, np.ndarray, float]:
    """Per-slice region masks, peak scores and the seed threshold used (see module docstring).

    Two sweeps over the stack (`vemviz.slices.sweep`), so that only one slice of residuals is
    held at a time per task: the first measures the noise scale and the tail of the scores,
    the second builds the masks.
    """
    n_slices = len(source)
    scored = [z for z in range(n_slices) if len(_references(z, usable)) >= 2]
    figures = sweep(source, functools.partial(_residual_figures, usable), scored,
                    "restore: measuring residuals", run, _Residuals)  # fmt: skip
    masks = SliceMasks(source.shape)
    peaks = np.zeros(n_slices)
    if not figures:
        return masks, peaks, float("inf")
    mads, tails = ([figures[z][i] for z in scored] for i in (0, 1))
    scale = np.maximum(np.median(mads, axis=0), 1e-6)[:, None, None]
    seed = max(
        THRESHOLDS["region"],
        _REGION_TAIL * float(np.max(np.median(tails, axis=0) / scale.ravel()[:_SEED_LEVELS])),
    )
    found = sweep(source, functools.partial(_slice_regions, usable, scale, seed), scored,
                  "restore: finding damaged regions", run, _Residuals)  # fmt: skip
    for z, (peak, cropped) in found.items():
        peaks[z] = peak
        masks.put(z, cropped)
    return _drop_echoes(masks, usable, _Residuals(source), scale, seed), peaks, seed


def _residual_figures(
    usable: np.ndarray, residuals: _Residuals, z: int
) -> tuple[list[float], list[float]]:
    """Slice z's robust deviation per residual level, and the 99.9th percentile of its agreeing
    residuals per seeding level (``residuals``: `_Residuals` of the stack)."""
    first, second = residuals.pair(z, _references(z, usable))
    agreeing = _agreeing(first[:_SEED_LEVELS], second[:_SEED_LEVELS])
    return [_mad(level) for level in first], [float(np.percentile(a, 99.9)) for a in agreeing]


def _slice_regions(
    usable: np.ndarray, scale: np.ndarray, seed: float, residuals: _Residuals, z: int
) -> tuple[float, tuple[int, int, np.ndarray] | None]:
    """Slice z's peak score and its damaged regions (`vemviz.slices.crop`)."""
    refs = _references(z, usable)
    score = _agreeing(*residuals.pair(z, refs)) / scale
    return float(score[:_SEED_LEVELS].max()), crop(
        _region_mask(score, seed * _span_factor(z, refs))
    )


def _drop_echoes(
    masks: SliceMasks, usable: np.ndarray, residuals: _Residuals, scale: np.ndarray, seed: float
) -> SliceMasks:
    """Remove regions that are echoes of damage in the reference slices.

    Where both neighbours are damaged near the same place their residuals can agree although
    the slice itself is intact (flow is disturbed around damage, too). Each region of a slice
    whose references carry damage is scored again against the nearest slices on each side that
    are undamaged around it (the region dilated by 8 px) and kept only if it reaches half the
    seed threshold there too.
    """
    damaged = masks.damaged()
    cleaned = masks.copy()
    for z in (int(k) for k in np.flatnonzero(damaged)):
        refs = _references(z, usable)
        if len(refs) < 2 or not damaged[refs].any():
            continue
        kept = masks.get(z)
        labels, count = ndimage.label(kept)
        for index in range(1, count + 1):
            region = labels == index
            around = ndimage.binary_dilation(region, iterations=_ECHO_MARGIN)
            clear = usable & ~masks.touching(around)
            others = _references(z, clear)
            if len(others) < 2:
                continue
            score = (_agreeing(*residuals.pair(z, others)) / scale)[:_SEED_LEVELS].max(axis=0)
            if score[region].max() <= _ECHO_SEED * seed * _span_factor(z, others):
                kept &= ~region
        cleaned.set(z, kept)
    return cleaned


def detect_damage(
    stack: np.ndarray, outside: np.ndarray | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """Score every slice for damage; return the report and the damage mask (z, y, x) bool.

    ``outside`` (z, y, x) bool, optional: pixels that hold no data of their section, such as
    the padding of an aligned stack (`vemviz.align.section_masks`). They are never damage and
    count in no score: stuck fractions are taken over the pixels inside, and residuals are not
    scored near pixels outside the slice or its references. The report is `scan_damage`'s.
    """
    _check_stack(stack)
    per_slice = None if outside is None else check_mask(stack, outside).__getitem__
    report, masks = scan_damage(SliceSource(stack, per_slice))
    return report, masks.dense()


def scan_damage(source: SliceSource, run: Run | None = None) -> tuple[dict[str, Any], SliceMasks]:
    """`detect_damage` of the slices of ``source``, read one at a time (a volume on disk need
    not fit in memory); the damage mask is returned per slice (`vemviz.slices.SliceMasks`).
    Each pass over the slices is a `vemviz.slices.sweep`: in this process, or with ``run``
    (`vemviz.chunked.Runner.run`) as parallel tasks of one z chunk each; the result is the same.

    The report is JSON-serialisable: ``scores`` (one ``{"contrast", "band", "misfit", "region",
    "damaged_fraction"}`` dict per slice), ``flagged`` (sorted z indices), ``reasons`` (``{z:
    "blank" | "band" | "region" | "misfit"}``, the first that applies in that order, a region
    covering more than half the slice counting as misfit), ``threshold`` (the limits used:
    flagged when contrast < threshold, band > threshold, misfit > threshold, or a region seed
    above ``region`` -- the value used for this stack) and ``damaged_voxels``.
    """
    n_slices = len(source)
    low, high = source.value_range()
    figures = sweep(source, functools.partial(_slice_figures, low, high), range(n_slices),
                    "restore: scoring slices", run, _itself)  # fmt: skip
    contrast, band = (np.array([figures[z][i] for z in range(n_slices)]) for i in (0, 1))
    contrast_ratio = contrast / max(float(np.median(contrast)), 1e-12)
    band_excess = band - np.median(band)
    blank = contrast_ratio < THRESHOLDS["contrast"]
    banded = band_excess > THRESHOLDS["band"]
    usable = ~(blank | banded)
    fits = sweep(source, functools.partial(_fit_to_neighbours, n_slices),
                 [int(z) for z in np.flatnonzero(usable)], "restore: fitting slices",
                 run, functools.partial(_normed_thumbnails, usable=usable))  # fmt: skip
    best_ncc, odd = np.full(n_slices, np.nan), np.zeros(n_slices, dtype=bool)
    for z, fit in fits.items():
        if fit is not None:
            best_ncc[z], odd[z] = fit
    misfit = _misfit_scores(best_ncc) * odd
    regions, peaks, seed = _region_scores(source, ~blank, run)
    masks = SliceMasks(source.shape)
    reasons: dict[int, str] = {}
    plane = source.shape[1] * source.shape[2]
    whole = np.ones(source.shape[1:], dtype=bool)  # read only: each mask is a new array
    for z in range(n_slices):
        if blank[z]:
            reason, mask = "blank", whole
        elif banded[z]:
            inside = ~source.outside(z)
            reason, mask = "band", regions.get(z) | _stuck_mask(source.image(z), low, high, inside)
        elif regions.count(z) and regions.count(z) / plane <= WHOLE_FRACTION:
            reason, mask = "region", regions.get(z)
        elif regions.count(z) or misfit[z] > THRESHOLDS["misfit"]:
            reason, mask = "misfit", whole
        else:
            continue
        masks.set(z, mask & ~source.outside(z))
        if masks.count(z):
            reasons[z] = reason
    scores = [
        {
            "contrast": float(c),
            "band": float(b),
            "misfit": float(m),
            "region": float(r),
            "damaged_fraction": masks.count(z) / plane,
        }
        for z, (c, b, m, r) in enumerate(
            zip(contrast_ratio, band_excess, misfit, peaks, strict=True)
        )
    ]
    report = {
        "scores": scores,
        "flagged": sorted(reasons),
        "reasons": reasons,
        "threshold": {**THRESHOLDS, "region": seed},
        "damaged_voxels": sum(masks.count(z) for z in reasons),
    }
    return report, masks


def _itself(source: SliceSource) -> SliceSource:
    """A `vemviz.slices.sweep` reader that gives the source itself (image and outside)."""
    return source


def _slice_figures(low: float, high: float, source: SliceSource, z: int) -> tuple[float, float]:
    """Slice z's contrast (1-99 % spread of its thumbnail) and stuck fraction inside its
    section (``low``, ``high``: the stack's value range)."""
    image = source.image(z)
    return _spread(_thumbnail(image)), _stuck_fraction(image, low, high, ~source.outside(z))


def gap_runs(damaged: Collection[int], n_slices: int) -> set[int]:
    """The lengths of the runs of consecutive damaged slices that have a good slice on both
    sides (those the inr fills with one network per length)."""
    bad = set(damaged)
    runs, z = set(), 0
    while z < n_slices:
        if z in bad:
            start = z
            while z in bad:
                z += 1
            if start > 0 and z < n_slices:
                runs.add(z - start)
        z += 1
    return runs


def _bounds(z: int, good: np.ndarray) -> tuple[int | None, int | None]:
    """Nearest good slice below and above ``z`` (None where there is none)."""
    below, above = good[good < z], good[good > z]
    return (int(below[-1]) if below.size else None, int(above[0]) if above.size else None)


@dataclass
class DiffusionOptions:
    """How `fill_damage` runs the diffusion model (see `vemviz.diffusion`)."""

    weights: Path | None = None
    steps: int = 1
    samples: int = 1
    seed: int = 0
    fine_tune: int = 0
    device: str = "auto"
    # the intensities mapped to -1..1; None: `vemviz.diffusion.intensity_range` of the
    # stack's undamaged voxels (given when the stack is one slab of a larger volume)
    value_range: tuple[float, float] | None = None


def check_mask(stack: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if mask.shape != stack.shape:
        raise VemvizError(
            f"the damage mask has shape {tuple(mask.shape)} but the volume has "
            f"{tuple(stack.shape)}; they must match voxel for voxel"
        )
    return mask.astype(bool)


def check_fill_method(method: str) -> None:
    if method not in FILL_METHODS:
        choices = ", ".join(FILL_METHODS)
        raise VemvizError(f"unknown fill method {method!r}; choose one of {choices}")


def slice_methods(fractions: np.ndarray, method: str) -> dict[int, str]:
    """The fill method used for each damaged slice, given each slice's damaged fraction
    (``auto``: flow whole, diffusion partial)."""
    check_fill_method(method)
    chosen = {}
    for z in np.flatnonzero(fractions > 0):
        whole = fractions[z] >= WHOLE_FRACTION
        chosen[int(z)] = ("flow" if whole else "diffusion") if method == "auto" else method
    return chosen


class DiffusionFiller:
    """The diffusion model with the stack's intensity range, loaded (and fine-tuned) once."""

    def __init__(self, stack: np.ndarray, mask: np.ndarray, options: DiffusionOptions) -> None:
        from vemviz import diffusion
        from vemviz.device import resolve_device

        self.diffusion, self.options = diffusion, options
        self.value_range = options.value_range or diffusion.intensity_range(stack, mask)
        device = resolve_device(options.device)
        self.model = diffusion.load_model(options.weights, device)
        self.fine_tune_losses: list[float] = []
        if options.fine_tune:
            good = [z for z in range(stack.shape[0]) if not mask[z].any()]
            normalised = diffusion.normalise(stack, self.value_range)
            self.fine_tune_losses = diffusion.fine_tune(
                self.model, normalised, good, options.fine_tune, seed=options.seed
            )

    def report(self) -> dict[str, Any]:
        """The fine-tuning's steps and first and last losses."""
        losses = self.fine_tune_losses
        return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}

    def fill(
        self, image: np.ndarray, mask: np.ndarray, below: np.ndarray, above: np.ndarray, t: float
    ) -> np.ndarray:
        """Float32 slice with the masked pixels sampled, computed on the damage's bounding box."""
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        y0, y1 = (
            max(0, rows[0] - _DIFFUSION_MARGIN),
            min(mask.shape[0], rows[-1] + 1 + _DIFFUSION_MARGIN),
        )
        x0, x1 = (
            max(0, cols[0] - _DIFFUSION_MARGIN),
            min(mask.shape[1], cols[-1] + 1 + _DIFFUSION_MARGIN),
        )
        box = np.s_[y0:y1, x0:x1]
        norm = [self.diffusion.normalise(a[box], self.value_range) for a in (image, below, above)]
        cond = self.diffusion.condition(norm[0], mask[box], norm[1], norm[2], t)
        sampled = self.diffusion.sample(
            self.model,
            cond,
            steps=self.options.steps,
            samples=self.options.samples,
            seed=self.options.seed,
        )
        out = image.astype(np.float32)
        out[box] = np.where(
            mask[box], self.diffusion.denormalise(sampled, self.value_range), out[box]
        )
        return out


def gap_spacing(voxel_size_nm: Any) -> float:
    """The z/xy voxel ratio at which the inr fills learn z from the XY planes."""
    from vemviz.volume import validate_voxel_size

    if voxel_size_nm is None:
        raise VemvizError(
            "--method inr/ensemble needs the voxel size (the network learns z from the XY "
            "planes at the z/xy ratio): pass --voxel-size Z,Y,X in nm"
        )
    z, y, x = validate_voxel_size(voxel_size_nm)
    return z / (0.5 * (y + x))


class InrFiller:
    """Gap filling by the self-supervised network of `vemviz.inr`, one per run length (trained
    on the XY planes of the ``good`` slices of ``stack`` when first needed, unless given in
    ``models``)."""

    def __init__(
        self,
        stack: np.ndarray,
        good: np.ndarray,
        voxel_size_nm: Any,
        training: Any,
        models: dict[int, Any] | None = None,
    ) -> None:
        from vemviz import inr

        self.inr, self.stack, self.good = inr, stack, good
        self.usable = set(good.tolist())
        self.ratio = gap_spacing(voxel_size_nm)
        self.training = training or inr.Training()
        self.models: dict[int, Any] = dict(models or {})

    def model(self, run: int) -> Any:
        """The network that fills runs of ``run`` missing slices."""
        if run not in self.models:
            self.models[run] = self.inr.train_gap(
                self.stack[self.good], self.ratio, run, self.training
            )
        return self.models[run]

    def fill(self, z: int, below: int, above: int) -> np.ndarray:
        run = above - below - 1
        rows = [below, above]
        for _ in range(INR_CONTEXT - 1):
            if rows[0] - 1 in self.usable:
                rows.insert(0, rows[0] - 1)
            if rows[-1] + 1 in self.usable:
                rows.append(rows[-1] + 1)
        position = rows.index(below) + (z - below) / (run + 1)
        values, _ = self.inr.reconstruct_iso(
            self.model(run), self.stack[rows], np.array([position])
        )
        return values[0]


def fill_damage(
    stack: np.ndarray,
    mask: np.ndarray,
    method: str = "auto",
    diffusion: DiffusionOptions | None = None,
    *,
    voxel_size_nm: Any = None,
    training: Any = None,
    inr_models: dict[int, Any] | None = None,
    only: Collection[int] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Return a copy of ``stack`` with the voxels where ``mask`` is true restored, and a report.

    Each damaged slice is rebuilt from the nearest undamaged slices below and above (see the
    module docstring); ``method`` is one of `FILL_METHODS` (``"inr"`` and ``"ensemble"`` need
    ``voxel_size_nm``; ``training`` is the inr's `vemviz.inr.Training`, ``inr_models`` its
    networks per run length trained beforehand, see `InrFiller`); ``only``: restore
    just these slices (the others are left as they are, their damage still excluding them as
    sources).
    Output dtype = input dtype (rounded and clipped for integer types). The report gives the
    method used per slice and, after fine-tuning, the fine-tuning losses.
    """
    _check_stack(stack)
    mask = check_mask(stack, mask)
    chosen = slice_methods(mask.reshape(mask.shape[0], -1).mean(axis=1), method)
    if only is not None:
        keep = set(only)
        chosen = {z: m for z, m in chosen.items() if z in keep}
    good = np.flatnonzero(~mask.reshape(mask.shape[0], -1).any(axis=1))
    if chosen and not good.size:
        raise VemvizError("every slice is marked damaged; there is no good slice to restore from")
    out = stack.copy()
    used = set(chosen.values())
    filler = None
    if used.intersection(DIFFUSION_METHODS):
        filler = DiffusionFiller(stack, mask, diffusion or DiffusionOptions())
    if used.intersection(INR_METHODS):
        inr_filler = InrFiller(stack, good, voxel_size_nm, training, inr_models)
    flows: dict[tuple[int, int], PairFlow] = {}  # the last pair's
    for z in track(sorted(chosen), "restore: filling slices"):
        below, above = _bounds(z, good)
        if below is None or above is None:
            source = stack[above if below is None else below]
            out[z] = np.where(mask[z], source, stack[z])
            continue
        a, b = stack[below], stack[above]
        t = (z - below) / (above - below)
        if chosen[z] == "linear":
            values = (1.0 - t) * a.astype(np.float32) + t * b.astype(np.float32)
        elif chosen[z] == "inr":
            values = inr_filler.fill(z, below, above)
        else:
            if (below, above) not in flows:
                flows = {(below, above): curved_pair_flows(stack, below, above, good)}
            if chosen[z] == "flow":
                values = interpolate_frame(a, b, t, flows[(below, above)])
            else:
                warped_below, warped_above = warp_pair(a, b, t, flows[(below, above)])
                values = filler.fill(stack[z], mask[z], warped_below, warped_above, t)
                if chosen[z] == "ensemble":
                    values = 0.5 * (values + inr_filler.fill(z, below, above))
        out[z] = np.where(mask[z], to_dtype(values, stack.dtype), stack[z])
    report: dict[str, Any] = {"methods": {int(z): m for z, m in chosen.items()}}
    if filler is not None and filler.fine_tune_losses:
        report["fine_tune"] = filler.report()
    return out, report


def fill_slices(
    stack: np.ndarray,
    slices: list[int],
    method: str = "auto",
    diffusion: DiffusionOptions | None = None,
    **options: Any,
) -> np.ndarray:
    """Return a copy of ``stack`` with the listed z slices rebuilt as a whole (`fill_damage`,
    which also takes the ``options``)."""
    _check_stack(stack)
    bad = sorted(set(slices))
    _check_in_range(bad, stack.shape[0])
    mask = np.zeros(stack.shape, dtype=bool)
    mask[bad] = True
    return fill_damage(stack, mask, method, diffusion, **options)[0]
