"""GAN losses on D's logits: non-saturating BCE, hinge, WGAN with gradient penalty, the relativistic pairing
loss of R3GAN (rpgan), and the R1 penalty (R2 is the same penalty on fake images).

All are computed from logits in float32, so they are safe under autocast (BCELoss is not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss for one batch of real and one of fake logits (without any gradient penalty)."""
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "bce":  # -log D(x) - log(1 - D(G(z))), with D = sigmoid(logit)
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    if kind == "rpgan":  # -log sigmoid(D(x_i) - D(G(z_i))), real i paired with fake i (Huang et al. 2025)
        return F.softplus(fake - real).mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """G's loss: non-saturating -log D(G(z)) for bce, -D(G(z)) for hinge and wgan-gp, and for rpgan
    -log sigmoid(D(G(z_i)) - D(x_i)), which needs the paired `real_logits`."""
    fake = fake_logits.float()
    if kind == "bce":
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    if kind == "rpgan":
        if real_logits is None:
            raise ValueError("the rpgan G loss pairs every fake logit with a real one: pass real_logits")
        return F.softplus(real_logits.float() - fake).mean()
    raise ValueError(f"unknown loss {kind!r}")


def interpolate(real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random points on the lines between real and fake samples (WGAN-GP), requiring grad."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, generator=generator)
    return (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)


def gradient_penalty(critic_out: torch.Tensor, inputs: torch.Tensor, loss_scale: float = 1.0) -> torch.Tensor:
    """mean((||d critic / d inputs||_2 - 1)^2), differentiable (create_graph) for the D update.

    `loss_scale` follows PyTorch's AMP recipe for penalties under fp16: the output is scaled before
    autograd.grad so small gradients do not underflow, then the gradients are unscaled in float32.
    """
    (grads,) = torch.autograd.grad(critic_out.float().sum() * loss_scale, inputs, create_graph=True)
    grads = grads.float() / loss_scale
    norm = grads.flatten(1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, loss_scale: float = 1.0) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over the batch of ||d D(x) / d x||^2 at the real images `real`
    (which must require grad and be upstream of `real_logits`), differentiable for the D update.

    Computed in float32 from a scaled output under fp16, as gradient_penalty is.
    """
    (grads,) = torch.autograd.grad(real_logits.float().sum() * loss_scale, real, create_graph=True)
    grads = grads.float() / loss_scale
    return grads.flatten(1).square().sum(dim=1).mean()
