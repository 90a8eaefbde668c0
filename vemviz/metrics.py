"""Quality figures used by tests, reports and benchmarks.

Intensity: PSNR and SSIM with an explicit data range (255 for uint8 EM), optionally restricted
to a mask or to chosen slices. Segmentation: IoU (Jaccard) of foreground masks; for instance
labels the variation of information (split and merge parts, in bits) and adapted Rand error,
both from scikit-image, with 0 treated as unlabelled in the ground truth.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import adapted_rand_error, structural_similarity, variation_of_information


def psnr(
    truth: np.ndarray,
    estimate: np.ndarray,
    data_range: float = 255.0,
    mask: np.ndarray | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB over all voxels or those where ``mask`` is true."""
    diff = truth.astype(np.float64) - estimate.astype(np.float64)
    if mask is not None:
        diff = diff[mask]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim_slices(truth: np.ndarray, estimate: np.ndarray, data_range: float = 255.0) -> float:
    """Mean 2D SSIM over the z slices of two (z, y, x) stacks."""
    values = [
        structural_similarity(t, e, data_range=data_range)
        for t, e in zip(truth.astype(np.float64), estimate.astype(np.float64), strict=True)
    ]
    return float(np.mean(values))


def iou(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Jaccard index of the foregrounds (non-zero voxels)."""
    t, p = truth > 0, prediction > 0
    union = np.count_nonzero(t | p)
    return 1.0 if union == 0 else np.count_nonzero(t & p) / union


def instance_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """VI split/merge (bits) and adapted Rand error, ignoring unlabelled truth voxels."""
    keep = truth > 0
    t = truth[keep].astype(np.int64)
    p = prediction[keep].astype(np.int64)
    split, merge = variation_of_information(t, p)
    are, _, _ = adapted_rand_error(t, p)
    return {"vi_split": float(split), "vi_merge": float(merge), "vi": float(split + merge),
            "adapted_rand_error": float(are)}  # fmt: skip
