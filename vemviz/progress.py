"""Progress reporting for long work.

`track(iterable, description)` wraps a loop. On a terminal it draws a rich progress bar on
stderr; with ``VEMVIZ_PROGRESS=json`` it writes one JSON object per update on stderr
(``{"event": "progress", "task": ..., "completed": ..., "total": ...}``) so that programs
driving the CLI as a subprocess (the Blender add-on) can show progress without parsing a
terminal; with ``VEMVIZ_PROGRESS=off`` it is silent. Nested calls share one bar display.

Cancellation is cooperative: Ctrl-C (SIGINT) and SIGTERM raise `Cancelled` inside the loop
that is running, so the stage stops between two steps and the atomic writers discard the
unfinished output.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

_console = Console(stderr=True)
_active: Progress | None = None


def _mode() -> str:
    return os.environ.get("VEMVIZ_PROGRESS", "rich").lower()


def _emit_json(task: str, completed: int, total: int | None) -> None:
    record = {"event": "progress", "task": task, "completed": completed, "total": total}
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()


@contextmanager
def _bar() -> Iterator[Progress]:
    global _active
    if _active is not None:
        yield _active
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=False,
        disable=not _console.is_terminal,
    )
    _active = progress
    try:
        with progress:
            yield progress
    finally:
        _active = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` while showing progress under ``description``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    mode = _mode()
    if mode == "off":
        yield from items
        return
    if mode == "json":
        _emit_json(description, 0, total)
        last = time.monotonic()
        done = 0
        for done, item in enumerate(items, start=1):
            yield item
            now = time.monotonic()
            if now - last > 0.2 or done == total:
                _emit_json(description, done, total)
                last = now
        return
    with _bar() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def status(message: str) -> None:
    """Print a one-line status message (stage start, summary) on stderr."""
    mode = _mode()
    if mode == "off":
        return
    if mode == "json":
        sys.stderr.write(json.dumps({"event": "status", "message": message}) + "\n")
        sys.stderr.flush()
        return
    _console.print(message, highlight=False)
