"""The GAN iteration in one process: fp16 loss scaling per optimizer (a forced inf skips that optimizer
only), the G step leaves D untouched, and noise is set by (seed, rank, step)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from distgan.config import LossConfig, ModelConfig
from distgan.generator.architectures import build_generator
from distgan.training.discriminators import build_discriminator
from distgan.training.gan_step import GANStep, noise_generator
from distgan.training.networks import Networks
from distgan.training.precision import Precision

# CUDA runs on a GPU machine only, in its own pytest process (`-k cuda`): Accelerate's state is per process.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_step(mode: str = "no", loss: str = "bce", device: str = "cpu"):
    acc = Accelerator(cpu=device == "cpu")
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mlp", z_dim=8, g_hidden=[16], d_hidden=[16])
    g, d = build_generator(cfg, (1, 28, 28)), build_discriminator(cfg, (1, 28, 28))
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3)
    g, d, opt_g, opt_d = acc.prepare(g, d, opt_g, opt_d)
    prec = Precision(mode, acc.device)
    step = GANStep(acc, Networks(g, d, opt_g, opt_d, ema=None), prec, LossConfig(kind=loss, gp_weight=10.0),
                   z_dim=8, seed=0)
    return step, g, d, prec


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def real_batch(device="cpu"):
    return (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("broken", ["d", "g"])
def test_fp16_inf_gradient_skips_only_that_optimizer(broken, device):
    step, g, d, prec = make_step("fp16", device=device)
    step([real_batch(device)], 0)  # one clean iteration so both optimizers have state
    scale_before = {p: prec.scale(p) for p in ("d", "g")}
    g0, d0 = params(g), params(d)
    target = next((d if broken == "d" else g).parameters())
    handle = target.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    step([real_batch(device)], 1)
    handle.remove()
    other = "g" if broken == "d" else "d"
    assert same(params(d if broken == "d" else g), d0 if broken == "d" else g0), "the broken step must be skipped"
    assert not same(params(g if broken == "d" else d), g0 if broken == "d" else d0), "the other one must step"
    assert prec.scale(broken) == scale_before[broken] / 2  # backoff on this scaler only
    assert prec.scale(other) == scale_before[other]
    step([real_batch(device)], 2)  # and training carries on with finite weights
    assert all(torch.isfinite(p).all() for p in list(g.parameters()) + list(d.parameters()))


def test_fp16_scaler_grows_after_growth_interval():
    step, g, d, prec = make_step("fp16")
    for s in prec.scalers.values():
        s._growth_interval = 2  # exercise growth quickly
    start = prec.scale("d")
    for i in range(4):
        step([real_batch()], i)
    assert prec.scale("d") == start * 4 and prec.scale("g") == start * 4  # one update per step of each


@pytest.mark.parametrize("loss", ["bce", "hinge", "wgan-gp"])
def test_g_step_changes_no_d_parameter_and_leaves_no_d_grad(loss):
    step, g, d, _ = make_step(loss=loss)
    fake = g(torch.randn(8, 8))
    d0, g0 = params(d), params(g)
    step._g_step(fake, want_norm=True)
    assert same(params(d), d0)
    assert all(p.grad is None for p in d.parameters())
    assert all(p.requires_grad for p in d.parameters())  # D unfrozen again for its next step
    assert not same(params(g), g0)
    assert step.grad_norms["g"] > 0


def test_d_step_changes_no_g_parameter():
    step, g, d, _ = make_step(loss="wgan-gp")
    g0 = params(g)
    fake = g(torch.randn(8, 8)).detach()
    step._d_step(real_batch(), fake, torch.Generator().manual_seed(0), want_norm=False)
    assert same(params(g), g0)


def test_noise_depends_on_seed_rank_step_phase_only():
    cpu = torch.device("cpu")

    def draw(*key):
        return torch.randn(4, generator=noise_generator(*key, cpu))

    base = draw(0, 0, 5, 0)
    assert torch.equal(base, draw(0, 0, 5, 0))
    for other in [(1, 0, 5, 0), (0, 1, 5, 0), (0, 0, 6, 0), (0, 0, 5, 1)]:
        assert not torch.equal(base, draw(*other)), other

