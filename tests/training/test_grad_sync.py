"""distgan.training.grad_sync: the canonical-order gradient all-reduce hands every parameter its own gradient
back, whatever order DDP's bucket holds them in. (That it makes a resumed 4-process run equal an
uninterrupted one is asserted on the real two-node SLURM cluster, tests/launch/test_slurm.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from distgan.training.grad_sync import DDP_BUCKET_CAP_MB, register_canonical_allreduce


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Net(torch.nn.Module):
    """Parameters of different shapes, and a layer defined first but used last: the backward order (DDP's
    rebuilt bucket) is not the parameter order (its first bucket)."""

    def __init__(self) -> None:
        super().__init__()
        self.last = torch.nn.Linear(3, 5)
        self.first = torch.nn.Linear(7, 3, bias=False)
        self.norm = torch.nn.LayerNorm(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.last(self.first(x))).square().sum()


def test_every_parameter_gets_its_own_gradient_back(one_process_group):
    torch.manual_seed(0)
    plain = Net()
    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(plain), bucket_cap_mb=DDP_BUCKET_CAP_MB)
    register_canonical_allreduce(ddp)
    for step in range(3):  # the first iteration's bucket, then the rebuilt one
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(step))
        plain.zero_grad()
        ddp.zero_grad()
        plain(x).backward()
        ddp(x).backward()
        for (name, p), q in zip(plain.named_parameters(), ddp.module.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad), (step, name)


class ConvNet(torch.nn.Module):
    """4-D weights, which `train.channels_last` lays out channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4 * 6 * 6, 1)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.up = torch.nn.ConvTranspose2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.conv(x)).flatten(1)).square().sum()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channels_last_weights_get_their_own_gradient_back(one_process_group, layout):
    torch.manual_seed(0)
    plain = ConvNet().to(memory_format=layout)
    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(plain), bucket_cap_mb=DDP_BUCKET_CAP_MB)
    register_canonical_allreduce(ddp)
    assert ddp.module.conv.weight.is_contiguous(memory_format=layout)
    for step in range(3):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(step)).to(memory_format=layout)
        plain.zero_grad()
        ddp.zero_grad()
        plain(x).backward()
        ddp(x).backward()
        for (name, p), q in zip(plain.named_parameters(), ddp.module.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=1e-7), (step, name)


def test_an_unwrapped_module_is_left_alone():
    m = torch.nn.Linear(2, 2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    register_canonical_allreduce(m)  # one process: nothing to register, no error
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
