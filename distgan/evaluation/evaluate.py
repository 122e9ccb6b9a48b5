"""Scoring generated images against the real test split, on one process or many (any image shape and
number of classes the classifier file was trained for).

Every rank computes the classifier features of its share of the samples; the features are gathered,
the main process computes the scores (distgan.evaluation.metrics) and broadcasts them, so every rank
returns the same dict. The real test split's features are cached in the classifier file (made by
`distgan train-classifier`), and in memory for any other split, so evaluating during training costs
only generating and featurizing the samples plus the metric maths (a few seconds for n = 10,000).

A class-conditional generator is sampled for labels in the training set's class frequencies
(distgan.generator.sampling.eval_labels), and its scores add label_accuracy and intra_fid, computed against
the real test images of each class (their labels are saved in the classifier file as `test_labels`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distgan.data.splits import load_split_images, split_fingerprint
from distgan.errors import UserError
from distgan.evaluation.classifier import (
    FeatureClassifier,
    check_images_fit,
    embed_images,
    load_classifier_file,
    to_input,
)
from distgan.evaluation.metrics import MIN_SAMPLES, FeatureSet, compute_metrics
from distgan.generator.sampling import class_freqs_of, eval_labels, fixed_noise, is_clustered, num_classes_of
from distgan.pixels import to_uint8

StopCheck = Callable[[], bool]


class EvaluationAbandoned(Exception):
    """A stop was agreed while evaluating: raised on every rank together, and no scores are returned."""


@dataclass
class Classifier:
    """A loaded classifier file: the model (CPU, eval mode) and what was saved beside it."""

    model: FeatureClassifier
    sha256: str
    blob: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this classifier scores."""
        return self.model.input_shape

    @property
    def num_classes(self) -> int:
        """K, the number of classes (the width of the logits)."""
        return self.model.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """The class names recorded in the file, or None."""
        names = self.blob.get("class_names")
        return list(names) if names is not None else None

    @property
    def reference(self) -> dict[str, float]:
        """Scores of the real train split against the real test split (empty if not recorded)."""
        return dict(self.blob.get("reference", {}))

    def cached_test_features(self) -> FeatureSet:
        """The test split's features (and labels, when recorded) saved in the file at training time."""
        labels = self.blob.get("test_labels")
        return FeatureSet(self.blob["test_features"], self.blob["test_logits"],
                          torch.as_tensor(labels).long() if labels is not None else None)


# (resolved path, mtime_ns, size) -> loaded classifier; (classifier sha256, split fingerprint) -> features
_CLASSIFIERS: dict[tuple[str, int, int], Classifier] = {}
_REAL: dict[tuple[str, str], FeatureSet] = {}


def load_classifier(path: str | Path) -> Classifier:
    """Load (and memoize) a classifier file; UserError if it is missing, unreadable or corrupt."""
    path = Path(path).resolve()
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is not None and key in _CLASSIFIERS:
        return _CLASSIFIERS[key]
    model, blob = load_classifier_file(path)
    # channels-last: 10,000 samples featurize in 6.8 s instead of 8.5 s on the 2-core CPU (G included, whose
    # EMA copy is channels-last when train.channels_last is); the features agree to float32 rounding
    clf = Classifier(model.to(memory_format=torch.channels_last), blob["sha256"], blob)
    if key is not None:
        _CLASSIFIERS[key] = clf
    return clf


def classifier_sha256(path: str | Path) -> str:
    """The weight hash named in every report of scores computed with this classifier."""
    return load_classifier(path).sha256


def real_features(clf: Classifier, test_split: str | Path | None) -> FeatureSet:
    """The real split's features: from the classifier file when it was made from this same split (or
    when test_split is None), else computed once per process and memoized."""
    if test_split is None:
        return clf.cached_test_features()
    fp = split_fingerprint(test_split)
    if fp is not None and fp == clf.blob.get("test_split_fingerprint"):
        return clf.cached_test_features()
    key = (clf.sha256, fp or str(Path(test_split).resolve()))
    if key not in _REAL:
        images, labels = load_split_images(test_split)
        if len(images) < MIN_SAMPLES:
            raise UserError(f"split {test_split} has {len(images)} images; scoring needs at least {MIN_SAMPLES}")
        check_images_fit(clf.model, images, f"the real images of {test_split}")
        _REAL[key] = FeatureSet(*embed_images(clf.model, images), torch.as_tensor(labels).long())
    return _REAL[key]


def labelled_real_features(clf: Classifier, test_split: str | Path | None) -> FeatureSet:
    """real_features with the real images' labels, for the class-conditional scores; UserError if unknown."""
    real = real_features(clf, test_split)
    if real.labels is None and test_split is not None:  # a classifier file from before test_labels
        _, labels = load_split_images(test_split)
        if len(labels) == len(real):
            real = FeatureSet(real.features, real.logits, torch.as_tensor(labels).long())
    if real.labels is None:
        raise UserError(f"the classifier file (sha256 {clf.sha256[:12]}) records no test labels, needed for "
                        f"label_accuracy and intra_fid; pass --shards DIR or retrain it with `distgan "
                        f"train-classifier`")
    return real


def check_labels_fit(clf: Classifier, labels: torch.Tensor, n: int, what: str) -> None:
    """UserError (one line) unless `labels` are n integers in the classifier's classes 0..K-1."""
    if labels.dim() != 1 or len(labels) != n or labels.is_floating_point() or labels.dtype == torch.bool:
        raise UserError(f"{what}: expected {n} integer labels, got {labels.dtype} of shape {tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= clf.num_classes):
        raise UserError(f"{what}: labels range from {int(labels.min())} to {int(labels.max())} but the "
                        f"classifier has {clf.num_classes} classes (0..{clf.num_classes - 1}); use a "
                        f"classifier trained on this dataset")


def _device_of(module: torch.nn.Module, default: torch.device) -> torch.device:
    p = next(module.parameters(), None)
    if p is None:
        p = next(module.buffers(), None)
    return p.device if p is not None else default


def _agreed_stop(should_stop: StopCheck | None) -> None:
    """Collective when `should_stop` is: EvaluationAbandoned on every rank once it says stop."""
    if should_stop is not None and should_stop():
        raise EvaluationAbandoned("a stop was requested")


def _distributed_features(accelerator: Any | None, n: int, clf: Classifier, batch_size: int,
                          make_images: Callable[[int, int], torch.Tensor],
                          should_stop: StopCheck | None = None) -> FeatureSet | None:
    """Featurize samples [0, n) split over ranks; the main process gets all n (in order), others None.

    make_images(lo, hi) returns uint8 images (hi - lo, H, W) or (hi - lo, C, H, W) of the classifier's
    input shape for samples lo..hi-1. Rank r takes the
    contiguous block [r * per, (r + 1) * per) with per = ceil(n / world); blocks are zero-padded to
    `per` rows for the gather, and the padding (all past index n) is dropped afterwards.
    Every rank runs the same number of batch slots (a rank with a shorter block idles in its last ones),
    so that the collective `should_stop` is called at the same slots everywhere: before each one and
    after the last; when it says stop, every rank raises EvaluationAbandoned.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    per = math.ceil(n / world)
    lo, hi = min(rank * per, n), min((rank + 1) * per, n)
    model = clf.model.to(device)  # the memoized CPU model moves back below
    rows = []
    try:
        with torch.no_grad():
            for start in range(rank * per, (rank + 1) * per, batch_size):  # the same count on every rank
                _agreed_stop(should_stop)
                if start < hi:
                    images = make_images(start, min(start + batch_size, hi))
                    feats, logits = model.embed(to_input(images).to(device))
                    rows.append(torch.cat([feats, logits], dim=1).float())
            _agreed_stop(should_stop)
    finally:
        clf.model.to("cpu")
    width = model.num_features + model.num_classes
    local = torch.zeros(per, width, device=device)
    if rows:
        local[: hi - lo] = torch.cat(rows)
    gathered = accelerator.gather(local) if accelerator is not None and world > 1 else local
    if accelerator is not None and not accelerator.is_main_process:
        return None
    gathered = gathered[:n].cpu()
    return FeatureSet(gathered[:, : model.num_features].contiguous(),
                      gathered[:, model.num_features:].contiguous())


def _local_check(stop_seen: StopCheck | None) -> Callable[[], None]:
    """compute_metrics' check on the main process: EvaluationAbandoned once `stop_seen()` (no collective)."""
    def check() -> None:
        if stop_seen is not None and stop_seen():
            raise EvaluationAbandoned("a stop was requested")
    return check


def _score_on_main(accelerator: Any | None, fake: FeatureSet | None, clf: Classifier,
                   test_split: str | Path | None, seed: int, labels: torch.Tensor | None = None,
                   stop_seen: StopCheck | None = None) -> dict[str, float]:
    """Main computes the scores (with the conditional ones when the fakes' requested `labels` are given);
    the result (or the main's UserError, or EvaluationAbandoned once the main's local `stop_seen()` says
    stop between two parts of the maths) reaches every rank."""
    result: dict[str, Any] = {}
    failure: BaseException | None = None
    if accelerator is None or accelerator.is_main_process:
        try:
            assert fake is not None
            if labels is None:
                real = real_features(clf, test_split)
            else:
                real = labelled_real_features(clf, test_split)
                fake = FeatureSet(fake.features, fake.logits, labels)
            result = {"ok": compute_metrics(real, fake, seed=seed, check=_local_check(stop_seen))}
        except EvaluationAbandoned as e:
            failure, result = e, {"abandoned": True}
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = e
            user = isinstance(e, UserError)
            result = {"error": str(e) if user else f"main process: {type(e).__name__}: {e}", "user": user}
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [result]
        broadcast_object_list(box, from_process=0)
        result = box[0]
    if failure is not None:
        raise failure
    if "abandoned" in result:
        raise EvaluationAbandoned("a stop was requested")
    if "error" in result:
        raise (UserError if result["user"] else RuntimeError)(result["error"])
    return result["ok"]


def evaluate_images(accelerator: Any | None, images: torch.Tensor | np.ndarray, *,
                    classifier_path: str | Path, test_split: str | Path | None, seed: int = 0,
                    batch_size: int = 500, labels: torch.Tensor | np.ndarray | None = None) -> dict[str, float]:
    """Scores of uint8 images (N, H, W) or (N, C, H, W), of the classifier's input shape, against the real
    test split (None: the split cached in the classifier file). With `labels` (N,), the classes the images
    were generated for, the scores add label_accuracy and intra_fid. Collective when `accelerator` is given
    (every rank passes the same images, each featurizes its share); returns the same dict on every rank."""
    images = torch.as_tensor(np.asarray(images))
    if len(images) < MIN_SAMPLES:
        raise UserError(f"{len(images)} image(s) to score; scoring needs at least {MIN_SAMPLES}")
    clf = load_classifier(classifier_path)
    check_images_fit(clf.model, images, "the images to score")  # on every rank: none waits in the gather
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels))
        check_labels_fit(clf, y, len(images), "the labels of the images to score")
        y = y.long()
    fake = _distributed_features(accelerator, len(images), clf, batch_size, lambda lo, hi: images[lo:hi])
    return _score_on_main(accelerator, fake, clf, test_split, seed, y)


def evaluate_generator(accelerator: Any, generator: torch.nn.Module, *, n: int, seed: int,
                       classifier_path: str | Path, test_split: str | Path | None,
                       batch_size: int = 500, should_stop: StopCheck | None = None,
                       stop_seen: StopCheck | None = None) -> dict[str, float]:
    """Collective: every rank calls it. Each rank generates its share of n samples, features are gathered,
    the main process computes the metrics and broadcasts them: the same dict is returned on EVERY rank.

    Sample i comes from noise row i of torch.randn(n, z_dim) drawn from a CPU generator seeded with `seed`,
    so the samples (and the scores) do not depend on the world size. For a class-conditional G, sample i
    also gets label i of `eval_labels(g.inputs.class_freqs, n, seed)` (the training class frequencies,
    exactly). The generator may be the object returned by accelerator.prepare (it is unwrapped; no DDP
    collective runs); it is run in eval mode and its train/eval mode is restored. Keys: fid, kid, kid_std,
    is, is_std, precision, recall, classes, class_kl, n; for a conditional G also label_accuracy and
    intra_fid. Name `classifier_sha256(classifier_path)` beside them when logging.

    To stop early (a preemption signal), pass `should_stop`, a collective every rank calls at the same
    points (before each batch and after the last; e.g. an all-reduce of each rank's stop flag), and
    `stop_seen`, the main process's own flag (no collective), checked between the parts of the scoring;
    when either says stop, EvaluationAbandoned is raised on every rank.
    """
    if n < MIN_SAMPLES:
        raise UserError(f"evaluation needs at least {MIN_SAMPLES} samples (precision/recall's k=3 nearest "
                        f"neighbours), got n={n}")
    g = accelerator.unwrap_model(generator) if accelerator is not None else generator
    z_dim = int(g.z_dim)
    noise = fixed_noise(n, z_dim, seed)
    default = accelerator.device if accelerator is not None else torch.device("cpu")
    g_device = _device_of(g, default)

    clf = load_classifier(classifier_path)
    expected = clf.input_shape
    labels = None
    if is_clustered(g):  # clusters: drawn in their frequencies, scored as an unconditional G (no class metrics)
        labels = eval_labels(class_freqs_of(g), n, seed)
    elif num_classes_of(g):
        if num_classes_of(g) != clf.num_classes:
            raise UserError(f"the generator is conditional on {num_classes_of(g)} classes but the classifier "
                            f"{classifier_path} has {clf.num_classes}; use a classifier trained on this dataset "
                            f"(`distgan train-classifier --shards DIR`)")
        labels = eval_labels(class_freqs_of(g), n, seed)

    def make_images(lo: int, hi: int) -> torch.Tensor:
        if labels is None:
            out = g(noise[lo:hi].to(g_device))
        else:
            out = g(noise[lo:hi].to(g_device), labels[lo:hi].to(g_device))
        if tuple(out.shape[1:]) != expected:
            raise UserError(f"the generator returns images of shape {tuple(out.shape)} but the classifier "
                            f"{classifier_path} expects (B, {', '.join(map(str, expected))}); use a classifier "
                            f"trained on this dataset (`distgan train-classifier --shards DIR`)")
        return to_uint8(out)

    was_training = g.training
    g.eval()
    try:
        with torch.no_grad():
            make_images(0, 1)  # every rank checks the shape, even one whose share is empty
        fake = _distributed_features(accelerator, n, clf, batch_size, make_images, should_stop)
    finally:
        g.train(was_training)
    return _score_on_main(accelerator, fake, clf, test_split, seed, None if is_clustered(g) else labels, stop_seen)
