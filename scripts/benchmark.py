"""Benchmarks of vemviz against the baselines, on the real volumes in ``../shared/data``.

Usage::

    python scripts/benchmark.py NAME [options] [--json OUT.json] [--data DIR]

``NAME`` is one of the modules in ``scripts/benchmarks/`` (``iso``, ``sr``, ``restore``,
``segment``, ``stitch``, ``align``, ``mesh``, ``scale``, ...). Each prints a table with the
baselines measured in the same run and writes the rows as JSON (default
``benchmarks-out/NAME.json``). Benchmarks are scripts, not timed tests: run them on an otherwise
idle machine when the numbers go into README.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.common import DEFAULT_DATA, available, finish  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        p = sub.add_parser(name, help=module.__doc__.strip().split("\n")[0])
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
        p.add_argument("--json", type=Path, help="where to write the rows (JSON)")
        module.add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(f"benchmarks.{args.name}")
    result = module.run(args)
    finish(args.name, result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
