"""`distgan eval`: score a checkpoint's EMA generator or a samples file against the real test split.

Prints a table of FID, KID, MNIST score, precision/recall and class coverage beside the reference
scores of real data (train vs test) saved in the classifier file; `--json` writes the scores. Also runs
under `accelerate launch`: every rank generates and featurizes its share, the main process reports.
"""

from __future__ import annotations

import argparse
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distgan.atomic import write_json_atomic
from distgan.errors import UserError

FORMAT_HINT = "save uint8 images N x 28 x 28 with numpy.savez(FILE, images=images)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory, or a run directory (its latest)")
    src.add_argument("--samples", help=".npz with key `images`: uint8 N x 28 x 28 (any generator's output)")
    parser.add_argument("--n", type=int, default=10000, help="number of samples (default 10000; with "
                        "--samples, the first n of the file)")
    parser.add_argument("--json", default=None, help="also write the scores to this JSON file")
    parser.add_argument("--shards", default=None, help="`distgan prepare` output; the real reference is "
                        "DIR/test, the classifier DIR/classifier.pt")
    parser.add_argument("--classifier", default=None, help="classifier file (default DIR/classifier.pt); "
                        "without --shards, the test features cached in it are the reference")
    parser.add_argument("--seed", type=int, default=0, help="noise seed for --checkpoint, and metric seed")
    parser.add_argument("--batch-size", type=int, default=500)


def load_samples(path: str | Path, n: int | None = None) -> np.ndarray:
    """uint8 images (N, 28, 28) from an .npz with key `images` (the first n); UserError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"samples file {path} not found; {FORMAT_HINT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise UserError(f"{path} has no array 'images' (it has: {', '.join(npz.files) or 'nothing'}); "
                                f"{FORMAT_HINT}")
            images = npz["images"]
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"cannot read {path} as .npz ({type(e).__name__}); {FORMAT_HINT}") from None
    if images.dtype != np.uint8:
        raise UserError(f"{path}: 'images' has dtype {images.dtype}, expected uint8 (0..255); convert with "
                        f"((x.clip(-1, 1) + 1) * 127.5).round().astype(numpy.uint8)")
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UserError(f"{path}: 'images' has shape {images.shape}, expected N x 28 x 28; {FORMAT_HINT}")
    if n is not None:
        images = images[:n]
    if len(images) < 2:
        raise UserError(f"{path}: {len(images)} image(s); scoring needs at least 2")
    return images


def resolve_paths(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(classifier file, real test split or None for the one cached in the classifier file)."""
    shards = Path(args.shards) if args.shards else None
    if args.classifier:
        classifier = Path(args.classifier)
    elif shards is not None:
        classifier = shards / "classifier.pt"
    else:
        raise UserError("no classifier: pass --shards DIR (the `distgan prepare` output holding "
                        "DIR/classifier.pt) or --classifier PATH")
    if not classifier.is_file():
        raise UserError(f"classifier file {classifier} not found; make it with "
                        f"`distgan train-classifier --shards DIR` or pass --classifier PATH")
    test_split = None
    if shards is not None:
        test_split = shards / "test"
        if not test_split.is_dir():
            raise UserError(f"{test_split} not found; --shards must be the output of `distgan prepare`")
    return classifier, test_split


ROWS: list[tuple[str, str, str, str]] = [
    # (label, key, std key, format)
    ("FID", "fid", "", ".3f"),
    ("KID", "kid", "kid_std", ".5f"),
    ("MNIST score", "is", "is_std", ".3f"),
    ("precision (k=3)", "precision", "", ".3f"),
    ("recall (k=3)", "recall", "", ".3f"),
    ("classes", "classes", "", "d"),
    ("class KL", "class_kl", "", ".4f"),
]


def _cell(scores: dict[str, Any], key: str, std: str, fmt: str) -> str:
    if key not in scores:
        return "-"
    v = scores[key]
    if fmt == "d":
        return str(int(v))
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    text = format(v, fmt)
    return f"{text} ± {format(scores[std], fmt)}" if std and std in scores else text


def format_table(scores: dict[str, Any], reference: dict[str, Any]) -> str:
    """The scores beside the reference (real train vs test) values."""
    ref_head = f"real train vs test (n={int(reference['n'])})" if reference else "real train vs test"
    lines = [f"{'metric':<16} {'score':>22}   {ref_head}"]
    for label, key, std, fmt in ROWS:
        lines.append(f"{label:<16} {_cell(scores, key, std, fmt):>22}   {_cell(reference, key, std, fmt)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from distgan.accel import needs_cpu_flag
    from distgan.evaluation.evaluate import evaluate_generator, evaluate_images, load_classifier

    if args.n < 2:
        raise UserError(f"--n must be at least 2, got {args.n}")
    classifier, test_split = resolve_paths(args)
    images = load_samples(args.samples, args.n) if args.samples else None
    clf = load_classifier(classifier)
    accelerator = Accelerator(cpu=needs_cpu_flag())
    common = dict(classifier_path=classifier, test_split=test_split, seed=args.seed, batch_size=args.batch_size)
    if images is not None:
        source = f"{len(images)} images from {args.samples}"
        scores = evaluate_images(accelerator, images, **common)
    else:
        from distgan.sample import load_generator

        generator, _ = load_generator(args.checkpoint, accelerator.device)
        source = f"{args.n} samples (seed {args.seed}) from {args.checkpoint}"
        scores = evaluate_generator(accelerator, generator, n=args.n, **common)
    if not accelerator.is_main_process:
        return 0
    reference = clf.reference
    real = f"{test_split}" if test_split is not None else f"test features cached in {classifier}"
    print(f"scored {source} on {accelerator.num_processes} process(es)")
    print(format_table(scores, reference))
    if reference and int(reference["n"]) != int(scores["n"]):
        print(f"note: FID and KID depend on the sample count; the reference used n={int(reference['n'])}")
    print(f"real data: {real}; classifier {classifier} sha256 {clf.sha256}")
    if args.json:
        out = {**scores, "classifier_sha256": clf.sha256, "reference": reference,
               "source": str(args.samples or args.checkpoint)}
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")
    return 0
