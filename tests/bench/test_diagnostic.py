"""distgan.bench.diagnostic: the classifier-confidence histogram, cluster purity (by hand, and of a real
self-conditioned run on labelled digits) and the diagnostic's printed form (the whole diagnostic runs on a
real checkpoint in tests/bench/test_bench_quality.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO

from distgan.bench.diagnostic import CONFIDENCE_BINS, cluster_purity, confidence_histogram, format_diagnostic, purity

DEBUG = REPO / "configs" / "debug.yaml"


def logits_with_top(p: float, k: int = 10) -> torch.Tensor:
    """Logits whose softmax gives one class probability p and shares the rest evenly over k - 1 classes."""
    rest = (1 - p) / (k - 1)
    return torch.tensor([math.log(p)] + [math.log(rest)] * (k - 1))


def test_confidence_histogram_puts_each_sample_in_its_bin():
    tops = [0.15, 0.6, 0.85, 0.85, 0.92, 0.97, 0.995, 1 - 1e-12]
    hist = confidence_histogram(torch.stack([logits_with_top(p) for p in tops]))
    assert len(hist) == len(CONFIDENCE_BINS) - 1
    assert hist == pytest.approx([1 / 8, 1 / 8, 2 / 8, 1 / 8, 1 / 8, 2 / 8])


def test_confidence_histogram_closes_the_last_bin_and_counts_nothing_twice():
    certain = torch.tensor([[100.0, 0.0], [0.0, 100.0]])  # softmax 1.0 in float64: in [0.99, 1.0]
    assert confidence_histogram(certain)[-1] == 1.0
    assert sum(confidence_histogram(torch.randn(1000, 10))) == pytest.approx(1.0)


DIAGNOSTIC = {"n": 100, "truncation": [{"psi": 1.0, "fid": 1.5, "precision": 0.5, "recall": 0.8, "is": 8.0},
                                      {"psi": 0.4, "fid": 3.0, "precision": 0.9, "recall": 0.2, "is": 7.0}],
              "confidence": {"bins": list(CONFIDENCE_BINS), "samples": [0.1, 0.1, 0.1, 0.1, 0.1, 0.5],
                             "real": [0.0, 0.0, 0.0, 0.0, 0.05, 0.95]}, "clusters": None}


def test_format_diagnostic_prints_every_truncation_and_bin():
    lines = format_diagnostic("x seed 0 final", DIAGNOSTIC)
    assert lines[0].startswith("precision diagnostic, x seed 0 final (n=100)")
    assert "  1.00     1.500     0.500     0.800      8.00" in lines
    assert "  0.40     3.000     0.900     0.200      7.00" in lines
    assert lines[-1] == "  [0.99, 1.00]    0.500    0.950" and lines[-6].startswith("  [0.00, 0.50)")


def test_purity_counts_each_cluster_by_its_majority_class():
    assignments = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    labels = torch.tensor([3, 3, 1, 0, 0, 1, 1, 3])
    result = purity(assignments, labels, num_classes=4)
    assert result["purity"] == pytest.approx((2 + 2 + 2) / 8)
    assert result["clusters_led"] == [1, 1, 0, 1]  # class 2 leads none: it is drawn only mixed with others


def test_cluster_purity_of_a_self_conditioned_run_on_labelled_digits(small_mnist_shards, tmp_path):
    from distgan.config import load_config
    from distgan.training.trainer import train

    common = [f"data.dir={small_mnist_shards}", "wandb.mode=disabled", "log.with=[]", "log.progress=false",
              "train.steps=4", "checkpoint.every=4", "model.arch=dcgan", "model.g_width=8", "model.d_width=8"]
    selfcond = train(load_config(DEBUG, [*common, f"run.dir={tmp_path / 'sc'}", "model.conditional=clusters",
                                         "model.clusters=12", "model.cluster_images=300"]))
    result = cluster_purity(selfcond.run_dir / "checkpoints" / "step_0000004", small_mnist_shards / "train")
    assert result["step"] == 0 and 0.1 <= result["purity"] <= 1  # the initial D's clusters
    assert len(result["clusters_led"]) == 10 and sum(result["clusters_led"]) == 12  # 12 clusters of 300 digits
    plain = train(load_config(DEBUG, [*common, f"run.dir={tmp_path / 'plain'}"]))
    assert cluster_purity(plain.run_dir / "checkpoints" / "step_0000004", small_mnist_shards / "train") is None
    lines = format_diagnostic("sc", {**DIAGNOSTIC, "clusters": result})
    assert lines[-1].startswith(f"clusters (step 0) against the true classes: purity {result['purity']:.3f}")
