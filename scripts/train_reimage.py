"""Fit the re-imaging error model (vemviz/weights/reimage_error.json) on real EM pairs.

For each training volume in ``../shared/data`` the low-resolution scan is simulated by area
downsampling (scales 2, 3 and 4), super-resolved with each SR method, cut into tiles (64 and 128
px), and every tile's features (`vemviz.reimage.tile_features`) are paired with its measured RMS
error against the original. A ridge regression per SR method is fitted on the training slices
and checked on held-out slices (Spearman rank correlation and the share of the total squared
error found in the top 10 % of tiles, against 10 % for a random choice).

    python scripts/train_reimage.py [--data ../shared/data] [--sr-methods bicubic,learned]

Training slices: EPFL slices 0-1, FlyEM z < 125 (every 4th), VNC slices 0-9. Held out: EPFL
slices 2-3, FlyEM z >= 125 (every 4th), VNC slices 10-19.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy.stats import spearmanr

from vemviz import reimage

REPO = Path(__file__).resolve().parents[1]
SCALES = (2, 3, 4)
TILES = (64, 128)


def load(path: Path) -> np.ndarray:
    return tifffile.imread(path)


def splits(data: Path) -> dict[str, list[np.ndarray]]:
    epfl = load(data / "epfl_slices" / "raw.tif")
    flyem = load(data / "flyem_medulla_10nm" / "raw.tif")
    vnc = load(data / "vnc_sstem" / "raw.tif")
    return {
        "train": [epfl[0:2], flyem[0:125:4], vnc[0:10]],
        "held_out": [epfl[2:4], flyem[125::4], vnc[10:20]],
    }


def tile_table(volumes: list[np.ndarray], sr_method: str) -> tuple[np.ndarray, np.ndarray]:
    features, errors = [], []
    for truth in volumes:
        for scale in SCALES:
            low = reimage.area_downsample(truth, scale)
            sr, bicubic = reimage.super_resolve(low, scale, sr_method)
            ref = truth[:, : sr.shape[1], : sr.shape[2]]
            for tile in TILES:
                boxes = reimage.tile_boxes(sr.shape[1], sr.shape[2], tile)
                for z in range(low.shape[0]):
                    features.append(reimage.tile_features(low[z], sr[z], bicubic[z], scale, boxes))
                    errors.append([reimage._rms(ref[z, y0:y1, x0:x1], sr[z, y0:y1, x0:x1])
                                   for y0, y1, x0, x1 in boxes])  # fmt: skip
    return np.concatenate(features), np.concatenate([np.asarray(e) for e in errors])


def top_share(predicted: np.ndarray, actual: np.ndarray, fraction: float = 0.1) -> float:
    count = int(fraction * len(actual))
    top = np.argsort(-predicted)[:count]
    return float((actual[top] ** 2).sum() / (actual**2).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sr-methods", default="bicubic")
    parser.add_argument("--out", type=Path, default=reimage.DEFAULT_MODEL)
    args = parser.parse_args(argv)
    data = splits(args.data)
    models, checks = [], {}
    for method in args.sr_methods.split(","):
        x, y = tile_table(data["train"], method)
        model = reimage.fit_error_model(x, y, method)
        hx, hy = tile_table(data["held_out"], method)
        predicted = model.predict_rms(hx)
        checks[method] = {
            "train_tiles": len(y),
            "held_out_tiles": len(hy),
            "spearman": round(float(spearmanr(predicted, hy).statistic), 3),
            "top10_share_of_squared_error": round(top_share(predicted, hy), 3),
            "oracle_top10_share": round(top_share(hy, hy), 3),
        }
        print(method, json.dumps(checks[method]))
        models.append(model)
    reimage.save_error_models(models, args.out, {
        "script": "scripts/train_reimage.py", "scales": list(SCALES), "tiles": list(TILES),
        "held_out_checks": checks,
    })  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
