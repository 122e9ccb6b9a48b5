"""`distgan bench {data,train,quality,profile}`: speed benchmarks that print ratios against a baseline measured in
the same run (distgan.bench.data, distgan.bench.train), and the sample-quality benchmark
(distgan.bench.quality), and a per-part time profile of a config (distgan.bench.profile)."""

from __future__ import annotations

import argparse
from pathlib import Path

from distgan.data.remote import is_url, local_split, open_dataset
from distgan.errors import UserError


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers such as 0,2") from None


def _is_split_url(shards: str) -> bool:
    """A URL that names a split (http://host/mnist/train) rather than a prepare output."""
    return is_url(shards) and shards.rstrip("/").rpartition("/")[2] in ("train", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-parser per benchmark."""
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    p = sub.add_parser("data", help="loader images/s against in-memory slicing")
    p.add_argument("--shards", required=True,
                   help="`distgan prepare` output dir (uses --split) or a split dir such as DIR/train")
    p.add_argument("--split", default="train", help="split to read when --shards is the prepare output")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", default="0,2", help="comma-separated loader worker counts (default 0,2)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="minimum time per measurement")
    p.add_argument("--no-encodings", action="store_true",
                   help="skip the per-encoding decode table and the one-sample-per-image baseline")
    p = sub.add_parser("train", help="trainer steps/s against a plain PyTorch loop")
    p.add_argument("--shards", default="data/mnist", help="output of `distgan prepare` (default data/mnist)")
    p.add_argument("--batch-sizes", default="64,256", help="comma-separated per-process batch sizes")
    p.add_argument("--steps", type=int, default=300, help="G steps per measurement")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best of each is kept")
    p.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no",
                   help="mixed_precision of both loops (the plain one autocasts as the trainer does)")
    p = sub.add_parser("quality", help="train a config as a user would, then score it (FID, classifier score, "
                                       "precision/recall, ...)")
    p.add_argument("--config", required=True, help="training config, e.g. configs/mnist_cgan.yaml")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-time cap per run (default 30): SIGTERM, "
                   "then the trainer saves and stops")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one run each (default 0)")
    p.add_argument("--n", type=int, default=10000, help="samples scored per checkpoint (default 10000)")
    p.add_argument("--out", default="runs/bench_quality", help="where the runs and quality.json go")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, as for `distgan train`")
    p = sub.add_parser("profile", help="where one training step's time goes (data, D, G, EMA, eval, checkpoint)")
    p.add_argument("--config", required=True, help="training config, e.g. configs/mnist_cgan.yaml")
    p.add_argument("--steps", type=int, default=200, help="iterations timed after a warm-up (default 200)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, as for `distgan train`")


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark."""
    if args.bench == "data":
        from distgan.bench.data import bench_data

        shards = local_split(args.shards) if _is_split_url(args.shards) else open_dataset(args.shards)
        bench_data(shards, split=args.split, batch_size=args.batch_size,
                   workers=_ints(args.workers, "--workers"), min_seconds=args.min_seconds,
                   encodings=not args.no_encodings)
    elif args.bench == "profile":
        from distgan.bench.profile import profile_config

        if args.steps < 1:
            raise UserError(f"--steps must be positive, got {args.steps}")
        profile_config(Path(args.config), steps=args.steps, overrides=args.overrides)
    elif args.bench == "quality":
        from distgan.bench.quality import bench_quality

        if args.minutes <= 0:
            raise UserError(f"--minutes must be positive, got {args.minutes}")
        bench_quality(Path(args.config), seeds=_ints(args.seeds, "--seeds"), minutes=args.minutes, n=args.n,
                      out=Path(args.out), overrides=args.overrides)
    else:
        from distgan.bench.train import bench_train

        bench_train(open_dataset(args.shards), batch_sizes=_ints(args.batch_sizes, "--batch-sizes"), steps=args.steps,
                    repeats=args.repeats, precision=args.precision)
    return 0
