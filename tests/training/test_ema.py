"""distgan.training.ema.EMA on tiny modules: the update `decay * ema + (1 - decay) * source` with exact values,
plain copies before `start_step`, buffers (BatchNorm statistics) copied rather than averaged, the EMA being an
independent frozen copy, and its state dict round trip (also through a safetensors file, as checkpoints do)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distgan.config import EmaConfig
from distgan.training.ema import EMA


def tiny() -> nn.Module:
    """Linear + BatchNorm: parameters and buffers (running stats, an int64 batch counter)."""
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def fill(module: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)
    return module


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def all_equal(module: nn.Module, value: float) -> bool:
    return all(bool((p == value).all()) for p in module.parameters())


def test_update_is_decay_times_ema_plus_the_rest_times_source():
    source = fill(tiny(), 0.0)
    ema = EMA(source, EmaConfig(decay=0.75))
    fill(source, 4.0)
    ema.update(source, step=0)
    assert all_equal(ema.module, 1.0)  # 0.75 * 0 + 0.25 * 4
    ema.update(source, step=1)
    assert all_equal(ema.module, 1.75)  # 0.75 * 1 + 0.25 * 4
    fill(source, -8.0)
    ema.update(source, step=2)
    assert all_equal(ema.module, -0.6875)  # 0.75 * 1.75 + 0.25 * -8
    assert all_equal(source, -8.0)  # the source is only read


def test_update_per_element_matches_the_formula():
    torch.manual_seed(0)
    source = tiny()
    ema = EMA(source, EmaConfig(decay=0.9))
    before = params(ema.module)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    ema.update(source, step=5)
    for old, src, new in zip(before, source.parameters(), ema.module.parameters(), strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * src.detach(), rtol=0, atol=1e-6)


def test_before_start_step_the_ema_copies_the_source():
    source = fill(tiny(), 0.0)
    ema = EMA(source, EmaConfig(decay=0.5, start_step=3))
    fill(source, 2.0)
    ema.update(source, step=2)
    assert all_equal(ema.module, 2.0)
    fill(source, 6.0)
    ema.update(source, step=3)  # from start_step on: averaged
    assert all_equal(ema.module, 4.0)


def test_decay_zero_follows_the_source_exactly():
    torch.manual_seed(1)
    source = tiny()
    ema = EMA(source, EmaConfig(decay=0.0))
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(3).add_(0.1)
    ema.update(source, step=10)
    for a, b in zip(ema.module.parameters(), source.parameters(), strict=True):
        assert torch.equal(a, b)


def test_buffers_are_copied_not_averaged():
    source = tiny()
    ema = EMA(source, EmaConfig(decay=0.999))
    source.train()
    source(torch.tensor([[1.0, 2.0], [3.0, 5.0], [-1.0, 0.0]]))  # updates BatchNorm's running stats
    bn, ema_bn = source[1], ema.module[1]
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean, ema_bn.running_mean)
    ema.update(source, step=0)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ema_bn, name), getattr(bn, name)), name
    assert ema_bn.num_batches_tracked.dtype == torch.int64


def test_the_ema_is_a_frozen_independent_copy():
    source = fill(tiny(), 1.0).train()
    ema = EMA(source, EmaConfig())
    assert ema.module is not source and not ema.module.training and source.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in source.parameters())
    fill(source, 5.0)
    assert all_equal(ema.module, 1.0)  # only update() reads the source
    assert (ema.decay, ema.start_step) == (0.999, 0)


def test_update_records_no_autograd_history():
    source = tiny()
    ema = EMA(source, EmaConfig(decay=0.5))
    loss = source(torch.ones(4, 2)).sum()
    ema.update(source, step=0)
    assert all(p.grad_fn is None and not p.requires_grad for p in ema.module.parameters())
    loss.backward()  # the source's graph is untouched by the update
    assert all(p.grad is not None for p in source.parameters())


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(2)
    source = tiny()
    source(torch.randn(5, 2))
    ema = EMA(source, EmaConfig(decay=0.9))
    fill(source, 0.5)
    ema.update(source, step=1)
    state = ema.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                           "1.num_batches_tracked"]
    other = EMA(fill(tiny(), 9.0), EmaConfig(decay=0.9))
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "ema.safetensors"))
    third = EMA(tiny(), EmaConfig(decay=0.9))
    third.load_state_dict(load_file(str(tmp_path / "ema.safetensors")))
    for key, value in third.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the loaded EMA goes on averaging from the loaded values
    fill(source, 1.5)
    third.update(source, step=2)
    assert torch.allclose(third.module[0].weight, 0.9 * state["0.weight"] + 0.1 * 1.5, rtol=0, atol=1e-6)


def test_a_state_dict_of_another_shape_is_refused():
    ema = EMA(tiny(), EmaConfig())
    with pytest.raises(RuntimeError, match="size mismatch"):
        ema.load_state_dict(EMA(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)), EmaConfig()).state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        ema.load_state_dict({"0.weight": torch.zeros(3, 2)})
