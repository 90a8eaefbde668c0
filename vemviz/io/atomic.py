"""Atomic outputs: write to a temporary sibling, then rename over the target.

A crash, a Ctrl-C or an error half-way through a write never leaves a half-written file or
folder under the requested name: the partial output stays under a hidden temporary name and
is removed. `os.replace` is atomic for files on one file system; folders (zarr stores, mesh
folders) are swapped with two renames, so a reader sees the old or the new folder, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write a file or folder; on success move it to ``path``.

    On any exception (including KeyboardInterrupt) the temporary output is deleted and the
    previous content of ``path``, if any, is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_sibling(target)
    try:
        yield temp
    except BaseException:
        _remove(temp)
        raise
    if not temp.exists():
        raise RuntimeError(f"nothing was written to {temp} for {target}")
    if temp.is_dir():
        old = None
        if target.exists():
            old = _temp_sibling(target)
            os.replace(target, old)
        os.replace(temp, target)
        if old is not None:
            _remove(old)
    else:
        if target.is_dir():
            _remove(target)
        os.replace(temp, target)


def _json_value(value: Any) -> Any:
    """JSON form of the numpy scalars, arrays and paths that reports and records contain."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically; numpy values become plain numbers/lists."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=2, default=_json_value))
    return Path(path)
