"""The MNIST feature network: a small LeNet-style CNN, its training, its weight hash and its file.

Scores are computed on this network's penultimate features (FID, KID, precision/recall) and its class
probabilities (MNIST score, class coverage), following TF-GAN's mnist_frechet_distance / mnist_score.
Numbers from different classifiers are not comparable, so every report names the weights' SHA-256.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distgan.atomic import write_bytes_atomic
from distgan.errors import UserError
from distgan.hashing import state_dict_sha256
from distgan.pixels import to_signed

FORMAT = "distgan-mnist-classifier/1"
NUM_FEATURES = 128
NUM_CLASSES = 10


class MnistClassifier(nn.Module):
    """conv5x5(32)-pool-conv5x5(64)-pool-fc(128)-fc(10); input (B, 1, 28, 28) floats in [-1, 1].

    The features are the fc(128) activations times `feature_scale`, a buffer set after training so that
    their root-mean-square on the training split is 1 (it only sets the unit of FID and KID).
    """

    num_features = NUM_FEATURES

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, NUM_FEATURES)
        self.fc2 = nn.Linear(NUM_FEATURES, NUM_CLASSES)
        self.register_buffer("feature_scale", torch.ones(()))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (penultimate features (B, 128), logits (B, 10))."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        feats = F.relu(self.fc1(h.flatten(1)))
        return feats * self.feature_scale, self.fc2(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10)."""
        return self.embed(x)[1]


def to_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (N, 28, 28) or (N, 1, 28, 28) -> float (N, 1, 28, 28) in [-1, 1] (the generator's range)."""
    t = torch.from_numpy(np.array(images, copy=True)) if isinstance(images, np.ndarray) else images
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return to_signed(t)


@torch.no_grad()
def embed_images(model: MnistClassifier, images: torch.Tensor | np.ndarray, *, batch_size: int = 500,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits (float32, on CPU) of uint8 images, in eval mode, batch by batch."""
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
        return torch.zeros(0, NUM_FEATURES), torch.zeros(0, NUM_CLASSES)
    return torch.cat(feats), torch.cat(logits)


def train_classifier(images: np.ndarray, labels: np.ndarray, *, epochs: int = 5, seed: int = 0,
                     batch_size: int = 64, lr: float = 2e-3,
                     log: Callable[[str], None] | None = None) -> MnistClassifier:
    """Train a fresh classifier with a fixed seed (Adam, one-cycle schedule); returns it in eval mode with
    its feature scale set."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MnistClassifier()
    x_all = to_input(images)
    y_all = torch.as_tensor(labels, dtype=torch.int64)
    n = len(x_all)
    steps_per_epoch = math.ceil(n / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if log:
            log(f"epoch {epoch + 1}/{epochs}: train loss {total / n:.4f}")
    model.eval()
    feats, _ = embed_images(model, images)
    model.feature_scale.fill_(1.0 / float(feats.double().pow(2).mean().sqrt().clamp(min=1e-12)))
    return model


def accuracy(model: MnistClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy on uint8 images."""
    _, logits = embed_images(model, images)
    return float((logits.argmax(1) == torch.as_tensor(labels, dtype=torch.int64)).float().mean())


def save_classifier(path: str | Path, model: MnistClassifier, **extra: Any) -> str:
    """Write the model, its weight hash and `extra` (tensors, numbers, strings) atomically; return the hash."""
    sha = state_dict_sha256(model)
    blob = {"format": FORMAT, "state_dict": model.state_dict(), "sha256": sha, **extra}
    buf = io.BytesIO()
    torch.save(blob, buf)
    write_bytes_atomic(path, buf.getvalue())
    return sha


def load_classifier_file(path: str | Path) -> tuple[MnistClassifier, dict[str, Any]]:
    """Load (model in eval mode, the whole file's dict); raise UserError if missing, unreadable or altered."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classifier file {path} not found; train it with "
                        f"`distgan train-classifier --shards DIR` or pass --classifier PATH")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"cannot read classifier file {path} ({type(e).__name__}); "
                        f"retrain it with `distgan train-classifier`") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a distgan classifier file (format {FORMAT}); "
                        f"retrain it with `distgan train-classifier`")
    model = MnistClassifier()
    model.load_state_dict(blob["state_dict"])
    model.eval()
    if state_dict_sha256(model) != blob["sha256"]:
        raise UserError(f"classifier file {path}: weights do not match their recorded sha256; "
                        f"the file is corrupt, retrain it with `distgan train-classifier`")
    return model, blob


def make_classifier_file(shards: str | Path, *, out: str | Path | None = None, epochs: int = 10, seed: int = 0,
                         batch_size: int = 64, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the feature classifier on DIR/train, test it on DIR/test, and save it (default
    DIR/classifier.pt) with its sha256, the test features and the reference scores of real data.
    Returns {"path", "sha256", "accuracy", "seconds", "reference", "reference_test_is"}."""
    from distgan.evaluation.evaluate import load_split_images, split_fingerprint
    from distgan.evaluation.metrics import FeatureSet, compute_metrics, inception_score

    shards = Path(shards)
    for split in ("train", "test"):
        if not (shards / split).is_dir():
            raise UserError(f"{shards / split} not found; --shards must be the output of `distgan prepare` "
                            f"(with DIR/train, DIR/test and DIR/manifest.json)")
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    out = Path(out) if out else shards / "classifier.pt"
    train_x, train_y = load_split_images(shards / "train")
    test_x, test_y = load_split_images(shards / "test")
    log(f"training the classifier on {len(train_x)} digits ({epochs} epochs, seed {seed}, "
        f"{torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    model = train_classifier(train_x, train_y, epochs=epochs, seed=seed, batch_size=batch_size,
                             log=lambda s: log("  " + s))
    seconds = time.perf_counter() - t0
    acc = accuracy(model, test_x, test_y)
    test = FeatureSet(*embed_images(model, test_x))
    train = FeatureSet(*embed_images(model, train_x))
    reference = compute_metrics(test, train, seed=0)
    test_is = inception_score(test.logits, seed=0)[0]
    sha = save_classifier(
        out, model,
        test_accuracy=acc, train_seconds=seconds, epochs=epochs, seed=seed,
        test_split=str((shards / "test").resolve()), test_split_fingerprint=split_fingerprint(shards / "test"),
        test_features=test.features, test_logits=test.logits, test_labels=torch.as_tensor(test_y),
        reference=reference, reference_test_is=test_is, torch_version=str(torch.__version__),
    )
    return {"path": out, "sha256": sha, "accuracy": acc, "seconds": seconds, "reference": reference,
            "reference_test_is": test_is, "test_size": len(test_x)}
