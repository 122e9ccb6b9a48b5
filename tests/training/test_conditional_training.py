"""Class-conditional models, DiffAugment and R1: unit checks on the modules and the GAN step (one process).

The end-to-end paths are covered by the training tests: exact resume with a conditional DCGAN, DiffAugment
and R1, fp16/bf16 with R1 (training/test_trainer.py), and 2 processes (training/test_trainer_distributed.py).
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from distgan.config import AugmentConfig, LossConfig, ModelConfig, load_config
from distgan.data.info import DatasetInfo
from distgan.data.shards import MAX_CLASSES
from distgan.errors import UserError
from distgan.evaluation.metrics import FeatureSet, intra_fid, label_accuracy
from distgan.generator.architectures import build_generator
from distgan.generator.sampling import parse_labels, sample_images
from distgan.training.augment import DiffAugment, cutout, translation
from distgan.training.discriminators import build_discriminator
from distgan.training.gan_step import GANStep
from distgan.training.losses import r1_penalty
from distgan.training.networks import Networks
from distgan.training.precision import Precision
from distgan.training.trainer import num_classes_for


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 6, c: int = 1, size: int = 16) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=gen(9)) * 2 - 1


# --- DiffAugment ----------------------------------------------------------------------------------------

def test_augmentation_is_set_by_the_generator_and_differentiable():
    aug = DiffAugment(AugmentConfig(policy="color,translation,cutout"))
    x = images(c=3).requires_grad_(True)
    a, b, c = aug(x, gen(1)), aug(x, gen(1)), aug(x, gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)  # same seed, same augmentation (exact resume)
    a.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G learns through it
    assert not DiffAugment(AugmentConfig(policy="")) and aug.policies == ["color", "translation", "cutout"]


def test_translation_moves_each_image_by_at_most_the_ratio():
    x = -torch.ones(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0  # one bright pixel per image
    out = translation(x, gen(3), ratio=0.125)  # up to 2 pixels each way
    shifts = set()
    for img in out[:, 0]:
        (r, c), = (img == 1.0).nonzero().tolist()
        assert abs(r - 8) <= 2 and abs(c - 8) <= 2
        shifts.add((r - 8, c - 8))
    assert len(shifts) > 5  # each image draws its own shift
    border = translation(torch.ones(64, 1, 16, 16), gen(3), ratio=0.125)
    assert (border == 0).any()  # shifted-in pixels are zero-filled, as in the reference code


def test_cutout_zeroes_one_square_per_image():
    out = cutout(torch.ones(32, 1, 16, 16), gen(4), ratio=0.5)
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert (zeros <= 64).all() and (zeros > 0).all()  # an 8x8 square, clipped at the edges
    assert (zeros == 64).any()


def test_unknown_policy_is_a_one_line_config_error():
    with pytest.raises(UserError, match="augment.policy.*unknown augmentation 'flip'"):
        load_config(None, ["augment.policy=translation,flip"])


# --- R1 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 65536.0])
def test_r1_is_the_squared_input_gradient_norm(scale):
    w = torch.randn(1, 16, generator=gen(5))
    x = torch.randn(4, 16, generator=gen(6)).requires_grad_(True)
    logits = (x * w).sum(dim=1)  # D(x) = w . x: grad_x D = w for every sample
    assert r1_penalty(logits, x, loss_scale=scale).item() == pytest.approx(w.square().sum().item(), rel=1e-5)


# --- conditional models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_conditional_models_use_the_labels(arch):
    cfg = ModelConfig(arch=arch, z_dim=8, g_hidden=[16], d_hidden=[16], g_width=8, d_width=8, spectral_norm=True,
                      conditional=True, num_classes=10)
    g, d = build_generator(cfg, (1, 28, 28)).eval(), build_discriminator(cfg, (1, 28, 28))
    nn.init.normal_(g.inputs.embed.weight)
    z = torch.randn(4, 8, generator=gen(0))
    a, b = g(z, torch.tensor([1, 1, 1, 1])), g(z, torch.tensor([7, 7, 7, 7]))
    assert a.shape == (4, 1, 28, 28) and not torch.allclose(a, b)
    assert not torch.allclose(d(a, torch.tensor([1, 1, 1, 1])), d(a, torch.tensor([2, 2, 2, 2])))
    assert "inputs.class_freqs" in g.state_dict()  # a checkpoint alone can draw labels as the data has them
    with pytest.raises(ValueError, match="class-conditional"):
        g(z)


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_conditional_models_take_labels_past_255(arch):
    """K = 300 (labels.u16 data): G's embedding and conditional BatchNorm, D's projection and the sampling and
    evaluation paths use classes 256..299 as themselves (no uint8 wrap: row 256 + k, never k)."""
    k = 300
    assert ModelConfig(conditional=True, num_classes=MAX_CLASSES).num_classes == MAX_CLASSES  # the shards' limit
    cfg = ModelConfig(arch=arch, z_dim=8, g_hidden=[16], d_hidden=[16], g_width=8, d_width=8, spectral_norm=False,
                      conditional=True, num_classes=k)
    g, d = build_generator(cfg, (1, 16, 16)), build_discriminator(cfg, (1, 16, 16))
    labels = torch.tensor([0, 255, 256, 299])
    fake = g(torch.randn(4, 8, generator=gen(0)), labels)
    (d(fake, labels).sum() + d(images(4), labels).sum()).backward()
    grads = {"G embedding": g.inputs.embed.weight.grad, "D projection": d.project.embed.weight.grad}
    if arch == "dcgan":
        grads["G conditional BatchNorm"] = g.blocks[0].norm.gain.weight.grad
    for name, grad in grads.items():
        used = grad.abs().sum(dim=1) > 0
        assert used.nonzero().flatten().tolist() == [0, 255, 256, 299], name
    y = parse_labels("256,299", k, 4)
    assert y.tolist() == [256, 299, 256, 299] and sample_images(g, 4, labels=y).shape == (4, 16, 16)
    with pytest.raises(UserError, match="class 300 is out of range"):
        parse_labels("300", k, 1)
    feats, logits = torch.randn(8, 4, generator=gen(2)), torch.zeros(8, k)
    logits[torch.arange(8), torch.tensor([256, 299] * 4)] = 1.0
    fakes = FeatureSet(feats, logits, torch.tensor([256, 299] * 4))
    reals = FeatureSet(feats + 0.1, logits, torch.tensor([256, 299] * 4))
    assert label_accuracy(fakes.logits, fakes.labels) == 1.0 and intra_fid(reals, fakes) >= 0.0


def test_conditional_needs_labels_and_matching_classes():
    cfg = load_config(None, ["model.conditional=true"])
    with pytest.raises(UserError, match="needs class labels"):
        num_classes_for(cfg, DatasetInfo((1, 28, 28), None, None, None))
    assert num_classes_for(cfg, DatasetInfo((1, 28, 28), 10, tuple("0123456789"), (0.1,) * 10)) == 10
    with pytest.raises(UserError, match="model.num_classes 5 differs"):
        num_classes_for(load_config(None, ["model.conditional=true", "model.num_classes=5"]),
                        DatasetInfo((1, 28, 28), 10, tuple("0123456789"), (0.1,) * 10))
    with pytest.raises(UserError, match="needs a labelled dataset"):
        build_generator(ModelConfig(conditional=True), (1, 28, 28))


# --- the GAN step ---------------------------------------------------------------------------------------

def make_step(*, freqs=None, r1_every=2, policy="translation,cutout"):
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dcgan", z_dim=8, g_width=8, d_width=8, conditional=True, num_classes=10)
    g, d = build_generator(cfg, (1, 28, 28)), build_discriminator(cfg, (1, 28, 28))
    opt_g, opt_d = torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3)
    g, d, opt_g, opt_d = acc.prepare(g, d, opt_g, opt_d)
    freqs = torch.full((10,), 0.1) if freqs is None else freqs
    step = GANStep(acc, Networks(g, d, opt_g, opt_d, ema=None), Precision("no", acc.device),
                   LossConfig(kind="hinge", r1_gamma=1.0, r1_every=r1_every), z_dim=8, seed=0,
                   augment=AugmentConfig(policy=policy), class_freqs=freqs)
    return step, g, d


def reals(k: int = 8):
    return (torch.rand(k, 1, 28, 28, generator=gen(1)) * 2 - 1, torch.arange(k) % 10)


def test_fake_labels_follow_the_class_frequencies():
    step, _, _ = make_step(freqs=torch.tensor([0, 0, 1.0, 0, 0, 0, 0, 0, 0, 0]))
    _, labels, _ = step._fake_inputs(64, step=3, phase=0)
    assert labels.tolist() == [2] * 64
    step, _, _ = make_step()
    a, b = step._fake_inputs(256, 3, 0)[1], step._fake_inputs(256, 3, 0)[1]
    assert torch.equal(a, b) and len(set(a.tolist())) == 10  # set by (seed, rank, step, phase)


def test_lazy_r1_runs_every_k_d_steps_and_the_step_is_reproducible():
    step, g, d = make_step(r1_every=2)
    stats = [step([reals()], s) for s in range(4)]
    assert [s.r1 is not None for s in stats] == [True, False, True, False]
    assert all(s.r1 > 0 for s in stats if s.r1 is not None)
    again, g2, d2 = make_step(r1_every=2)
    for s in range(4):
        again([reals()], s)
    for a, b in zip([*g.parameters(), *d.parameters()], [*g2.parameters(), *d2.parameters()], strict=True):
        assert torch.equal(a, b)  # noise, labels, augmentation and R1 all follow (seed, rank, step)
