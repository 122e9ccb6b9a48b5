"""Run under `accelerate launch --multi_gpu --num_processes 2`: one GAN iteration on DDP-wrapped G and D,
counting D's and G's all-reduce buckets per phase. Each rank writes its findings to OUT_DIR/rank_<R>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from distgan.collectives import needs_cpu_flag, sync_buffers
from distgan.config import LossConfig, ModelConfig
from distgan.generator.architectures import build_generator
from distgan.hashing import state_dict_sha256
from distgan.training.discriminators import build_discriminator
from distgan.training.gan_step import GANStep
from distgan.training.networks import Networks
from distgan.training.precision import Precision


def main(out_dir: Path) -> None:
    acc = Accelerator(cpu=needs_cpu_flag())
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dcgan", z_dim=8, g_width=4, d_width=4)
    g, d = build_generator(cfg, (1, 28, 28)), build_discriminator(cfg, (1, 28, 28))
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3)
    g, d, opt_g, opt_d = acc.prepare(g, d, opt_g, opt_d)
    calls = {"g": 0, "d": 0}

    def counting(name):
        def hook(state, bucket):
            calls[name] += 1
            return allreduce_hook(state, bucket)
        return hook

    g.register_comm_hook(None, counting("g"))
    d.register_comm_hook(None, counting("d"))
    step = GANStep(acc, Networks(g, d, opt_g, opt_d, ema=None), Precision("no", acc.device),
                   LossConfig(kind="wgan-gp", gp_weight=10.0), z_dim=8, seed=0)
    # Different real data on each rank, as in training.
    real = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(acc.process_index)) * 2 - 1
    fake = g(torch.randn(8, 8, generator=torch.Generator().manual_seed(10 + acc.process_index)))
    step._d_step(real, fake.detach(), torch.Generator().manual_seed(0), want_norm=False)
    after_d = dict(calls)
    d_before_g = state_dict_sha256(acc.unwrap_model(d))
    d_grads_before_g = [p.grad.clone() for p in d.parameters()]
    step._g_step(fake, want_norm=False)
    sync_buffers(acc, (g, d))  # BatchNorm statistics differ per rank until DDP's next forward broadcasts them
    report = {
        "world_size": acc.num_processes, "rank": acc.process_index,
        "d_step_calls": after_d, "g_step_calls": {k: calls[k] - after_d[k] for k in calls},
        "d_unchanged_by_g_step": state_dict_sha256(acc.unwrap_model(d)) == d_before_g,
        "d_grads_unchanged_by_g_step": all(torch.equal(a, p.grad)
                                           for a, p in zip(d_grads_before_g, d.parameters(), strict=True)),
        "g_sha256": state_dict_sha256(acc.unwrap_model(g)), "d_sha256": state_dict_sha256(acc.unwrap_model(d)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank_{acc.process_index}.json").write_text(json.dumps(report))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
