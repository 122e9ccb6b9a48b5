"""Scoring reports: read a samples file, score a checkpoint or samples, and format the table that
`distgan eval` prints beside the reference scores of real data."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from distgan.atomic import write_bytes_atomic
from distgan.collectives import on_main
from distgan.data.remote import default_cache_root
from distgan.data.sources import check_npz_arrays
from distgan.data.splits import load_split_images, split_fingerprint
from distgan.errors import UserError
from distgan.evaluation.evaluate import evaluate_generator, evaluate_images, load_classifier
from distgan.evaluation.inception import WEIGHTS_SHA256, inception_features, load_inception
from distgan.evaluation.metrics import MIN_SAMPLES, fid, kid, precision_recall
from distgan.generator.loading import load_generator
from distgan.generator.sampling import class_freqs_of, eval_labels, num_classes_of, sample_images
from distgan.pixels import MNIST_SHAPE

FORMAT_HINT = ("save uint8 images N x H x W (grayscale) or N x H x W x 3 (colour) with "
               "numpy.savez(FILE, images=images)")


def _dims(shape: tuple[int, ...]) -> str:
    return " x ".join(["N", *map(str, shape)])


def samples_layout(shape: tuple[int, ...], expected: tuple[int, int, int]) -> str | None:
    """How an images array of `shape` holds images of (C, H, W) = expected: "NHW", "NCHW", "NHWC", or None
    if it does not. One channel: N x H x W or N x 1 x H x W; three: N x H x W x 3 or N x 3 x H x W."""
    c, h, w = expected
    if len(shape) == 3 and c == 1 and shape[1:] == (h, w):
        return "NHW"
    if len(shape) == 4 and shape[1:] == (c, h, w):
        return "NCHW"
    if len(shape) == 4 and c == 3 and shape[1:] == (h, w, c):
        return "NHWC"
    return None


def _read_npz(path: Path, with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """`images` of a samples file, and its `labels` (None when absent or not asked for); UserError if unreadable."""
    if not path.is_file():
        raise UserError(f"samples file {path} not found; {FORMAT_HINT}")
    try:
        check_npz_arrays(path, ("images", "labels"), "samples file ")  # before np.load allocates what headers say
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise UserError(f"{path} has no array 'images' (it has: "
                                f"{', '.join(map(repr, npz.files)) or 'nothing'}); {FORMAT_HINT}")
            images = npz["images"]
            labels = npz["labels"] if with_labels and "labels" in npz.files else None
    except UserError:
        raise
    # zlib.error: a damaged deflate stream; NotImplementedError: a compression method zipfile lacks; RuntimeError:
    # an encrypted member (as distgan.data.sources._read_npz)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise UserError(f"cannot read {path} as .npz ({type(e).__name__}); {FORMAT_HINT}") from None
    return images, labels


def load_samples(path: str | Path, n: int | None, expected: tuple[int, int, int] | None, *,
                 minimum: int = 2) -> np.ndarray:
    """The first n uint8 images of an .npz with key `images`, checked against the classifier's input shape
    `expected` = (C, H, W) (None: any size). Accepts N x H x W, N x 1 x H x W,
    N x H x W x 3 and N x 3 x H x W; returns N x H x W (one channel) or N x 3 x H x W. UserError (one
    line, naming the file's shape and the classifier's) if malformed, or with fewer than `minimum` images
    (scoring needs MIN_SAMPLES)."""
    return load_labelled_samples(path, n, expected, with_labels=False, minimum=minimum)[0]


def load_labelled_samples(path: str | Path, n: int | None, expected: tuple[int, int, int] | None, *,
                          with_labels: bool = True, minimum: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
    """load_samples, plus the first n of the file's `labels` (int64 (N,), the classes the images were
    generated for, as `distgan sample` writes for a conditional G), or None when the file has none."""
    path = Path(path)
    images, labels = _read_npz(path, with_labels)
    if images.dtype != np.uint8:
        raise UserError(f"{path}: 'images' has dtype {images.dtype}, expected uint8 (0..255); convert with "
                        f"((x.clip(-1, 1) + 1) * 127.5).round().astype(numpy.uint8)")
    shape = tuple(int(v) for v in images.shape)
    if expected is None:
        if len(shape) == 4 and shape[1] in (1, 3):
            expected = shape[1:]
        elif len(shape) == 4 and shape[3] == 3:
            expected = (3, *shape[1:3])
        elif len(shape) == 3:
            expected = (1, *shape[1:])
    layout = samples_layout(shape, tuple(expected)) if expected is not None else None
    if layout is None:
        if expected is None:
            want = "N x H x W, N x 1 x H x W, N x H x W x 3 or N x 3 x H x W"
        elif expected[0] == 1:
            want = f"{_dims(expected[1:])} or {_dims(tuple(expected))} (the classifier's input {tuple(expected)})"
        else:
            c, h, w = expected
            want = f"{_dims((h, w, c))} or {_dims((c, h, w))} (the classifier's input {tuple(expected)})"
        raise UserError(f"{path}: 'images' has shape {shape}, expected {want}; {FORMAT_HINT}")
    if labels is not None:
        labels = _checked_labels(path, labels, len(images))
    if n is not None:
        images = images[:n]
    if layout == "NHWC":
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if len(images) < minimum:
        raise UserError(f"{path}: {len(images)} image(s); scoring needs at least {minimum}")
    return images, (labels[: len(images)] if labels is not None else None)


def _checked_labels(path: Path, labels: np.ndarray, count: int) -> np.ndarray:
    """A samples file's `labels` as int64; UserError unless they are `count` integers, one per image."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != count:
        raise UserError(f"{path}: 'labels' has dtype {labels.dtype} and shape {tuple(labels.shape)}; expected "
                        f"{count} integers, the class of each image (or no 'labels' array)")
    return labels.astype(np.int64)


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


IS_LABEL = "MNIST score"  # the classifier Inception Score's name on MNIST


def is_label(input_shape: tuple[int, ...] | list[int] | None) -> str:
    """What the table calls the classifier Inception Score: "MNIST score" for 28x28 grayscale, else
    "classifier IS"."""
    return IS_LABEL if input_shape is None or tuple(input_shape) == MNIST_SHAPE else "classifier IS"


ROWS: list[tuple[str, str, str, str]] = [
    # (label, key, std key, format)
    ("FID", "fid", "", ".3f"),
    ("KID", "kid", "kid_std", ".5f"),
    (IS_LABEL, "is", "is_std", ".3f"),
    ("precision (k=3)", "precision", "", ".3f"),
    ("recall (k=3)", "recall", "", ".3f"),
    ("classes", "classes", "", "d"),
    ("class KL", "class_kl", "", ".4f"),
]
# shown for class-conditional results only (samples generated for requested classes)
CONDITIONAL_ROWS: list[tuple[str, str, str, str]] = [
    ("label accuracy", "label_accuracy", "", ".3f"),
    ("intra-class FID", "intra_fid", "", ".3f"),
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


def format_table(scores: dict[str, Any], reference: dict[str, Any],
                 input_shape: tuple[int, ...] | list[int] | None = None) -> str:
    """The scores beside the reference (real train vs test) values; `input_shape` (the classifier's)
    names the Inception Score row."""
    ref_head = f"real train vs test (n={int(reference['n'])})" if reference else "real train vs test"
    lines = [f"{'metric':<16} {'score':>22}   {ref_head}"]
    rows = ROWS + (CONDITIONAL_ROWS if "label_accuracy" in scores else [])
    for label, key, std, fmt in rows:
        label = is_label(input_shape) if key == "is" else label
        lines.append(f"{label:<16} {_cell(scores, key, std, fmt):>22}   {_cell(reference, key, std, fmt)}")
    return "\n".join(lines)


def score(accelerator: Any, *, checkpoint: str | Path | None = None, samples: str | Path | None = None,
          n: int = 10000, shards: str | Path | None = None, classifier: str | Path | None = None,
          seed: int = 0, batch_size: int = 500) -> dict[str, Any]:
    """Collective: score a checkpoint's EMA G (n samples from `seed`) or a samples file (its first n).

    A conditional G, or a samples file with `labels`, also gets label_accuracy and intra_fid. Returns the
    scores plus `classifier_sha256`, `classifier_input_shape` ([C, H, W]), `num_classes`,
    `reference` (real train vs test), `source`, `real` (what the samples were compared with) and
    `num_processes`; the same dict on every rank.
    """
    if n < MIN_SAMPLES:
        raise UserError(f"--n must be at least {MIN_SAMPLES} (precision/recall's k=3 nearest neighbours), got {n}")
    if (checkpoint is None) == (samples is None):
        raise UserError("score either a checkpoint or a samples file")
    classifier_path, test_split = resolve_paths(shards, classifier)
    clf = load_classifier(classifier_path)
    images, labels = None, None
    if samples is not None:
        images, labels = load_labelled_samples(samples, n, clf.input_shape, minimum=MIN_SAMPLES)
    common = dict(classifier_path=classifier_path, test_split=test_split, seed=seed, batch_size=batch_size)
    if images is not None:
        source = f"{len(images)} {'labelled ' if labels is not None else ''}images from {samples}"
        scores = evaluate_images(accelerator, images, labels=labels, **common)
    else:

        generator, _ = load_generator(checkpoint, accelerator.device)
        source = f"{n} samples (seed {seed}) from {checkpoint}"
        scores = evaluate_generator(accelerator, generator, n=n, **common)
    real = f"{test_split}" if test_split is not None else f"test features cached in {classifier_path}"
    return {**scores, "classifier_sha256": clf.sha256, "classifier": str(classifier_path),
            "classifier_input_shape": list(clf.input_shape), "num_classes": clf.num_classes,
            "reference": clf.reference, "source": source, "real": real,
            "num_processes": accelerator.num_processes}


def score_inception(accelerator: Any, *, shards: str | Path, checkpoint: str | Path | None = None,
                    samples: str | Path | None = None, n: int = 10000, seed: int = 0,
                    batch_size: int = 50) -> dict[str, Any]:
    """Collective: FID, KID and precision/recall on the standard Inception-v3 pool3 features (comparable
    with the literature, and usable for unlabelled data), of n samples against n real test images (a
    seeded random subset when the split is larger). The main process computes; every rank returns the
    same dict. The real features are cached under ~/.cache/distgan/inception/, keyed by the split's
    fingerprint, the weights' sha256, n and the seed, so they are computed once per dataset."""
    if n < MIN_SAMPLES:
        raise UserError(f"--n must be at least {MIN_SAMPLES} (precision/recall's k=3 nearest neighbours), got {n}")
    if (checkpoint is None) == (samples is None):
        raise UserError("score either a checkpoint or a samples file")
    return on_main(accelerator, lambda: _score_inception_here(Path(shards), checkpoint, samples, n, seed,
                                                             batch_size, accelerator.device))


def _score_inception_here(shards: Path, checkpoint: str | Path | None, samples: str | Path | None, n: int,
                          seed: int, batch_size: int, device: Any) -> dict[str, Any]:
    import hashlib
    import json

    import torch

    test_split = shards / "test"
    if not test_split.is_dir():
        raise UserError(f"{test_split} not found; --shards must be the output of `distgan prepare`")
    load_inception(device)  # a missing or altered weights file stops here, before any sampling
    if samples is not None:
        images = load_samples(samples, n, expected=None, minimum=MIN_SAMPLES)
        source = f"{len(images)} images from {samples}"
    else:

        generator, _ = load_generator(checkpoint, device)
        labels = eval_labels(class_freqs_of(generator), n, seed) if num_classes_of(generator) else None
        images = sample_images(generator, n, seed, labels).numpy()
        images = images.transpose(0, 3, 1, 2) if images.ndim == 4 else images  # N x H x W x C -> N x C x H x W
        source = f"{n} samples (seed {seed}) from {checkpoint}"
    n = len(images)
    key = {"split": split_fingerprint(test_split), "weights": WEIGHTS_SHA256, "n": n, "seed": seed}
    # Beside the downloaded shards' cache, not in the prepare output: that directory is distgan prepare's
    # to manage (and may be read-only or shared).
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    cache = default_cache_root() / "inception" / f"test_features_{digest}.pt"
    real = None
    if cache.is_file():
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        real = blob["features"] if blob.get("key") == key else None
    if real is None:
        real_images, _ = load_split_images(test_split)
        if len(real_images) > n:
            pick = torch.randperm(len(real_images), generator=torch.Generator().manual_seed(seed))[:n]
            real_images = real_images[pick.sort().values.numpy()]
        real = inception_features(real_images, batch_size=batch_size, device=device)
        import io

        buf = io.BytesIO()
        torch.save({"key": key, "features": real}, buf)
        write_bytes_atomic(cache, buf.getvalue())
    if len(real) < MIN_SAMPLES:
        raise UserError(f"{test_split} has {len(real)} image(s); scoring needs at least {MIN_SAMPLES}")
    fake = inception_features(images, batch_size=batch_size, device=device)
    kid_mean, kid_std = kid(real, fake, seed=seed)
    precision, recall = precision_recall(real, fake)
    return {"features": "inception", "fid": fid(real, fake), "kid": kid_mean, "kid_std": kid_std,
            "precision": precision, "recall": recall, "n": n, "n_real": len(real),
            "inception_sha256": WEIGHTS_SHA256, "source": source, "real": str(test_split)}
