"""Train the diffusion inpainting model shipped in vemviz/weights/inpaint_diffusion.

The shipped weights come from two runs, the second starting from the first's result::

    OMP_NUM_THREADS=2 python scripts/train_inpaint.py --config scripts/train_inpaint.json \
        --threads 2 --out out/train_inpaint
    OMP_NUM_THREADS=2 python scripts/train_inpaint.py --config scripts/train_inpaint_1step.json \
        --threads 2 --out out/train_inpaint_1step --install

The first trains from scratch at uniformly random noise levels. The second (``init``: the first
run's final model) draws half of its noise levels from the top of the schedule
(``high_noise_fraction``, `vemviz.diffusion.HIGH_NOISE_BAND`): the default 1-step sampler only
ever runs the model there, as a regressor of the damaged pixels from pure noise and the
conditioning, and uniform noise levels spend about 1 step in 20 on that.

Reads the real volumes of ``../shared/data`` named in the config (FlyEM only below
``z_stop`` = 125: the benchmark scores slices 125 and up, which training never sees), builds
slice triplets with flow-warped neighbours (`vemviz.diffusion.make_triplets`) and trains
`vemviz.diffusion.build_model` on random damaged patches with AdamW, a cosine learning-rate
decay over the step count or the time budget (whichever ends first) and an exponential moving
average (EMA) of the weights. Every ``checkpoint_every`` steps the EMA model is saved to
``OUT/latest`` and the losses to ``OUT/log.jsonl``; ``--install`` copies the final EMA model to
the package.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vemviz import diffusion  # noqa: E402
from vemviz.device import resolve_device  # noqa: E402
from vemviz.io import read_volume  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def load_sources(config: dict, data: Path) -> tuple[list[diffusion.Triplets], list[float]]:
    sources, weights = [], []
    for spec in config["sources"]:
        stack = read_volume(data / spec["path"]).numpy()
        stack = stack[spec.get("z_start", 0) : spec.get("z_stop", stack.shape[0])]
        normalised = diffusion.normalise(stack, diffusion.intensity_range(stack))
        sources.append(diffusion.make_triplets(normalised, gaps=spec["gaps"]))
        weights.append(float(spec["weight"]))
        print(f"{spec['path']}: {len(sources[-1])} triplets", flush=True)
    return sources, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "scripts" / "train_inpaint.json")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "train_inpaint")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--install", action="store_true", help="copy the result into vemviz/")
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    torch.set_num_threads(args.threads)
    torch.manual_seed(config["seed"])
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)

    sources, weights = load_sources(config, args.data)
    init = config.get("init")
    model = (diffusion.load_model(ROOT / init) if init else diffusion.build_model()).to(device)
    ema = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"])
    start = time.monotonic()
    log = (args.out / "log.jsonl").open("a")
    step, losses = 0, []
    while step < config["steps"]:
        elapsed = time.monotonic() - start
        progress = max(step / config["steps"], elapsed / config["time_budget_s"])
        if progress >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = config["learning_rate"] * 0.5 * (1 + math.cos(math.pi * progress))
        losses += diffusion.train_steps(
            model, optimizer, sources, weights, 1,
            batch=config["batch"], size=config["size"], seed=config["seed"] * 100003 + step,
            high_noise=config.get("high_noise_fraction", 0.0), description="train",
        )  # fmt: skip
        step += 1
        decay = min(config["ema_decay"], (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        if step % config["checkpoint_every"] == 0 or step == config["steps"]:
            record = {
                "step": step,
                "seconds": round(time.monotonic() - start, 1),
                "loss": float(np.mean(losses)),
                "lr": optimizer.param_groups[0]["lr"],
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(record, flush=True)
            losses = []
            diffusion.save_model(ema, args.out / "latest", {"config": config, **record})
    info = {"config": config, "steps": step, "seconds": round(time.monotonic() - start, 1)}
    diffusion.save_model(ema, args.out / "final", info)
    if args.install:
        diffusion.save_model(ema, diffusion.WEIGHTS, info)
        print(f"installed {diffusion.WEIGHTS}")


if __name__ == "__main__":
    main()
