"""G, D, their optimizers and the EMA of G, built from the config and prepared for the accelerator."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import set_seed

from distgan.config import Config, TrainConfig
from distgan.generator.architectures import build_generator, is_out_of_memory, out_of_memory_error
from distgan.training.discriminators import build_discriminator
from distgan.training.ema import EMA
from distgan.training.grad_sync import register_canonical_allreduce

log = logging.getLogger(__name__)


@dataclass
class Networks:
    """The trained modules: `g` and `d` as returned by `accelerator.prepare` (DDP-wrapped in N processes)."""

    g: torch.nn.Module
    d: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: EMA

    @property
    def modules(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.g, self.d


def build_networks(cfg: Config, accelerator: Any, class_freqs: Sequence[float] | None = None) -> Networks:
    """Fresh G and D (identical on every rank), Adam for each, the EMA of G; all on the accelerator's device.

    A conditional G keeps `class_freqs` (the train split's class frequencies) to draw its fake labels from.
    Memory running out while they are built (or moved to the device) is a one-line UserError naming the
    model's size keys.
    """
    try:
        return _build_networks(cfg, accelerator, class_freqs)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise out_of_memory_error(cfg.model, f"G, D and the EMA of G on {accelerator.device}") from None


def _build_networks(cfg: Config, accelerator: Any, class_freqs: Sequence[float] | None) -> Networks:
    set_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    if cfg.model.image_shape is None:
        raise ValueError("model.image_shape is not set: the trainer fills it in from the dataset's manifest")
    shape = cfg.model.image_shape
    g, d = build_generator(cfg.model, shape), build_discriminator(cfg.model, shape)
    if g.num_classes:
        if class_freqs is None or len(class_freqs) != g.num_classes:
            raise ValueError(f"a conditional G with {g.num_classes} classes needs their frequencies")
        g.inputs.class_freqs.copy_(torch.tensor(class_freqs, dtype=torch.float32))
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())
    if cfg.model.sync_batchnorm and accelerator.num_processes > 1 and has_bn:
        if accelerator.device.type == "cuda":
            g = torch.nn.SyncBatchNorm.convert_sync_batchnorm(g)
        else:  # SyncBatchNorm only runs on GPUs; DDP's buffer broadcast keeps the plain BN statistics equal
            log.warning("model.sync_batchnorm: SyncBatchNorm needs GPUs; keeping BatchNorm on %s",
                        accelerator.device)
    if cfg.train.channels_last:  # 4-D weights only; 1.04 to 1.10x per step on the 2-core CPU (docs/results.md)
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    ema = EMA(g, cfg.ema)
    # fused: one kernel for all parameters. On the 2-core CPU one Adam step over mnist_cgan's G and D takes
    # 0.45 ms fused, 1.8 ms foreach and 5.1 ms with the CPU default (a loop over tensors); mnist_cgan in bf16
    # trains at 16.3 steps/s against 15.2 (`bench profile`, 300 steps, two runs each, evaluation off).
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.train.lr_g, betas=tuple(cfg.train.betas), fused=True)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.train.lr_d, betas=tuple(cfg.train.betas), fused=True)
    g, d, opt_g, opt_d = accelerator.prepare(g, d, opt_g, opt_d)  # never the loader: it is split per rank
    for module in (g, d):  # bitwise the same gradients after a resume, with any number of processes
        register_canonical_allreduce(module)
    ema.module.to(accelerator.device)
    return Networks(g, d, opt_g, opt_d, ema)


def align_optimizer_state(nets: Networks) -> None:
    """Give each optimizer state tensor its parameter's memory layout (after a resume loaded them as saved).

    Fused Adam steps parameter, gradient and state element by element in memory order, so a state saved
    with another layout (a checkpoint from a run with another `train.channels_last`) would pair the wrong
    elements."""
    for opt in (nets.opt_g, nets.opt_d):
        for p, state in opt.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def apply_hyperparameters(nets: Networks, train: TrainConfig) -> None:
    """Set the config's learning rates and betas on both optimizers (after a resume loaded the saved ones)."""
    for opt, lr in ((nets.opt_g, train.lr_g), (nets.opt_d, train.lr_d)):
        for group in opt.param_groups:
            group["lr"], group["betas"] = lr, tuple(train.betas)
