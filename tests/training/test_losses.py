"""Loss unit tests, including the WGAN-GP penalty on functions whose gradient norm is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distgan.training.losses import d_loss, g_loss, gradient_penalty, interpolate


def penalty_of(fn, points: torch.Tensor) -> torch.Tensor:
    """The gradient penalty of any function `fn` at `points` (for checks against known gradients)."""
    points = points.detach().requires_grad_(True)
    return gradient_penalty(fn(points), points)

def test_bce_matches_binary_cross_entropy_with_logits():
    real, fake = torch.randn(32), torch.randn(32)
    expected = F.binary_cross_entropy_with_logits(real, torch.ones(32)) + \
        F.binary_cross_entropy_with_logits(fake, torch.zeros(32))
    assert torch.allclose(d_loss("bce", real, fake), expected, atol=1e-6)
    assert torch.allclose(g_loss("bce", fake), F.binary_cross_entropy_with_logits(fake, torch.ones(32)), atol=1e-6)


def test_hinge_and_wgan_values():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.0])
    assert d_loss("hinge", real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert g_loss("hinge", fake).item() == pytest.approx(1.0)
    assert d_loss("wgan-gp", real, fake).item() == pytest.approx(-1.0 - 1.25)
    assert g_loss("wgan-gp", fake).item() == pytest.approx(1.0)


def test_bce_is_safe_under_autocast_and_finite_for_huge_logits():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.Linear(4, 1)(torch.randn(8, 4)).squeeze(1) * 1e4
        loss = d_loss("bce", logits, -logits) + g_loss("bce", logits)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_penalty_of_linear_function_is_known():
    a = torch.tensor([3.0, 4.0])  # ||grad|| = 5 everywhere -> (5 - 1)^2 = 16
    pts = torch.randn(10, 2)
    assert penalty_of(lambda x: x @ a, pts).item() == pytest.approx(16.0)
    unit = a / 5  # ||grad|| = 1 -> penalty 0
    assert penalty_of(lambda x: x @ unit, pts).item() == pytest.approx(0.0, abs=1e-10)


def test_penalty_of_quadratic_is_known_and_differentiable():
    pts = torch.randn(6, 3, dtype=torch.float64)
    expected = ((2 * pts.norm(dim=1) - 1) ** 2).mean()  # f = ||x||^2 -> grad 2x
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    got = penalty_of(lambda x: w * (x**2).sum(dim=1), pts)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)  # computed in float32
    got.backward()  # create_graph=True: the penalty trains the critic
    assert w.grad is not None and math.isfinite(w.grad.item()) and w.grad.item() != 0


def test_penalty_unscales_a_loss_scale():
    a = torch.tensor([3.0, 4.0])
    pts = torch.randn(5, 2).requires_grad_(True)
    assert gradient_penalty(pts @ a, pts, loss_scale=1024.0).item() == pytest.approx(16.0)


def test_interpolate_lies_between_real_and_fake():
    real, fake = torch.zeros(100, 1, 2, 2), torch.ones(100, 1, 2, 2)
    x = interpolate(real, fake, torch.Generator().manual_seed(0))
    assert x.requires_grad and (x >= 0).all() and (x <= 1).all()
    assert torch.all(x == x[:, :, :1, :1])  # one weight per sample
