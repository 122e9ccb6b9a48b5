"""`distgan eval`: score a checkpoint's EMA generator or a samples file against the real test split.

Works for any image shape and number of classes the classifier file was trained for. Prints a table of
FID, KID, classifier Inception Score (MNIST score), precision/recall and class coverage beside the reference
scores of real data (train vs test) saved in the classifier file; `--json` writes the scores. A
class-conditional generator (or a samples file with `labels`) also gets label accuracy and intra-class FID. Also runs
under `accelerate launch`: every rank generates and featurizes its share, the main process reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distgan.atomic import write_json_atomic
from distgan.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory, or a run directory (its latest)")
    src.add_argument("--samples", help=".npz with key `images`: uint8 N x H x W (grayscale) or N x H x W x 3 "
                     "(colour; N x C x H x W also read), of the classifier's input shape; and optionally "
                     "`labels` (N integers, the class each image was generated for, as `distgan sample` writes "
                     "for a conditional generator) for label accuracy and intra-class FID")
    parser.add_argument("--n", type=int, default=10000, help="number of samples (default 10000; with "
                        "--samples, the first n of the file)")
    parser.add_argument("--json", default=None, help="also write the scores to this JSON file")
    parser.add_argument("--shards", default=None, help="`distgan prepare` output; the real reference is "
                        "DIR/test, the classifier DIR/classifier.pt")
    parser.add_argument("--classifier", default=None, help="classifier file (default DIR/classifier.pt); "
                        "without --shards, the test features cached in it are the reference")
    parser.add_argument("--seed", type=int, default=0, help="noise seed for --checkpoint, and metric seed")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 500, "
                        "50 with --features inception)")
    parser.add_argument("--features", choices=("classifier", "inception"), default="classifier",
                        help="classifier (default): the dataset's feature classifier, every score; inception: "
                             "the standard Inception-v3 FID features (needs `pip install \"distgan[inception]\"`; "
                             "FID, KID, precision/recall; slow on a CPU)")


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from distgan.collectives import needs_cpu_flag
    from distgan.data.remote import open_dataset
    from distgan.evaluation.report import format_table, score

    accelerator = Accelerator(cpu=needs_cpu_flag())
    shards = open_dataset(args.shards) if args.shards else None  # a URL is fetched into its cache
    if args.features == "inception":
        return _run_inception(accelerator, args, shards)
    result = score(accelerator, checkpoint=args.checkpoint, samples=args.samples, n=args.n, shards=shards,
                   classifier=args.classifier, seed=args.seed, batch_size=args.batch_size or 500)
    if not accelerator.is_main_process:
        return 0
    reference = result["reference"]
    print(f"scored {result['source']} on {result['num_processes']} process(es)")
    print(format_table(result, reference, result["classifier_input_shape"]))
    if reference and int(reference["n"]) != int(result["n"]):
        print(f"note: FID and KID depend on the sample count; the reference used n={int(reference['n'])}")
    shape = "x".join(map(str, result["classifier_input_shape"]))
    print(f"real data: {result['real']}; classifier {result['classifier']} ({shape}, {result['num_classes']} "
          f"classes) sha256 {result['classifier_sha256']}")
    if args.json:
        keep = ("source", "real", "num_processes", "classifier")
        out = {k: v for k, v in result.items() if k not in keep}
        out["source"] = str(args.samples or args.checkpoint)
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")
    return 0


def _run_inception(accelerator: Any, args: argparse.Namespace, shards: Path | None) -> int:
    """`distgan eval --features inception`: Inception-v3 FID/KID/precision/recall against DIR/test."""
    from distgan.evaluation.report import score_inception

    if shards is None:
        raise UserError("--features inception needs --shards DIR (the real test images)")
    result = score_inception(accelerator, shards=shards, checkpoint=args.checkpoint, samples=args.samples,
                             n=args.n, seed=args.seed, batch_size=args.batch_size or 50)
    if accelerator.is_main_process:
        print(f"scored {result['source']} against {result['n_real']} images of {result['real']} on "
              f"Inception-v3 pool3 features (weights sha256 {result['inception_sha256']})")
        print(f"FID {result['fid']:.3f}   KID {result['kid']:.5f} ± {result['kid_std']:.5f}   "
              f"precision {result['precision']:.3f}   recall {result['recall']:.3f}")
        if args.json:
            write_json_atomic(args.json, {**result, "source": str(args.samples or args.checkpoint)})
            print(f"wrote {args.json}")
    return 0
