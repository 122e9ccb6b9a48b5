"""`distgan train --config FILE [key.sub=value ...] [--print-config]`, in one process or under `accelerate launch`."""

from __future__ import annotations

import argparse
import logging
import os

from distgan.config import dump_config, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override any config key, e.g. train.steps=2000 run.dir=runs/x")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file + overrides + defaults) as YAML and exit")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:  # before any trainer import or file access beyond the config file
        print(dump_config(cfg), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file save messages drown ours
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager" on a first evaluation
    from distgan.training.trainer import train  # heavy imports only once the config is valid

    result = train(cfg)
    if result.status == "finished" and os.environ.get("RANK", "0") == "0":  # once, from the main process
        rate = result.steps_run / result.step_seconds if result.step_seconds else 0.0
        print(f"finished at step {result.step} ({result.steps_run} steps here, {rate:.1f} steps/s, "
              f"{rate * cfg.train.batch_size * cfg.train.d_steps:.0f} images/s per process); "
              f"run directory: {result.run_dir}")
    return 0
