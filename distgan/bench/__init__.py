"""`distgan bench {data,train}`: benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "data": ("distgan.bench.data_bench", "loader images/s against in-memory slicing"),
    "train": ("distgan.bench.train_bench", "trainer steps/s against a plain PyTorch loop"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per benchmark."""
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_bench_module=module)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark."""
    return int(importlib.import_module(args._bench_module).run(args) or 0)
