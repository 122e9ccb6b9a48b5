"""The metric maths on features fed directly (no classifier): FID, KID, MNIST score, precision/recall,
class coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from distgan.evaluation import metrics as M


def _with_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (unbiased) covariance are exactly `mean` and `cov`."""
    x = np.random.default_rng(seed).standard_normal((n, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(x, rowvar=False)))).T  # whiten: sample cov = I
    return torch.from_numpy(x @ np.linalg.cholesky(cov).T + mean)


def test_fid_of_a_set_against_itself_is_zero():
    x = torch.randn(3000, 32).relu()
    assert abs(M.fid(x, x)) < 1e-6


def test_fid_matches_the_closed_form_for_two_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    cov1, cov2 = a @ a.T + 0.5 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 1.0
    closed = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * scipy.linalg.sqrtm(cov1 @ cov2).real))
    got = M.fid(_with_moments(5000, mu1, cov1, 1), _with_moments(4000, mu2, cov2, 2))
    assert got == pytest.approx(closed, rel=1e-6)
    # one-dimensional sanity: N(0, 1) vs N(3, 4) -> 9 + (1 + 4 - 2 * 2) = 10
    one = M.fid(_with_moments(1000, np.zeros(1), np.eye(1), 3), _with_moments(1000, np.full(1, 3.0), 4 * np.eye(1), 4))
    assert one == pytest.approx(10.0, rel=1e-9)


def test_kid_is_near_zero_for_identically_distributed_sets_and_not_otherwise():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3000, 16, generator=g), torch.randn(3000, 16, generator=g)
    same, same_std = M.kid(x, y, subsets=20)
    assert abs(same) < 3 * same_std + 1e-4
    shifted, _ = M.kid(x, y + 0.5, subsets=20)
    assert shifted > 50 * max(abs(same), same_std)
    assert M.kid(x, y, subsets=20) == M.kid(x, y, subsets=20)  # seeded subsets


def test_mnist_score_bounds():
    confident = torch.eye(10).repeat(2000, 1) * 30.0  # every class equally often, certain
    assert M.inception_score(confident)[0] == pytest.approx(10.0, rel=5e-3)  # splits are random subsets
    one_class = torch.zeros(1000, 10)
    one_class[:, 3] = 30.0
    assert M.inception_score(one_class)[0] == pytest.approx(1.0, abs=1e-6)


def test_precision_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(1000, 8, generator=g)
    assert M.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert M.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # mode collapse: fakes all near one real point -> precise, no recall
    collapsed = real[:1] + 1e-3 * torch.randn(1000, 8, generator=g)
    precision, recall = M.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.01


def test_class_coverage():
    uniform = torch.full((10,), 0.1, dtype=torch.float64)
    one = torch.zeros(500, 10)
    one[:, 7] = 5.0
    assert M.class_coverage(one, uniform) == (1, pytest.approx(math.log(10)))
    all_digits = torch.eye(10).repeat(50, 1)
    classes, kl = M.class_coverage(all_digits, uniform)
    assert classes == 10 and kl == pytest.approx(0.0, abs=1e-12)


def test_compute_metrics_keys_and_identity(monkeypatch):
    monkeypatch.setattr(M, "KID_SUBSETS", 5)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1200, 16, generator=g).relu()
    logits = torch.randn(1200, 10, generator=g) * 5
    s = M.compute_metrics(M.FeatureSet(feats, logits), M.FeatureSet(feats, logits))
    assert set(s) == {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "classes", "class_kl", "n"}
    assert abs(s["fid"]) < 1e-6 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert s["classes"] == 10 and s["class_kl"] == pytest.approx(0.0, abs=1e-12) and s["n"] == 1200
    with pytest.raises(ValueError):
        M.compute_metrics(M.FeatureSet(feats, logits), M.FeatureSet(feats[:1], logits[:1]))


def test_fewer_samples_than_precision_recall_needs_are_refused_consistently(tmp_path):
    """k=3 nearest neighbours need 4 points: 2 or 3 images passed the old "at least 2" check, then failed in
    torch.topk (`selected index k out of range`). Every entry point now asks for MIN_SAMPLES = 4, in one line."""
    from distgan.errors import UserError
    from distgan.evaluation.evaluate import evaluate_images
    from distgan.evaluation.report import load_samples, score

    assert M.MIN_SAMPLES == M.K_NEAREST + 1 == 4
    g = torch.Generator().manual_seed(0)
    feats, logits = torch.randn(4, 8, generator=g), torch.randn(4, 10, generator=g)
    for n in (2, 3):
        with pytest.raises(ValueError, match=f"k=3 need at least 4 real and 4 generated samples, got 4 and {n}"):
            M.precision_recall(feats, feats[:n])
        with pytest.raises(ValueError, match=f"need at least 4 real and 4 generated samples .* got 4 and {n}"):
            M.compute_metrics(M.FeatureSet(feats, logits), M.FeatureSet(feats[:n], logits[:n]))
    assert M.precision_recall(feats, feats) == (1.0, 1.0)  # 4 is enough
    path = tmp_path / "three.npz"
    np.savez(path, images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(UserError, match=r"three\.npz: 3 image\(s\); scoring needs at least 4$"):
        load_samples(path, 200, (1, 28, 28), minimum=M.MIN_SAMPLES)
    with pytest.raises(UserError, match=r"^3 image\(s\) to score; scoring needs at least 4$"):
        evaluate_images(None, np.zeros((3, 28, 28), np.uint8), classifier_path=tmp_path / "none.pt", test_split=None)
    for n in (2, 3):
        with pytest.raises(UserError, match=f"^--n must be at least 4 .*, got {n}$"):
            score(None, samples=path, n=n)
