"""The feature network: a small LeNet-style CNN sized to the dataset's image shape (C, H, W) and its
K classes, its training, its weight hash and its file.

Scores are computed on this network's penultimate features (FID, KID, precision/recall) and its class
probabilities (classifier Inception Score, class coverage), following TF-GAN's mnist_frechet_distance /
mnist_score. For 28x28 grayscale MNIST with 10 classes the network is exactly the original MNIST LeNet.
Numbers from different classifiers are not comparable, so every report names the weights' SHA-256.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distgan.atomic import write_bytes_atomic
from distgan.data.splits import load_split_images, split_fingerprint
from distgan.errors import UserError
from distgan.evaluation.metrics import MIN_SAMPLES, FeatureSet, compute_metrics, inception_score
from distgan.hashing import state_dict_sha256
from distgan.pixels import MNIST_SHAPE, to_signed

FORMAT = "distgan-classifier/2"  # adds input_shape, num_classes and class_names
OLD_FORMATS = ("distgan-mnist-classifier/1",)  # (1, 28, 28), 10 classes; still readable
NUM_FEATURES = 128
NUM_CLASSES = 10
CHANNELS = (1, 3)
MIN_SIDE, MAX_SIDE = 4, 1024
LENET_SIDE = 32  # the last two (LeNet) blocks see at most 32 x 32; one 3x3 block more per doubling above


def check_input_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) as ints if the classifier family covers it (C in {1, 3}, sides 4..1024), else UserError."""
    try:
        c, h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise UserError(f"image shape {shape!r} is not (C, H, W)") from None
    if c not in CHANNELS or not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise UserError(f"image shape {(c, h, w)} is not supported by the feature classifier: it takes "
                        f"(C, H, W) with C in {{1, 3}} and H, W from {MIN_SIDE} to {MAX_SIDE}")
    return c, h, w


def block_plan(input_shape: Sequence[int]) -> list[tuple[int, int, int, tuple[int, int]]]:
    """The conv-pool blocks for an input shape: (in channels, out channels, kernel, pool kernel) each.

    A side above 32 gets one early 3x3 conv(32)-pool block per halving needed to bring it to 32 or
    less, then the two LeNet blocks conv5x5(32)-pool, conv5x5(64)-pool; an axis already down to 1
    pixel is no longer pooled. (1, 28, 28) gives exactly the MNIST LeNet (two 5x5 blocks).
    """
    c, h, w = check_input_shape(input_shape)
    extra, side = 0, max(h, w)
    while side > LENET_SIDE:
        side //= 2
        extra += 1
    widths = [32] * (extra + 1) + [64]
    kernels = [3] * extra + [5, 5]
    plan, cin = [], c
    for cout, k in zip(widths, kernels, strict=True):
        pool = (2 if h >= 2 else 1, 2 if w >= 2 else 1)
        plan.append((cin, cout, k, pool))
        h, w, cin = h // pool[0], w // pool[1], cout
    return plan


def _flat_size(input_shape: Sequence[int]) -> int:
    _, h, w = check_input_shape(input_shape)
    plan = block_plan(input_shape)
    for _, _, _, (ph, pw) in plan:
        h, w = h // ph, w // pw
    return plan[-1][1] * h * w


class FeatureClassifier(nn.Module):
    """The feature network for images of shape (C, H, W) with K classes; input floats in [-1, 1].

    Conv-pool blocks (block_plan: early 3x3 conv(32)-pool blocks for sides above 32, then
    conv5x5(32)-pool-conv5x5(64)-pool) named conv1..convN, then fc1 (128 features, ReLU) and fc2 (K
    logits). For (1, 28, 28) and K = 10 this is exactly the original MNIST LeNet (same modules, same
    state_dict keys, same initialisation from the same seed). The features are the fc1 activations
    times `feature_scale`, a buffer set after training so that their root-mean-square on the training
    split is 1 (it only sets the unit of FID and KID).
    """

    num_features = NUM_FEATURES

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.input_shape: tuple[int, int, int] = check_input_shape(input_shape)
        if int(num_classes) < 2:
            raise UserError(f"the classifier needs at least 2 classes, got {num_classes}")
        self.num_classes = int(num_classes)
        self.pools: list[tuple[int, int]] = []
        for i, (cin, cout, k, pool) in enumerate(block_plan(self.input_shape), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, cout, k, padding=k // 2))
            self.pools.append(pool)
        self.fc1 = nn.Linear(_flat_size(self.input_shape), NUM_FEATURES)
        self.fc2 = nn.Linear(NUM_FEATURES, self.num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (penultimate features (B, 128), logits (B, K))."""
        h = x
        for i, pool in enumerate(self.pools, start=1):
            h = F.max_pool2d(F.relu(getattr(self, f"conv{i}")(h)), pool)
        feats = F.relu(self.fc1(h.flatten(1)))
        return feats * self.feature_scale, self.fc2(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K)."""
        return self.embed(x)[1]


def image_shape(images: torch.Tensor | np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of uint8 images given as (N, H, W) (one channel) or (N, C, H, W)."""
    shape = tuple(int(v) for v in images.shape)
    if len(shape) == 3:
        return (1, *shape[1:])
    if len(shape) == 4:
        return shape[1:]
    raise UserError(f"images have shape {shape}; expected N x H x W or N x C x H x W")


def to_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) (one channel) or (N, C, H, W) -> float (N, C, H, W) in [-1, 1] (the
    generator's range)."""
    t = torch.from_numpy(np.array(images, copy=True)) if isinstance(images, np.ndarray) else images
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() != 4:
        raise UserError(f"images have shape {tuple(t.shape)}; expected N x H x W or N x C x H x W")
    return to_signed(t)


def check_images_fit(model: FeatureClassifier, images: torch.Tensor | np.ndarray, what: str = "images") -> None:
    """UserError (one line, naming both shapes) unless `images` have the classifier's input shape."""
    shape = image_shape(images)
    if shape != model.input_shape:
        raise UserError(f"{what} have shape (C, H, W) = {shape} but the classifier expects {model.input_shape}; "
                        f"use a classifier trained on this dataset (`distgan train-classifier --shards DIR`)")


@torch.no_grad()
def embed_images(model: FeatureClassifier, images: torch.Tensor | np.ndarray, *, batch_size: int = 500,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, 128) and logits (N, K) (float32, on CPU) of uint8 images (N, H, W) or (N, C, H, W) of
    the classifier's input shape, in eval mode, batch by batch."""
    check_images_fit(model, images)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        for i in range(0, len(images), batch_size):
            f, lg = model.embed(to_input(images[i:i + batch_size]).to(device))
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, NUM_FEATURES), torch.zeros(0, model.num_classes)
    return torch.cat(feats), torch.cat(logits)


def num_classes_of(labels: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> int:
    """K: len(class_names) when given, else the largest label + 1; UserError if a label is out of range
    or K < 2."""
    y = torch.as_tensor(np.asarray(labels)).to(torch.int64)
    if len(y) == 0:
        raise UserError("no labelled images to train the classifier on")
    lo, hi = int(y.min()), int(y.max())
    k = len(class_names) if class_names is not None else hi + 1
    if lo < 0 or hi >= k:
        raise UserError(f"labels range from {lo} to {hi} but there are {k} class names; labels must be 0..K-1")
    if k < 2:
        raise UserError(f"the classifier needs at least 2 classes, the labels give {k}")
    return k


def train_classifier(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *, epochs: int = 5,
                     seed: int = 0, batch_size: int = 64, lr: float = 2e-3, num_classes: int | None = None,
                     log: Callable[[str], None] | None = None) -> FeatureClassifier:
    """Train a fresh classifier for the images' shape ((N, H, W) or (N, C, H, W) uint8) and `num_classes`
    (default: largest label + 1) with a fixed seed (Adam, one-cycle schedule); returns it in eval mode
    with its feature scale set."""
    k = num_classes if num_classes is not None else num_classes_of(labels)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FeatureClassifier(image_shape(images), k)
    x_all = torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    x_all = x_all.unsqueeze(1) if x_all.dim() == 3 else x_all  # uint8; scaled batch by batch
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(y_all) != len(x_all):
        raise UserError(f"{len(x_all)} images but {len(y_all)} labels")
    if len(y_all) and (int(y_all.min()) < 0 or int(y_all.max()) >= k):
        raise UserError(f"labels range from {int(y_all.min())} to {int(y_all.max())}; with {k} classes they "
                        f"must be 0..{k - 1}")
    n = len(x_all)
    steps_per_epoch = math.ceil(n / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # one kernel: ~10x the CPU default's step
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(to_signed(x_all[idx])), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if log:
            log(f"epoch {epoch + 1}/{epochs}: train loss {total / n:.4f}")
    model.eval()
    feats, _ = embed_images(model, x_all)
    model.feature_scale.fill_(1.0 / float(feats.double().pow(2).mean().sqrt().clamp(min=1e-12)))
    return model


def top1(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """The share of rows of `logits` whose largest entry is at the row's label."""
    return float((logits.argmax(1) == torch.as_tensor(np.asarray(labels), dtype=torch.int64)).float().mean())


def accuracy(model: FeatureClassifier, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Top-1 accuracy on uint8 images of the classifier's input shape."""
    return top1(embed_images(model, images)[1], labels)


def save_classifier(path: str | Path, model: FeatureClassifier, *, class_names: Sequence[str] | None = None,
                    **extra: Any) -> str:
    """Write the model, its input shape, number of classes, class names (when known), weight hash and
    `extra` (tensors, numbers, strings) atomically; return the hash."""
    if class_names is not None and len(class_names) != model.num_classes:
        raise UserError(f"{len(class_names)} class names for a {model.num_classes}-class classifier")
    sha = state_dict_sha256(model)
    blob = {"format": FORMAT, "state_dict": model.state_dict(), "sha256": sha,
            "input_shape": list(model.input_shape), "num_classes": model.num_classes,
            **({"class_names": [str(c) for c in class_names]} if class_names is not None else {}), **extra}
    buf = io.BytesIO()
    torch.save(blob, buf)
    write_bytes_atomic(path, buf.getvalue())
    return sha


def load_classifier_file(path: str | Path) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Load (model in eval mode, the whole file's dict); raise UserError if missing, unreadable or altered.

    The architecture comes from the file's `input_shape` and `num_classes`; files written before they
    were recorded (format distgan-mnist-classifier/1) are (1, 28, 28) with 10 classes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classifier file {path} not found; train it with "
                        f"`distgan train-classifier --shards DIR` or pass --classifier PATH")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"cannot read classifier file {path} ({type(e).__name__}); "
                        f"retrain it with `distgan train-classifier`") from None
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, *OLD_FORMATS):
        raise UserError(f"{path} is not a distgan classifier file (format {FORMAT}); "
                        f"retrain it with `distgan train-classifier`")
    # Files of the first format (OLD_FORMATS) are MNIST's: written before input_shape and num_classes were recorded.
    shape, k = blob.get("input_shape", list(MNIST_SHAPE)), blob.get("num_classes", NUM_CLASSES)
    try:
        model = FeatureClassifier(shape, k)
        model.load_state_dict(blob["state_dict"])
    except (UserError, RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"classifier file {path}: its weights do not fit input shape {shape} with {k} classes "
                        f"({first}); retrain it with `distgan train-classifier`") from None
    model.eval()
    if state_dict_sha256(model) != blob["sha256"]:
        raise UserError(f"classifier file {path}: weights do not match their recorded sha256; "
                        f"the file is corrupt, retrain it with `distgan train-classifier`")
    return model, blob


def manifest_class_names(shards: str | Path) -> list[str] | None:
    """Class names recorded in DIR/manifest.json (a list of strings under `class_names` or `classes`),
    or None when it records none."""
    try:
        manifest = json.loads((Path(shards) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    for key in ("class_names", "classes"):
        names = manifest.get(key)
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def make_classifier_file(shards: str | Path, *, out: str | Path | None = None, epochs: int = 10, seed: int = 0,
                         batch_size: int = 64, class_names: Sequence[str] | None = None,
                         max_train: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the feature classifier on DIR/train (its architecture from the images' shape, K from the
    class names or the labels), test it on DIR/test, and save it (default DIR/classifier.pt) with its
    sha256, input shape, K, class names (given, else from the manifest when it records them), the test
    features and the reference scores of real data. Returns {"path", "sha256", "accuracy", "seconds",
    "reference", "reference_test_is", "test_size", "input_shape", "num_classes", "class_names"}."""
    shards = Path(shards)
    for split in ("train", "test"):
        if not (shards / split).is_dir():
            raise UserError(f"{shards / split} not found; --shards must be the output of `distgan prepare` "
                            f"(with DIR/train, DIR/test and DIR/manifest.json)")
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    out = Path(out) if out else shards / "classifier.pt"
    if class_names is None:
        class_names = manifest_class_names(shards)
    train_x, train_y = load_split_images(shards / "train")
    if max_train is not None:  # the first images in key order: a quick classifier for checks and tests
        if max_train < MIN_SAMPLES:
            raise UserError(f"--max-train must be at least {MIN_SAMPLES} (precision/recall's k=3 nearest "
                            f"neighbours), got {max_train}")
        train_x, train_y = train_x[:max_train], train_y[:max_train]
    test_x, test_y = load_split_images(shards / "test")
    for split, images in (("train", train_x), ("test", test_x)):
        if len(images) < MIN_SAMPLES:  # the reference scores compare the splits
            raise UserError(f"{shards / split} has {len(images)} image(s); the classifier's reference scores need "
                            f"at least {MIN_SAMPLES}")
    shape = check_input_shape(image_shape(train_x))
    if image_shape(test_x) != shape:
        raise UserError(f"{shards / 'test'} images have shape {image_shape(test_x)} but {shards / 'train'} "
                        f"images have {shape}; prepare both splits from the same dataset")
    k = num_classes_of(np.concatenate([np.asarray(train_y), np.asarray(test_y)]), class_names)
    log(f"training the classifier on {len(train_x)} images of shape {shape}, {k} classes ({epochs} epochs, "
        f"seed {seed}, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    model = train_classifier(train_x, train_y, epochs=epochs, seed=seed, batch_size=batch_size, num_classes=k,
                             log=lambda s: log("  " + s))
    seconds = time.perf_counter() - t0
    test = FeatureSet(*embed_images(model, test_x))
    acc = top1(test.logits, test_y)  # from the test features' logits: the test split is embedded once
    train = FeatureSet(*embed_images(model, train_x))
    reference = compute_metrics(test, train, seed=0)
    test_is = inception_score(test.logits, seed=0)[0]
    sha = save_classifier(
        out, model, class_names=class_names,
        test_accuracy=acc, train_seconds=seconds, epochs=epochs, seed=seed,
        test_split=str((shards / "test").resolve()), test_split_fingerprint=split_fingerprint(shards / "test"),
        test_features=test.features, test_logits=test.logits, test_labels=torch.as_tensor(np.asarray(test_y)),
        reference=reference, reference_test_is=test_is, torch_version=str(torch.__version__),
    )
    return {"path": out, "sha256": sha, "accuracy": acc, "seconds": seconds, "reference": reference,
            "reference_test_is": test_is, "test_size": len(test_x), "input_shape": shape, "num_classes": k,
            "class_names": list(class_names) if class_names is not None else None}
