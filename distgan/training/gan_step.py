"""One GAN iteration on prepared (DDP-wrapped) models: `d_steps` D updates, then one G update.

- D step: the fake batch is detached; D runs once on the concatenation of real and fake (and, for
  WGAN-GP, interpolated) images, so BatchNorm or DDP buffer broadcasts never see two forwards before one
  backward (pytorch #22095).
- G step: D is frozen (`requires_grad_(False)`) and its forward runs under `no_sync`, so the G loss
  backward neither computes nor all-reduces any D gradient and D's parameters cannot change.
- The fake batch of the last D step is reused for the G step, as in the classic script: one G forward
  per iteration.
- Class-conditional models: real labels come with the real batch; the fake batch's labels are drawn from
  the training set's class frequencies (G's `class_freqs`) right after its noise.
- DiffAugment (distgan.training.augment) transforms every image D sees, real and fake, in both steps.
- R1 (lazy): every `r1_every` D steps, (r1_gamma / 2) * r1_every * E||grad D(x_real)||^2 joins the D loss,
  the gradient taken with respect to the real images before augmentation (as StyleGAN2-ADA does); R2 is
  the same on the fake images, with r2_gamma (R3GAN).
- rpgan (relativistic pairing, R3GAN): real logit i is paired with fake logit i, in the D loss and in the
  G loss, so the G step runs D on the real batch too (frozen, without sync, as for the fakes).
- Self-conditioned GAN (`labeller`, distgan.training.selfcond): the real batch's labels are its clusters
  (the data's labels are never read) and the fake labels are drawn from the clusters' frequencies.
- Noise, fake labels, augmentation and WGAN-GP interpolation weights come from generators seeded by
  (seed, rank, step, phase), so a resumed run draws exactly the numbers an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from distgan.config import AugmentConfig, LossConfig
from distgan.training.augment import DiffAugment
from distgan.training.losses import d_loss, g_loss, gradient_penalty, interpolate, r1_penalty
from distgan.training.networks import Networks
from distgan.training.precision import Precision


def noise_generator(seed: int, rank: int, step: int, phase: int, device: torch.device) -> torch.Generator:
    """A random generator whose stream depends only on (seed, rank, step, phase)."""
    # A fixed odd-multiplier mix keeps distinct tuples apart; Philox/MT seeds accept any 63-bit value.
    mixed = (seed * 1_000_003 + rank) * 2_147_483_647 + step * 31 + phase
    return torch.Generator(device=device).manual_seed(mixed % (2**63 - 1))


# Phases of noise_generator: D step k draws its noise (and fake labels) from phase k (< 100); its
# augmentation from AUGMENT_D + k; the G step's augmentation from AUGMENT_G.
AUGMENT_D, AUGMENT_G = 100, 200

RealBatch = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]  # images, or (images, labels)


def _split(real: RealBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    return real if isinstance(real, tuple) else (real, None)


@dataclass
class StepStats:
    """Detached per-iteration tensors; read (with a device sync) only at logging time."""

    d_loss: torch.Tensor
    g_loss: torch.Tensor
    gp: torch.Tensor
    d_real: torch.Tensor
    d_fake: torch.Tensor
    r1: torch.Tensor | None  # None on the steps where lazy R1 did not run
    r2: torch.Tensor | None = None  # likewise for R2


def _d_output_stat(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Mean D output: the probability D(x) for BCE, the raw critic value otherwise."""
    logits = logits.detach().float()
    return torch.sigmoid(logits).mean() if kind == "bce" else logits.mean()


class GANStep:
    """The D and G updates of one iteration, with per-phase mixed precision."""

    def __init__(self, accelerator: Any, nets: Networks, precision: Precision, loss: LossConfig, *,
                 z_dim: int, seed: int, augment: AugmentConfig | None = None,
                 class_freqs: torch.Tensor | None = None, labeller: Any | None = None) -> None:
        self.acc, self.nets, self.prec, self.loss = accelerator, nets, precision, loss
        self.z_dim, self.seed = z_dim, seed
        self.augment = DiffAugment(augment or AugmentConfig())
        self.class_freqs = class_freqs.to(accelerator.device) if class_freqs is not None else None
        self.labeller = labeller  # pseudo-labels: `labels(real)` and `freqs` (K,), e.g. SelfConditioning
        self.grad_norms: dict[str, torch.Tensor] = {}

    def _gen(self, step: int, phase: int) -> torch.Generator:
        return noise_generator(self.seed, self.acc.process_index, step, phase, self.acc.device)

    def _fake_inputs(self, batch: int, step: int, phase: int) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                       torch.Generator]:
        """Noise (and, for a conditional G, labels drawn from the class frequencies) for one fake batch."""
        gen = self._gen(step, phase)
        z = torch.randn(batch, self.z_dim, device=self.acc.device, generator=gen)
        labels = None
        freqs = self.labeller.freqs if self.labeller is not None else self.class_freqs
        if freqs is not None:
            labels = torch.multinomial(freqs, batch, replacement=True, generator=gen)
        return z, labels, gen

    def __call__(self, reals: list[RealBatch], step: int, want_grad_norms: bool = False) -> StepStats:
        """Run the iteration that produces G step `step + 1`; `reals` holds `d_steps` real batches, each
        images or (images, labels)."""
        fake = fake_labels = None
        for k, batch in enumerate(reals):
            real, real_labels = _split(batch)
            if self.labeller is not None:
                real_labels = self.labeller.labels(real)
            elif self.class_freqs is None:
                real_labels = None  # an unconditional D takes none
            z, fake_labels, gen = self._fake_inputs(real.shape[0], step, k)
            last = k == len(reals) - 1
            with self.prec.autocast(), (contextlib.nullcontext() if last else torch.no_grad()):
                fake = self.nets.g(z, fake_labels)  # the last one keeps its graph for the G step
            d_step = step * len(reals) + k  # D steps so far, for lazy R1
            d_total, gp, r1, r2, real_logits, fake_logits = self._d_step(
                real, fake.detach(), gen, want_grad_norms and last, real_labels=real_labels,
                fake_labels=fake_labels, aug_gen=self._gen(step, AUGMENT_D + k), d_step=d_step)
        paired = {"real": real, "real_labels": real_labels} if self.loss.kind == "rpgan" else {}
        g_total = self._g_step(fake, want_grad_norms, fake_labels=fake_labels, aug_gen=self._gen(step, AUGMENT_G),
                               **paired)
        return StepStats(d_total.detach(), g_total.detach(), gp.detach(),
                         _d_output_stat(self.loss.kind, real_logits), _d_output_stat(self.loss.kind, fake_logits),
                         None if r1 is None else r1.detach(), None if r2 is None else r2.detach())

    def _penalty_due(self, d_step: int, gamma: float) -> bool:
        """Whether a lazy gradient penalty of weight `gamma` (R1's or R2's) runs at D step `d_step`."""
        return gamma > 0 and d_step % self.loss.r1_every == 0

    def _d_step(self, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator, want_norm: bool, *,
                real_labels: torch.Tensor | None = None, fake_labels: torch.Tensor | None = None,
                aug_gen: torch.Generator | None = None, d_step: int = 1):
        n = real.shape[0]
        r1_due, r2_due = (self._penalty_due(d_step, gamma) for gamma in (self.loss.r1_gamma, self.loss.r2_gamma))
        if r1_due:
            real = real.detach().requires_grad_(True)
        if r2_due:
            fake = fake.detach().requires_grad_(True)
        inputs = torch.cat([real, fake])
        if self.augment:
            inputs = self.augment(inputs, aug_gen if aug_gen is not None else gen)
        parts = [inputs]
        labels = None if real_labels is None else torch.cat([real_labels, fake_labels])
        x_hat = None
        if self.loss.kind == "wgan-gp":
            x_hat = interpolate(inputs[:n], inputs[n:], gen)
            parts.append(x_hat)
            labels = None if labels is None else torch.cat([labels, real_labels])
        with self.prec.autocast():
            logits = self.nets.d(torch.cat(parts) if len(parts) > 1 else inputs, labels)
        real_logits, fake_logits = logits[:n], logits[n:2 * n]
        loss = d_loss(self.loss.kind, real_logits, fake_logits)
        gp = torch.zeros((), device=loss.device)
        r1 = r2 = None
        if x_hat is not None:
            gp = gradient_penalty(logits[2 * n:], x_hat, loss_scale=self.prec.scale("d"))
            loss = loss + self.loss.gp_weight * gp
        if r1_due:
            r1 = r1_penalty(real_logits, real, loss_scale=self.prec.scale("d"))
            loss = loss + (self.loss.r1_gamma / 2) * self.loss.r1_every * r1
        if r2_due:
            r2 = r1_penalty(fake_logits, fake, loss_scale=self.prec.scale("d"))  # R2: R1's penalty on the fakes
            loss = loss + (self.loss.r2_gamma / 2) * self.loss.r1_every * r2
        self.nets.opt_d.zero_grad(set_to_none=True)
        self.prec.backward("d", loss, self.acc)
        self._record_norm("d", self.nets.opt_d, self.nets.d, want_norm)
        self.prec.step("d", self.nets.opt_d)
        return loss, gp, r1, r2, real_logits, fake_logits

    def _g_step(self, fake: torch.Tensor, want_norm: bool, *, fake_labels: torch.Tensor | None = None,
                aug_gen: torch.Generator | None = None, real: torch.Tensor | None = None,
                real_labels: torch.Tensor | None = None) -> torch.Tensor:
        """G's update; `real` (and its labels) only for rpgan, whose G loss pairs each fake with a real."""
        d = self.nets.d
        d.requires_grad_(False)
        try:
            n = fake.shape[0]
            inputs = fake if real is None else torch.cat([fake, real.detach()])
            labels = fake_labels if real is None or fake_labels is None else torch.cat([fake_labels, real_labels])
            if self.augment:
                inputs = self.augment(inputs, aug_gen)
            with self.acc.no_sync(d), self.prec.autocast():
                logits = d(inputs, labels)
            loss = g_loss(self.loss.kind, logits[:n], None if real is None else logits[n:])
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
