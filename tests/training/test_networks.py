"""distgan.training.networks on a one-process CPU Accelerator with tiny models: `build_networks` (G, D, their
Adam optimizers from the config, the EMA as a frozen copy of G, seeded identical builds, a conditional G's class
frequencies, BatchNorm kept in one process), its refusals (no model.image_shape, missing class frequencies),
channels-last layout, and `apply_hyperparameters` and `align_optimizer_state` after a resume."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from distgan.config import Config, TrainConfig, load_config
from distgan.generator.architectures import DCGANGenerator, MLPGenerator
from distgan.training.discriminators import MLPDiscriminator
from distgan.training.networks import align_optimizer_state, apply_hyperparameters, build_networks

TINY = ["model.z_dim=4", "model.g_hidden=[8]", "model.d_hidden=[8]", "model.image_shape=[1,4,4]"]


@pytest.fixture(scope="module")
def acc() -> Accelerator:
    accelerator = Accelerator(cpu=True)
    accelerator.unwrap_model(torch.nn.Identity())  # its first call imports torch._dynamo: ~2 s once, here
    return accelerator


def cfg_of(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_builds_g_d_and_their_optimizers_from_the_config(acc):
    nets = build_networks(cfg_of("train.lr_g=0.001", "train.lr_d=0.003", "train.betas=[0.0, 0.9]"), acc)
    g, d = acc.unwrap_model(nets.g), acc.unwrap_model(nets.d)
    assert isinstance(g, MLPGenerator) and isinstance(d, MLPDiscriminator)
    assert (g.z_dim, g.image_shape, g.num_classes) == (4, (1, 4, 4), 0)
    assert nets.modules == (nets.g, nets.d)
    images = nets.g(torch.zeros(3, 4))
    assert images.shape == (3, 1, 4, 4) and bool((images.abs() <= 1).all())
    assert nets.d(images).shape == (3,)
    for opt, module, lr in ((nets.opt_g, g, 0.001), (nets.opt_d, d, 0.003)):
        [group] = opt.param_groups
        assert (group["lr"], group["betas"]) == (lr, (0.0, 0.9))
        assert [id(p) for p in group["params"]] == [id(p) for p in module.parameters()]  # each its own module's
        assert isinstance(opt.optimizer, torch.optim.Adam)


def test_the_ema_starts_as_a_frozen_copy_of_g(acc):
    nets = build_networks(cfg_of("ema.decay=0.5", "ema.start_step=3"), acc)
    g, ema = acc.unwrap_model(nets.g), nets.ema
    assert same(ema.state_dict(), weights(g)) and ema.module is not g
    assert (ema.decay, ema.start_step) == (0.5, 3)
    assert not ema.module.training and all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.device.type == "cpu" for p in ema.module.parameters())


def test_the_seed_makes_the_initial_weights(acc):
    a, b = build_networks(cfg_of("seed=5"), acc), build_networks(cfg_of("seed=5"), acc)
    c = build_networks(cfg_of("seed=6"), acc)
    for pick in (lambda n: n.g, lambda n: n.d):
        assert same(weights(pick(a)), weights(pick(b)))
        assert not same(weights(pick(a)), weights(pick(c)))


def test_unset_image_shape_is_refused(acc):
    cfg = load_config(None, TINY[:3])
    assert cfg.model.image_shape is None
    with pytest.raises(ValueError) as info:
        build_networks(cfg, acc)
    assert str(info.value) == "model.image_shape is not set: the trainer fills it in from the dataset's manifest"


def test_a_conditional_g_keeps_the_class_frequencies(acc):
    cfg = cfg_of("model.conditional=true", "model.num_classes=3")
    nets = build_networks(cfg, acc, class_freqs=[0.5, 0.25, 0.25])
    g = acc.unwrap_model(nets.g)
    assert g.num_classes == 3 and torch.equal(g.inputs.class_freqs, torch.tensor([0.5, 0.25, 0.25]))
    assert torch.equal(nets.ema.module.inputs.class_freqs, g.inputs.class_freqs)  # the EMA copies them too
    labels = torch.tensor([0, 2])
    assert nets.g(torch.zeros(2, 4), labels).shape == (2, 1, 4, 4)
    for freqs in (None, [0.5, 0.5]):
        with pytest.raises(ValueError) as info:
            build_networks(cfg, acc, class_freqs=freqs)
        assert str(info.value) == "a conditional G with 3 classes needs their frequencies"


def test_one_process_keeps_plain_batchnorm(acc):
    nets = build_networks(cfg_of("model.arch=dcgan", "model.g_width=2", "model.d_width=2", "model.z_dim=4",
                                 "model.image_shape=[1,16,16]", "model.sync_batchnorm=true"), acc)
    g = acc.unwrap_model(nets.g)
    assert isinstance(g, DCGANGenerator)
    kinds = {type(m) for m in g.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert kinds == {torch.nn.BatchNorm1d, torch.nn.BatchNorm2d}
    assert nets.g(torch.zeros(2, 4)).shape == (2, 1, 16, 16)


def test_apply_hyperparameters_overrides_what_a_resume_loaded(acc):
    nets = build_networks(cfg_of(), acc)
    for opt in (nets.opt_g, nets.opt_d):  # as a checkpoint's optimizer state would set them
        for group in opt.param_groups:
            group["lr"], group["betas"] = 0.5, (0.1, 0.2)
    apply_hyperparameters(nets, TrainConfig(lr_g=0.004, lr_d=0.0005, betas=[0.25, 0.75]))
    assert [(g["lr"], g["betas"]) for g in nets.opt_g.param_groups] == [(0.004, (0.25, 0.75))]
    assert [(g["lr"], g["betas"]) for g in nets.opt_d.param_groups] == [(0.0005, (0.25, 0.75))]
    # the optimizer steps with the new values: Adam's first step moves every weight by about lr
    g = acc.unwrap_model(nets.g)
    before = weights(g)
    nets.g(torch.randn(4, 4)).sum().backward()
    nets.opt_g.step()
    moved = [(g.state_dict()[k] - before[k]).abs() for k in before]
    assert all(float(m.max()) <= 0.004 * 1.01 for m in moved) and any(float(m.max()) > 0.003 for m in moved)


CONV = ["model.arch=dcgan", "model.g_width=4", "model.d_width=4", "model.image_shape=[1,16,16]"]


def two_layouts(t: torch.Tensor) -> bool:
    """Whether channels-last and contiguous differ for `t` (not for 1 channel or a 1 x 1 kernel)."""
    return t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1


def adam_step(nets, x: torch.Tensor) -> None:
    nets.opt_d.zero_grad()
    (nets.d(x) - 1).square().mean().backward()  # gradients far from 0: Adam steps of about lr
    nets.opt_d.step()


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_lays_out_g_d_and_the_ema_and_computes_the_same(acc, channels_last):
    nets = build_networks(cfg_of(*CONV, f"train.channels_last={str(channels_last).lower()}"), acc)
    plain = build_networks(cfg_of(*CONV, "train.channels_last=false"), acc)
    convs = [p for m in (nets.g, nets.d, nets.ema.module) for p in m.parameters() if two_layouts(p)]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) == channels_last and
                         p.is_contiguous() != channels_last for p in convs)
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nets.g(z), plain.g(z), rtol=1e-5, atol=1e-6)  # the same model, another layout


def test_optimizer_state_saved_in_another_layout_is_aligned_before_fused_adam_steps(acc):
    """A checkpoint of a train.channels_last=false run resumed with it true: fused Adam pairs parameter and
    state element by element in memory, so the loaded (contiguous) state must take the parameter's layout."""
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    saved = build_networks(cfg_of(*CONV, "train.channels_last=false"), acc)
    adam_step(saved, x)
    reference = build_networks(cfg_of(*CONV, "train.channels_last=false"), acc)
    resumed = build_networks(cfg_of(*CONV), acc)
    for nets in (reference, resumed):
        nets.d.load_state_dict(saved.d.state_dict())
        nets.opt_d.load_state_dict(copy.deepcopy(saved.opt_d.state_dict()))  # as from a file: nothing shared
    state = [v for s in resumed.opt_d.state.values() for v in s.values() if torch.is_tensor(v) and two_layouts(v)]
    assert state and not any(v.is_contiguous(memory_format=torch.channels_last) for v in state)  # as saved
    align_optimizer_state(resumed)
    for p, s in resumed.opt_d.state.items():
        assert all(v.stride() == p.stride() for v in s.values() if torch.is_tensor(v) and v.shape == p.shape)
    for nets in (reference, resumed):
        adam_step(nets, x)
    for (name, a), b in zip(reference.d.state_dict().items(), resumed.d.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
