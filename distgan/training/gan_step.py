"""One GAN iteration on prepared (DDP-wrapped) models: `d_steps` D updates, then one G update.

- D step: the fake batch is detached; D runs once on the concatenation of real and fake (and, for
  WGAN-GP, interpolated) images, so BatchNorm or DDP buffer broadcasts never see two forwards before one
  backward (pytorch #22095).
- G step: D is frozen (`requires_grad_(False)`) and its forward runs under `no_sync`, so the G loss
  backward neither computes nor all-reduces any D gradient and D's parameters cannot change.
- The fake batch of the last D step is reused for the G step, as in the classic script: one G forward
  per iteration.
- Noise and WGAN-GP interpolation weights come from a generator seeded by (seed, rank, step, phase), so
  a resumed run draws exactly the numbers an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from distgan.config import LossConfig
from distgan.training.losses import d_loss, g_loss, gradient_penalty, interpolate
from distgan.training.networks import Networks
from distgan.training.precision import Precision


def noise_generator(seed: int, rank: int, step: int, phase: int, device: torch.device) -> torch.Generator:
    """A random generator whose stream depends only on (seed, rank, step, phase)."""
    # A fixed odd-multiplier mix keeps distinct tuples apart; Philox/MT seeds accept any 63-bit value.
    mixed = (seed * 1_000_003 + rank) * 2_147_483_647 + step * 31 + phase
    return torch.Generator(device=device).manual_seed(mixed % (2**63 - 1))


@dataclass
class StepStats:
    """Detached per-iteration tensors; read (with a device sync) only at logging time."""

    d_loss: torch.Tensor
    g_loss: torch.Tensor
    gp: torch.Tensor
    d_real: torch.Tensor
    d_fake: torch.Tensor


def _d_output_stat(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Mean D output: the probability D(x) for BCE, the raw critic value otherwise."""
    logits = logits.detach().float()
    return torch.sigmoid(logits).mean() if kind == "bce" else logits.mean()


class GANStep:
    """The D and G updates of one iteration, with per-phase mixed precision."""

    def __init__(self, accelerator: Any, nets: Networks, precision: Precision, loss: LossConfig, *,
                 z_dim: int, seed: int) -> None:
        self.acc, self.nets, self.prec, self.loss = accelerator, nets, precision, loss
        self.z_dim, self.seed = z_dim, seed
        self.grad_norms: dict[str, torch.Tensor] = {}

    def _noise(self, batch: int, step: int, phase: int) -> tuple[torch.Tensor, torch.Generator]:
        gen = noise_generator(self.seed, self.acc.process_index, step, phase, self.acc.device)
        return torch.randn(batch, self.z_dim, device=self.acc.device, generator=gen), gen

    def __call__(self, reals: list[torch.Tensor], step: int, want_grad_norms: bool = False) -> StepStats:
        """Run the iteration that produces G step `step + 1`; `reals` holds `d_steps` real batches."""
        fake = None
        for k, real in enumerate(reals):
            z, gen = self._noise(real.shape[0], step, k)
            last = k == len(reals) - 1
            with self.prec.autocast(), (contextlib.nullcontext() if last else torch.no_grad()):
                fake = self.nets.g(z)  # the last one keeps its graph for the G step
            d_total, gp, real_logits, fake_logits = self._d_step(real, fake.detach(), gen, want_grad_norms and last)
        g_total = self._g_step(fake, want_grad_norms)
        return StepStats(d_total.detach(), g_total.detach(), gp.detach(),
                         _d_output_stat(self.loss.kind, real_logits), _d_output_stat(self.loss.kind, fake_logits))

    def _d_step(self, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator, want_norm: bool):
        n = real.shape[0]
        inputs = [real, fake]
        x_hat = None
        if self.loss.kind == "wgan-gp":
            x_hat = interpolate(real, fake, gen)
            inputs.append(x_hat)
        with self.prec.autocast():
            logits = self.nets.d(torch.cat(inputs))
        real_logits, fake_logits = logits[:n], logits[n:2 * n]
        loss = d_loss(self.loss.kind, real_logits, fake_logits)
        gp = torch.zeros((), device=loss.device)
        if x_hat is not None:
            gp = gradient_penalty(logits[2 * n:], x_hat, loss_scale=self.prec.scale("d"))
            loss = loss + self.loss.gp_weight * gp
        self.nets.opt_d.zero_grad(set_to_none=True)
        self.prec.backward("d", loss, self.acc)
        self._record_norm("d", self.nets.opt_d, self.nets.d, want_norm)
        self.prec.step("d", self.nets.opt_d)
        return loss, gp, real_logits, fake_logits

    def _g_step(self, fake: torch.Tensor, want_norm: bool) -> torch.Tensor:
        d = self.nets.d
        d.requires_grad_(False)
        try:
            with self.acc.no_sync(d), self.prec.autocast():
                fake_logits = d(fake)
            loss = g_loss(self.loss.kind, fake_logits)
            self.nets.opt_g.zero_grad(set_to_none=True)
            self.prec.backward("g", loss, self.acc)
        finally:
            d.requires_grad_(True)
        self._record_norm("g", self.nets.opt_g, self.nets.g, want_norm)
        self.prec.step("g", self.nets.opt_g)
        return loss

    def _record_norm(self, phase: str, opt: torch.optim.Optimizer, model: torch.nn.Module, want: bool) -> None:
        """Unscaled global gradient norm of `model`, only on logging steps (it costs a pass over the grads)."""
        if not want:
            return
        self.prec.unscale_(phase, opt)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.grad_norms[phase] = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
