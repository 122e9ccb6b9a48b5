"""`distgan train-classifier`: train the feature classifier for a prepared dataset (any image shape, K
classes; the network is sized to the shape) and save it with its reference scores
(distgan.evaluation.classifier.make_classifier_file)."""

from __future__ import annotations

import argparse

from distgan.data.remote import open_dataset
from distgan.evaluation.classifier import MNIST_SHAPE, make_classifier_file
from distgan.evaluation.report import is_label

MIN_ACCURACY = 0.98  # MNIST (1, 28, 28); other datasets: warn below MIN_ACCURACY_OTHER
MIN_ACCURACY_OTHER = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="`distgan prepare` output (with DIR/train, DIR/test)")
    parser.add_argument("--out", default=None, help="output file (default: DIR/classifier.pt)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=None, metavar="N",
                        help="train on the first N training images only (a quick classifier for checks)")


def run(args: argparse.Namespace) -> int:
    r = make_classifier_file(open_dataset(args.shards), out=args.out, epochs=args.epochs, seed=args.seed,
                             batch_size=args.batch_size, max_train=args.max_train,
                             log=lambda s: print(s, flush=True))
    ref = r["reference"]
    names = r["class_names"] or []
    names = f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else ""
    print(f"test accuracy {r['accuracy']:.2%} on {r['test_size']} images of shape {r['input_shape']}, "
          f"{r['num_classes']} classes{names}; trained in {r['seconds']:.0f} s")
    floor = MIN_ACCURACY if tuple(r["input_shape"]) == MNIST_SHAPE else MIN_ACCURACY_OTHER
    if r["accuracy"] < floor:
        print(f"warning: accuracy below {floor:.0%}; train longer (--epochs) before trusting scores")
    print(f"reference, real train vs test (n={ref['n']}): FID {ref['fid']:.3f}, KID {ref['kid']:.5f}, "
          f"{is_label(r['input_shape'])} {ref['is']:.3f} (test split: {r['reference_test_is']:.3f}), "
          f"precision {ref['precision']:.3f}, recall {ref['recall']:.3f}, "
          f"classes {ref['classes']}, class KL {ref['class_kl']:.4f}")
    print(f"classifier sha256 {r['sha256']}")
    print(f"wrote {r['path']}")
    return 0
