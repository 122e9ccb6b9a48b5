"""`distgan sweep`: server-free sweeps (distgan.sweep) for SLURM array jobs (launch/slurm/sweep.sbatch).

    distgan sweep list SWEEP.yaml                 # every trial: index, run directory, overrides
    distgan sweep overrides SWEEP.yaml --index I  # trial I's overrides for train.sbatch, one per line
    distgan sweep summary runs/<sweep name>       # one row per trial, best FID first; also writes a CSV
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT_HELP = "run root (default: $DISTGAN_RUN_ROOT, else runs); trials go to ROOT/<sweep name>/<index>-<values>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sweep_command", metavar="{list,overrides,summary}", required=True)
    p = sub.add_parser("list", help="list the trials of a sweep file")
    p.add_argument("sweep", help="sweep file (see configs/sweeps/)")
    p.add_argument("--root", default=None, help=ROOT_HELP)
    p = sub.add_parser("overrides", help="print trial I's overrides (with its run.dir), one per line")
    p.add_argument("sweep", help="sweep file (see configs/sweeps/)")
    p.add_argument("--index", type=int, required=True, help="trial index ($SLURM_ARRAY_TASK_ID)")
    p.add_argument("--root", default=None, help=ROOT_HELP)
    p.add_argument("--with-config", action="store_true",
                   help="print the base config's path first (train.sbatch's first argument)")
    p = sub.add_parser("summary", help="one row per trial: overrides, steps, status, best FID and scores")
    p.add_argument("root", help="the sweep's run root, ROOT/<sweep name>")
    p.add_argument("--csv", default=None, help="CSV path (default: <root>/summary.csv)")


def run(args: argparse.Namespace) -> int:
    from distgan import sweep as sw

    if args.sweep_command == "summary":
        rows = sw.summarize(args.root)
        print(sw.format_summary(rows))
        out = Path(args.csv) if args.csv else Path(args.root) / sw.SUMMARY_CSV
        sw.write_summary_csv(rows, out)
        print(f"wrote {out}")
        return 0
    spec = sw.load_sweep(args.sweep)
    root = args.root or sw.default_root()
    if args.sweep_command == "list":
        for warning in spec.check_trials(root):  # an invalid trial: one line, and no sbatch line
            print(f"distgan sweep list: warning: {warning}", file=sys.stderr)
        print(f"sweep {spec.name}: {len(spec.trials)} trial(s) of {spec.base}; "
              f"submit with: sbatch --array=0-{len(spec.trials) - 1} launch/slurm/sweep.sbatch {spec.path}")
        for i in range(len(spec.trials)):
            print(f"{i}\t{spec.trial_dir(i, root)}\t{' '.join(spec.trial_overrides(i))}")
        return 0
    lines = spec.train_args(args.index, root)
    sw.write_manifest(spec, root)
    if args.with_config:
        lines = [str(spec.base), *lines]
    print("\n".join(lines))
    return 0
