"""Train the segmentation models shipped in vemviz/weights/ from ../shared/data.

    python scripts/train_seg.py mito  --minutes 45
    python scripts/train_seg.py cells --minutes 40

The data each model sees is fixed here (TRAINING) and never includes what the benchmark
(`scripts/benchmark.py segment`) measures on: mitochondria train on the VNC volume and EPFL
slices 0-1 (EPFL 2-3 are held out); cells train on FlyEM z < 125 (z >= 125 held out) and on
VNC slices 0-9 (10-19 held out; cells = the connected regions inside the membranes of each
slice). The cells model was first trained on FlyEM alone; the VNC phase continued it:

    python scripts/train_seg.py cells --minutes 25 --threads 2 --lr 1e-3 \
        --init vemviz/weights/cells.pt The
weights go to vemviz/weights/TARGET.pt, the configuration and loss record to TARGET.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    VNC_CELL_TRAIN_SLICES,
    VNC_MEMBRANE_MAX_CODE,
    load_tiff,
    vnc_cells,
)

from vemviz.device import resolve_device  # noqa: E402
from vemviz.io.atomic import write_json  # noqa: E402
from vemviz.train import TrainOptions, prepare_volume, train, write_log_line  # noqa: E402
from vemviz.unet import WEIGHTS_DIR, ModelConfig, UNet, load_model  # noqa: E402

FLYEM_SPLIT_Z = 125
EPFL_TRAIN_SLICES = 2

TRAINING = {
    "mito": {
        "model": {"target": "mito", "pixel_nm": 8.0, "context": 1, "base": 16, "levels": 4},
        "options": {"batch": 8, "patch": 160, "lr": 2e-3},
        "data": [
            "vnc_sstem raw.tif + mito_mask.tif (all 20 slices), weight 1",
            f"epfl_slices raw.tif + mito_mask.tif slices 0-{EPFL_TRAIN_SLICES - 1}, weight 1",
        ],
    },
    "cells": {
        "model": {"target": "cells", "pixel_nm": 10.0, "context": 3, "base": 16, "levels": 4},
        "options": {"batch": 8, "patch": 128, "lr": 2e-3},
        "data": [
            f"flyem_medulla_10nm raw.tif + neuron_labels.tif z < {FLYEM_SPLIT_Z}, weight 1",
            f"vnc_sstem raw.tif + labels.tif slices 0-{VNC_CELL_TRAIN_SLICES - 1} (regions "
            f"above code {VNC_MEMBRANE_MAX_CODE}, per slice), weight 1",
        ],
    },
}


def training_volumes(target: str, data: Path, config: ModelConfig):
    if target == "mito":
        vnc, vnc_voxel = load_tiff(data / "vnc_sstem" / "raw.tif")
        vnc_mask, _ = load_tiff(data / "vnc_sstem" / "mito_mask.tif")
        epfl, epfl_voxel = load_tiff(data / "epfl_slices" / "raw.tif")
        epfl_mask, _ = load_tiff(data / "epfl_slices" / "mito_mask.tif")
        keep = slice(0, EPFL_TRAIN_SLICES)
        return [prepare_volume(vnc, vnc_mask, vnc_voxel, config),
                prepare_volume(epfl[keep], epfl_mask[keep], epfl_voxel, config)]  # fmt: skip
    raw, voxel = load_tiff(data / "flyem_medulla_10nm" / "raw.tif")
    labels, _ = load_tiff(data / "flyem_medulla_10nm" / "neuron_labels.tif")
    keep = slice(0, FLYEM_SPLIT_Z)
    vnc, vnc_voxel = load_tiff(data / "vnc_sstem" / "raw.tif")
    codes, _ = load_tiff(data / "vnc_sstem" / "labels.tif")
    vnc_keep = slice(0, VNC_CELL_TRAIN_SLICES)
    vnc_labels = vnc_cells(codes[vnc_keep])
    return [prepare_volume(raw[keep], labels[keep], voxel, config),
            prepare_volume(vnc[vnc_keep], vnc_labels, vnc_voxel, config)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(TRAINING))
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, help="model file (default vemviz/weights/TARGET.pt)")
    parser.add_argument("--log", type=Path, help="append JSON loss lines here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="continue from this model file")
    parser.add_argument("--lr", type=float, help="learning rate (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = TRAINING[args.target]
    config = ModelConfig(**spec["model"])
    out = args.out or WEIGHTS_DIR / f"{args.target}.pt"
    volumes = training_volumes(args.target, args.data, config)
    options = TrainOptions(seconds=60 * args.minutes, seed=args.seed, **spec["options"])
    if args.lr:
        options.lr = args.lr
    torch.manual_seed(args.seed)
    model = load_model(args.init) if args.init else UNet(config)
    if model.config != config:
        raise SystemExit(f"{args.init} does not match the {args.target} configuration")
    phases = []
    if args.init:
        previous = model.training_info
        phases = [
            *previous.get("phases", []),
            {k: previous[k] for k in ("steps", "seconds", "options")},
        ]
    record = train(model, volumes, options, out=out, device=resolve_device(args.device),
                   info={"data": spec["data"], "script": "scripts/train_seg.py", "phases": phases},
                   log=write_log_line(args.log) if args.log else None)  # fmt: skip
    summary = {"config": spec, "earlier_phases": phases, "steps": record["steps"],
               "seconds": record["seconds"], "lr": options.lr,
               "losses": record["losses"][-10:]}  # fmt: skip
    write_json(out.with_suffix(".json"), summary)
    print(json.dumps({k: summary[k] for k in ("steps", "seconds")}))


if __name__ == "__main__":
    main()
