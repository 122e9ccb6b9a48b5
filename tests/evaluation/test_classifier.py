"""`distgan train-classifier` on the real shards, and the scores' sanity on real data: the real test set
scores best, blurred digits worse, noise worst; a one-digit generator covers one class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_support import classifier_file

from distgan.data.splits import load_split_images
from distgan.errors import UserError
from distgan.evaluation import metrics as M
from distgan.evaluation.classifier import FeatureClassifier
from distgan.evaluation.evaluate import evaluate_generator, evaluate_images, load_classifier, real_features
from distgan.hashing import state_dict_sha256

pytestmark = pytest.mark.slow  # real training runs (the unit tier is `-m "not slow"`)


@pytest.fixture(scope="session")
def classifier(tmp_path_factory, mnist_shards) -> Path:
    return classifier_file(tmp_path_factory, mnist_shards)


@pytest.fixture(scope="module")
def test_images(mnist_shards) -> tuple[np.ndarray, np.ndarray]:
    return load_split_images(mnist_shards / "test")


def test_train_classifier_file(classifier, mnist_shards):
    blob = torch.load(classifier, map_location="cpu", weights_only=True)
    assert blob["test_accuracy"] >= 0.98
    model = FeatureClassifier((1, 28, 28), 10)
    model.load_state_dict(blob["state_dict"])
    assert blob["sha256"] == state_dict_sha256(model) and len(blob["sha256"]) == 64
    assert blob["sha256"] in (classifier.parent / "train.log").read_text()
    assert blob["test_features"].shape == (10000, 128) and blob["test_logits"].shape == (10000, 10)
    ref = blob["reference"]  # real train split scored against the real test split
    assert ref["fid"] < 1.0 and ref["kid"] < 0.01
    assert ref["is"] > 9.3 and blob["reference_test_is"] > 9.3
    assert ref["classes"] == 10 and ref["class_kl"] < 0.01 and ref["precision"] > 0.7 and ref["recall"] > 0.7
    print(f"accuracy {blob['test_accuracy']:.4f}, trained in {blob['train_seconds']:.0f} s, reference "
          f"{json.dumps(ref)}, test MNIST score {blob['reference_test_is']:.3f}")


def test_cached_test_features_match_a_recomputation(classifier, mnist_shards):
    clf = load_classifier(classifier)
    cached = real_features(clf, mnist_shards / "test")  # fingerprint matches: served from the file
    assert cached.features is clf.blob["test_features"]
    images, _ = load_split_images(mnist_shards / "test")
    fresh = M.FeatureSet(*clf.model.embed(torch.as_tensor(images[:500]).unsqueeze(1).float() / 127.5 - 1))
    assert torch.allclose(fresh.features, cached.features[:500], atol=1e-4)


def test_corrupt_classifier_file_is_a_user_error(classifier, tmp_path):
    blob = torch.load(classifier, map_location="cpu", weights_only=True)
    blob["state_dict"]["fc2.bias"] = blob["state_dict"]["fc2.bias"] + 1.0
    bad = tmp_path / "bad.pt"
    torch.save(blob, bad)
    with pytest.raises(UserError, match="sha256"):
        load_classifier(bad)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read"):
        load_classifier(tmp_path / "junk.pt")


def _blur(images: np.ndarray) -> np.ndarray:
    x = torch.as_tensor(images).float().unsqueeze(1)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :]) / 256.0
    return F.conv2d(x, k[None, None], padding=2).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


def test_sanity_ordering_on_real_data(classifier, mnist_shards, test_images, monkeypatch):
    monkeypatch.setattr(M, "KID_SUBSETS", 20)
    train, _ = load_split_images(mnist_shards / "train")
    rng = np.random.default_rng(0)
    x = test_images[0][rng.permutation(10000)]  # the test split's first half is easier than its second
    sets = {
        "test": x[:2000],
        "train": train[:2000],
        "blurred test": _blur(x[:2000]),
        "noise": rng.integers(0, 256, (2000, 28, 28), dtype=np.uint8),
    }
    s = {k: evaluate_images(None, v, classifier_path=classifier, test_split=mnist_shards / "test")
         for k, v in sets.items()}
    for k, v in s.items():
        print(f"{k:>13}: FID {v['fid']:.3f} KID {v['kid']:.5f} IS {v['is']:.3f} P {v['precision']:.3f} "
              f"R {v['recall']:.3f} classes {v['classes']} KL {v['class_kl']:.4f}")
    for key in ("fid", "kid"):
        assert s["test"][key] < s["blurred test"][key] < s["noise"][key]
        assert s["train"][key] < s["blurred test"][key]
    assert s["test"]["fid"] < 1.0 and s["test"]["is"] > 9.0 and s["test"]["classes"] == 10
    assert s["noise"]["recall"] < 0.01 and s["noise"]["is"] < 2.0


class OneDigit(torch.nn.Module):
    """A generator that only ever draws real 3s (picked by the noise)."""

    def __init__(self, threes: np.ndarray) -> None:
        super().__init__()
        self.z_dim = 4
        self.register_buffer("images", torch.as_tensor(threes).float().div(127.5).sub(1).unsqueeze(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[(z[:, 0].abs() * 1e6).long() % len(self.images)]


def test_one_digit_generator_covers_one_class(classifier, mnist_shards, test_images, monkeypatch):
    monkeypatch.setattr(M, "KID_SUBSETS", 5)
    images, labels = test_images
    s = evaluate_generator(None, OneDigit(images[labels == 3]), n=1000, seed=0, classifier_path=classifier,
                           test_split=mnist_shards / "test")
    assert s["classes"] == 1
    assert s["is"] < 1.2
    assert s["class_kl"] == pytest.approx(np.log(1 / np.mean(labels == 3)), rel=0.05)


def test_evaluation_stops_at_the_next_batch_or_scoring_part(classifier, mnist_shards, test_images, monkeypatch):
    """A stop agreed between batches ends generation there; one seen while the main process scores ends the
    maths at its next part (KID subset, precision/recall chunk): EvaluationAbandoned, and no scores."""
    from distgan.evaluation.evaluate import EvaluationAbandoned

    monkeypatch.setattr(M, "KID_SUBSETS", 5)

    images, labels = test_images
    gen, common = OneDigit(images[labels == 3]), dict(n=2000, seed=0, classifier_path=classifier, test_split=None,
                                                      batch_size=100)
    calls: list[int] = []

    def agreed() -> bool:  # says stop at its 4th call, before the 4th of 20 batches
        calls.append(1)
        return len(calls) == 4

    with pytest.raises(EvaluationAbandoned):
        evaluate_generator(None, gen, should_stop=agreed, **common)
    assert len(calls) == 4
    seen: list[int] = []

    def seen_once_scoring() -> bool:  # the main process's own flag, set after a few parts of the maths
        seen.append(1)
        return len(seen) > 3

    with pytest.raises(EvaluationAbandoned):
        evaluate_generator(None, gen, should_stop=lambda: False, stop_seen=seen_once_scoring, **common)
    assert len(seen) == 4
    scores = evaluate_generator(None, gen, should_stop=lambda: False, stop_seen=lambda: False, **common)
    assert scores["n"] == 2000 and scores["classes"] == 1
