"""`distgan prepare`: a dataset -> webdataset shards + manifest.json (distgan.data.prepare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from distgan.data.prepare import DEFAULT_SHARD_SIZE, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `distgan prepare`."""
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory (shards + manifest.json); locked while prepare runs, and "
                             "refused if it holds another tool's dataset")
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help="read the four MNIST IDX files (gzipped or not) from here; no download")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"images per shard (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--mirror", action="append", default=None, metavar="URL",
                        help="download mirror (repeatable, tried in order); default: $DISTGAN_MNIST_MIRRORS "
                             "(comma separated) or the known public mirrors")


def run(args: argparse.Namespace) -> int:
    """Run `distgan prepare`."""
    prepare(args.out, raw_dir=args.raw_dir, mirrors=args.mirror, shard_size=args.shard_size, progress=True,
            log=lambda s: print(s, flush=True))
    return 0
