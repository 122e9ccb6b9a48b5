"""`distgan plot`: training curves of one or more runs from their metrics.jsonl, into one image."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories (each with metrics.jsonl); several are overlaid")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="image to write (PNG; .svg and .pdf work too)")
    parser.add_argument("--title", default=None, help="a title above the panels")
    parser.add_argument("--dpi", type=int, default=100, choices=range(30, 601), metavar="30..600",
                        help="resolution (default 100)")


def run(args: argparse.Namespace) -> int:
    from distgan.plotting import plot_runs

    out = plot_runs(args.run_dirs, args.out, title=args.title, dpi=args.dpi)
    print(f"wrote {out}")
    return 0
