"""`distgan train-classifier`: train the feature classifier and save it with its reference scores
(distgan.evaluation.classifier.make_classifier_file)."""

from __future__ import annotations

import argparse

from distgan.evaluation.classifier import make_classifier_file

MIN_ACCURACY = 0.98


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="`distgan prepare` output (with DIR/train, DIR/test)")
    parser.add_argument("--out", default=None, help="output file (default: DIR/classifier.pt)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    r = make_classifier_file(args.shards, out=args.out, epochs=args.epochs, seed=args.seed,
                             batch_size=args.batch_size, log=lambda s: print(s, flush=True))
    ref = r["reference"]
    print(f"test accuracy {r['accuracy']:.2%} on {r['test_size']} digits; trained in {r['seconds']:.0f} s")
    if r["accuracy"] < MIN_ACCURACY:
        print(f"warning: accuracy below {MIN_ACCURACY:.0%}; train longer (--epochs) before trusting scores")
    print(f"reference, real train vs test (n={ref['n']}): FID {ref['fid']:.3f}, "
          f"KID {ref['kid']:.5f}, MNIST score {ref['is']:.3f} (test split: {r['reference_test_is']:.3f}), "
          f"precision {ref['precision']:.3f}, recall {ref['recall']:.3f}, "
          f"classes {ref['classes']}, class KL {ref['class_kl']:.4f}")
    print(f"classifier sha256 {r['sha256']}")
    print(f"wrote {r['path']}")
    return 0
