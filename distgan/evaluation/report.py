"""Scoring reports: read a samples file, score a checkpoint or samples, and format the table that
`distgan eval` prints beside the reference scores of real data."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distgan.errors import UserError

FORMAT_HINT = "save uint8 images N x 28 x 28 with numpy.savez(FILE, images=images)"


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


def resolve_paths(shards: str | Path | None, classifier: str | Path | None) -> tuple[Path, Path | None]:
    """(classifier file, real test split or None for the one cached in the classifier file)."""
    shards = Path(shards) if shards else None
    if classifier:
        classifier = Path(classifier)
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


def score(accelerator: Any, *, checkpoint: str | Path | None = None, samples: str | Path | None = None,
          n: int = 10000, shards: str | Path | None = None, classifier: str | Path | None = None,
          seed: int = 0, batch_size: int = 500) -> dict[str, Any]:
    """Collective: score a checkpoint's EMA G (n samples from `seed`) or a samples file (its first n).

    Returns the scores plus `classifier_sha256`, `reference` (real train vs test), `source`, `real`
    (what the samples were compared with) and `num_processes`; the same dict on every rank.
    """
    from distgan.evaluation.evaluate import evaluate_generator, evaluate_images, load_classifier

    if n < 2:
        raise UserError(f"--n must be at least 2, got {n}")
    if (checkpoint is None) == (samples is None):
        raise UserError("score either a checkpoint or a samples file")
    classifier_path, test_split = resolve_paths(shards, classifier)
    images = load_samples(samples, n) if samples is not None else None
    clf = load_classifier(classifier_path)
    common = dict(classifier_path=classifier_path, test_split=test_split, seed=seed, batch_size=batch_size)
    if images is not None:
        source = f"{len(images)} images from {samples}"
        scores = evaluate_images(accelerator, images, **common)
    else:
        from distgan.training.sampling import load_generator

        generator, _ = load_generator(checkpoint, accelerator.device)
        source = f"{n} samples (seed {seed}) from {checkpoint}"
        scores = evaluate_generator(accelerator, generator, n=n, **common)
    real = f"{test_split}" if test_split is not None else f"test features cached in {classifier_path}"
    return {**scores, "classifier_sha256": clf.sha256, "classifier": str(classifier_path),
            "reference": clf.reference, "source": source, "real": real,
            "num_processes": accelerator.num_processes}
