"""distgan.bench.diagnostic: the classifier-confidence histogram and the diagnostic's printed form (the whole
diagnostic runs on a real checkpoint in tests/bench/test_bench_quality.py)."""

from __future__ import annotations

import math

import pytest
import torch

from distgan.bench.diagnostic import CONFIDENCE_BINS, confidence_histogram, format_diagnostic


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


def test_format_diagnostic_prints_every_truncation_and_bin():
    result = {"n": 100, "truncation": [{"psi": 1.0, "fid": 1.5, "precision": 0.5, "recall": 0.8, "is": 8.0},
                                       {"psi": 0.4, "fid": 3.0, "precision": 0.9, "recall": 0.2, "is": 7.0}],
              "confidence": {"bins": list(CONFIDENCE_BINS), "samples": [0.1, 0.1, 0.1, 0.1, 0.1, 0.5],
                             "real": [0.0, 0.0, 0.0, 0.0, 0.05, 0.95]}}
    lines = format_diagnostic("x seed 0 final", result)
    assert lines[0].startswith("precision diagnostic, x seed 0 final (n=100)")
    assert "  1.00     1.500     0.500     0.800      8.00" in lines
    assert "  0.40     3.000     0.900     0.200      7.00" in lines
    assert lines[-1] == "  [0.99, 1.00]    0.500    0.950" and lines[-6].startswith("  [0.00, 0.50)")
