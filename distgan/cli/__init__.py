"""The `distgan` command line: one sub-command per job, each implemented in its own module.

Each module named in COMMANDS exposes `add_arguments(parser)` and `run(args) -> int`. Modules are
imported only when their command runs, so `distgan --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from distgan.errors import UserError

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("distgan.cli.prepare", "read or download a dataset (MNIST, Fashion-MNIST, IDX files, an image folder, "
                                       "an .npz) and write webdataset shards"),
    "train": ("distgan.cli.train", "train a GAN (also under `accelerate launch`)"),
    "sample": ("distgan.cli.sample", "write images from a checkpoint's EMA generator"),
    "train-classifier": ("distgan.cli.train_classifier",
                         "train the feature classifier that scores a prepared dataset's samples (FID, IS, ...)"),
    "eval": ("distgan.cli.eval", "score a checkpoint or a samples file (FID, KID, IS, ...)"),
    "bench": ("distgan.cli.bench", "benchmarks: `bench data`, `bench train`, `bench quality`, `bench profile`"),
    "plot": ("distgan.cli.plot", "plot runs' losses, D outputs, images/s and eval scores from metrics.jsonl"),
    "export": ("distgan.cli.export", "export a checkpoint's EMA generator as a folder (safetensors, ONNX, model card)"),
    "sweep": ("distgan.cli.sweep", "sweeps: `sweep overrides` for one trial, `sweep list`, `sweep summary`"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the module of the chosen command is imported."""
    parser = argparse.ArgumentParser(prog="distgan", description="Distributed GAN training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn a UserError into one line on stderr (exit 2)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as e:
        print(f"distgan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
