"""The discriminators D (MLP and DCGAN, with a projection head when class-conditional): only training needs
them, so they live beside the GAN step, not with the generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from distgan.config import ModelConfig
from distgan.generator.architectures import _dcgan_init, _dcgan_plan, _pixels, model_classes


class Projection(nn.Module):
    """The projection term embed(y) . phi(x) of a projection discriminator (zero without classes)."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, phi: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | float:
        if self.embed is None:
            return 0.0
        if labels is None:
            raise ValueError("this discriminator is class-conditional: pass labels (B,) with values 0..K-1")
        return (self.embed(labels).to(phi.dtype) * phi).sum(dim=1)


class MLPDiscriminator(nn.Module):
    """The classic MNIST GAN discriminator: C*H*W -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU(0.2)."""

    def __init__(self, hidden: Sequence[int], image_shape: Sequence[int], num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = _pixels(image_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)
        self.project = Projection(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): the last hidden layer, which the logit and the projection read (the self-conditioned
        GAN clusters it)."""
        return self.net(x.flatten(1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.features(x)
        return self.out(phi).squeeze(1) + self.project(phi, labels)


class DCGANDiscriminator(nn.Module):
    """Convolutional D: (C, H, W) -> (w, H/2) -> (2w, H/4) -> ... -> (., s, s) -> logit; LeakyReLU(0.2).

    No BatchNorm: it is wrong for WGAN-GP's per-sample penalty and R1, and spectral norm can replace it.
    Conditional: a projection term on the flattened last features.
    """

    def __init__(self, width: int, image_shape: Sequence[int], num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        start, levels = _dcgan_plan(image_shape)
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for i in range(levels):
            c_out = width * min(2**i, 8)
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(c_in * start * start, 1)
        self.project = Projection(c_in * start * start, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): the flattened last conv features, which the logit and the projection read."""
        return self.net(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.features(x)
        return self.out(phi).squeeze(1) + self.project(phi, labels)


def build_discriminator(cfg: ModelConfig, image_shape: Sequence[int]) -> nn.Module:
    """The discriminator named by `cfg.arch`, for images of `image_shape` (C, H, W)."""
    k = model_classes(cfg)
    if cfg.arch == "mlp":
        d: nn.Module = MLPDiscriminator(cfg.d_hidden, image_shape, k)
    else:
        d = DCGANDiscriminator(cfg.d_width, image_shape, k)
        d.apply(_dcgan_init)
    if cfg.spectral_norm:  # after init, so the parametrization wraps the initialised weights
        for m in list(d.modules()):
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):  # the projection embedding too (Miyato)
                spectral_norm(m)
    return d
