"""`distgan train-classifier`: train the MNIST feature classifier and save it with its reference scores.

The file (default DIR/classifier.pt) holds the weights, their SHA-256, the test accuracy, the test
split's features (so evaluation need not recompute them) and the reference scores of the real train
split against the real test split.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from distgan.errors import UserError
from distgan.evaluation.classifier import accuracy, embed_images, save_classifier, train_classifier
from distgan.evaluation.evaluate import load_split_images, split_fingerprint
from distgan.evaluation.metrics import FeatureSet, compute_metrics, inception_score

MIN_ACCURACY = 0.98


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="`distgan prepare` output (with DIR/train, DIR/test)")
    parser.add_argument("--out", default=None, help="output file (default: DIR/classifier.pt)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    shards = Path(args.shards)
    for split in ("train", "test"):
        if not (shards / split).is_dir():
            raise UserError(f"{shards / split} not found; --shards must be the output of `distgan prepare` "
                            f"(with DIR/train, DIR/test and DIR/manifest.json)")
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    out = Path(args.out) if args.out else shards / "classifier.pt"

    train_x, train_y = load_split_images(shards / "train")
    test_x, test_y = load_split_images(shards / "test")
    print(f"training the classifier on {len(train_x)} digits ({args.epochs} epochs, seed {args.seed}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    t0 = time.perf_counter()
    model = train_classifier(train_x, train_y, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                             log=lambda s: print("  " + s, flush=True))
    seconds = time.perf_counter() - t0
    acc = accuracy(model, test_x, test_y)

    test = FeatureSet(*embed_images(model, test_x))
    train = FeatureSet(*embed_images(model, train_x))
    reference = compute_metrics(test, train, seed=0)
    test_is = inception_score(test.logits, seed=0)[0]
    sha = save_classifier(
        out, model,
        test_accuracy=acc, train_seconds=seconds, epochs=args.epochs, seed=args.seed,
        test_split=str((shards / "test").resolve()), test_split_fingerprint=split_fingerprint(shards / "test"),
        test_features=test.features, test_logits=test.logits, test_labels=torch.as_tensor(test_y),
        reference=reference, reference_test_is=test_is, torch_version=str(torch.__version__),
    )
    print(f"test accuracy {acc:.2%} on {len(test_x)} digits; trained in {seconds:.0f} s")
    if acc < MIN_ACCURACY:
        print(f"warning: accuracy below {MIN_ACCURACY:.0%}; train longer (--epochs) before trusting scores")
    print(f"reference, real train vs test (n={reference['n']}): FID {reference['fid']:.3f}, "
          f"KID {reference['kid']:.5f}, MNIST score {reference['is']:.3f} (test split: {test_is:.3f}), "
          f"precision {reference['precision']:.3f}, recall {reference['recall']:.3f}, "
          f"classes {reference['classes']}, class KL {reference['class_kl']:.4f}")
    print(f"classifier sha256 {sha}")
    print(f"wrote {out}")
    return 0
