"""Scoring generated digits against the real test split, on one process or many.

Every rank computes the classifier features of its share of the samples; the features are gathered,
the main process computes the scores (distgan.evaluation.metrics) and broadcasts them, so every rank
returns the same dict. The real test split's features are cached in the classifier file (made by
`distgan train-classifier`), and in memory for any other split, so evaluating during training costs
only generating and featurizing the samples plus the metric maths (a few seconds for n = 10,000).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distgan.errors import UserError
from distgan.evaluation.classifier import MnistClassifier, embed_images, load_classifier_file, to_input
from distgan.evaluation.metrics import FeatureSet, compute_metrics
from distgan.pixels import to_uint8
from distgan.training.sampling import fixed_noise


@dataclass
class Classifier:
    """A loaded classifier file: the model (CPU, eval mode) and what was saved beside it."""

    model: MnistClassifier
    sha256: str
    blob: dict[str, Any]

    @property
    def reference(self) -> dict[str, float]:
        """Scores of the real train split against the real test split (empty if not recorded)."""
        return dict(self.blob.get("reference", {}))

    def cached_test_features(self) -> FeatureSet:
        """The test split's features saved in the file at training time."""
        return FeatureSet(self.blob["test_features"], self.blob["test_logits"])


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
    clf = Classifier(model, blob["sha256"], blob)
    if key is not None:
        _CLASSIFIERS[key] = clf
    return clf


def classifier_sha256(path: str | Path) -> str:
    """The weight hash named in every report of scores computed with this classifier."""
    return load_classifier(path).sha256


def split_fingerprint(split_dir: str | Path) -> str | None:
    """SHA-256 of a prepared split's shard list (names and sha256s from manifest.json); None if unreadable."""
    split_dir = Path(split_dir)
    try:
        manifest = json.loads((split_dir.parent / "manifest.json").read_text())
        shards = manifest["splits"][split_dir.name]["shards"]
        listing = [(str(s["name"]), str(s["sha256"])) for s in shards]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def load_split_images(split_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 28 x 28, int64 labels) of a prepared split, via distgan.data.load_split."""
    from distgan.data import load_split

    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(f"split directory {split_dir} not found; pass --shards DIR, the output of "
                        f"`distgan prepare` (with DIR/train and DIR/test)")
    images, labels = load_split(split_dir)
    return np.asarray(images), np.asarray(labels)


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
        images, _ = load_split_images(test_split)
        if len(images) < 2:
            raise UserError(f"split {test_split} has {len(images)} images; need at least 2")
        _REAL[key] = FeatureSet(*embed_images(clf.model, images))
    return _REAL[key]


def _device_of(module: torch.nn.Module, default: torch.device) -> torch.device:
    p = next(module.parameters(), None)
    if p is None:
        p = next(module.buffers(), None)
    return p.device if p is not None else default


def _distributed_features(accelerator: Any | None, n: int, clf: Classifier, batch_size: int,
                          make_images: Callable[[int, int], torch.Tensor]) -> FeatureSet | None:
    """Featurize samples [0, n) split over ranks; the main process gets all n (in order), others None.

    make_images(lo, hi) returns uint8 images (hi - lo, 28, 28) for samples lo..hi-1. Rank r takes the
    contiguous block [r * per, (r + 1) * per) with per = ceil(n / world); blocks are zero-padded to
    `per` rows for the gather, and the padding (all past index n) is dropped afterwards.
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
            for start in range(lo, hi, batch_size):
                images = make_images(start, min(start + batch_size, hi))
                feats, logits = model.embed(to_input(images).to(device))
                rows.append(torch.cat([feats, logits], dim=1).float())
    finally:
        clf.model.to("cpu")
    width = model.num_features + model.fc2.out_features
    local = torch.zeros(per, width, device=device)
    if rows:
        local[: hi - lo] = torch.cat(rows)
    gathered = accelerator.gather(local) if accelerator is not None and world > 1 else local
    if accelerator is not None and not accelerator.is_main_process:
        return None
    gathered = gathered[:n].cpu()
    return FeatureSet(gathered[:, : model.num_features].contiguous(),
                      gathered[:, model.num_features:].contiguous())


def _score_on_main(accelerator: Any | None, fake: FeatureSet | None, clf: Classifier,
                   test_split: str | Path | None, seed: int) -> dict[str, float]:
    """Main computes the scores; the result (or the main's UserError) reaches every rank."""
    result: dict[str, Any] = {}
    failure: BaseException | None = None
    if accelerator is None or accelerator.is_main_process:
        try:
            assert fake is not None
            result = {"ok": compute_metrics(real_features(clf, test_split), fake, seed=seed)}
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
    if "error" in result:
        raise (UserError if result["user"] else RuntimeError)(result["error"])
    return result["ok"]


def evaluate_images(accelerator: Any | None, images: torch.Tensor | np.ndarray, *,
                    classifier_path: str | Path, test_split: str | Path | None, seed: int = 0,
                    batch_size: int = 500) -> dict[str, float]:
    """Scores of uint8 images (N, 28, 28) against the real test split (None: the split cached in the
    classifier file). Collective when `accelerator` is given (every rank passes the same images, each
    featurizes its share); returns the same dict on every rank."""
    images = torch.as_tensor(np.asarray(images))
    clf = load_classifier(classifier_path)
    fake = _distributed_features(accelerator, len(images), clf, batch_size, lambda lo, hi: images[lo:hi])
    return _score_on_main(accelerator, fake, clf, test_split, seed)


def evaluate_generator(accelerator: Any, generator: torch.nn.Module, *, n: int, seed: int,
                       classifier_path: str | Path, test_split: str | Path | None,
                       batch_size: int = 500) -> dict[str, float]:
    """Collective: every rank calls it. Each rank generates its share of n samples, features are gathered,
    the main process computes the metrics and broadcasts them: the same dict is returned on EVERY rank.

    Sample i comes from noise row i of torch.randn(n, z_dim) drawn from a CPU generator seeded with `seed`,
    so the samples (and the scores) do not depend on the world size. The generator may be the object
    returned by accelerator.prepare (it is unwrapped; no DDP collective runs); it is run in eval mode and
    its train/eval mode is restored. Keys: fid, kid, kid_std, is, is_std, precision, recall, classes,
    class_kl, n. Name `classifier_sha256(classifier_path)` beside them when logging.
    """
    if n < 2:
        raise UserError(f"evaluation needs at least 2 samples, got n={n}")
    g = accelerator.unwrap_model(generator) if accelerator is not None else generator
    z_dim = int(g.z_dim)
    noise = fixed_noise(n, z_dim, seed)
    default = accelerator.device if accelerator is not None else torch.device("cpu")
    g_device = _device_of(g, default)

    def make_images(lo: int, hi: int) -> torch.Tensor:
        out = g(noise[lo:hi].to(g_device))
        if tuple(out.shape[1:]) != (1, 28, 28):
            raise ValueError(f"generator returned shape {tuple(out.shape)}; expected (B, 1, 28, 28)")
        return to_uint8(out)

    clf = load_classifier(classifier_path)
    was_training = g.training
    g.eval()
    try:
        fake = _distributed_features(accelerator, n, clf, batch_size, make_images)
    finally:
        g.train(was_training)
    return _score_on_main(accelerator, fake, clf, test_split, seed)
