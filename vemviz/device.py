"""Where the learned models run: ``--device auto|cpu|cuda``.

``auto`` takes the CUDA GPU when torch sees one and the CPU otherwise, so every learned stage
works on a CPU-only machine and uses a GPU without being told. Asking for ``cuda`` where there is
none is an error rather than a silent fallback.
"""

from __future__ import annotations

import torch

from vemviz.errors import VemvizError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` (one of `DEVICES`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VemvizError("--device cuda was requested but no CUDA GPU is available")
    if name not in DEVICES:
        raise VemvizError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)
