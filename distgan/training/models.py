"""Generators and discriminators for 28x28 images.

Every G maps z of shape (B, z_dim) to images (B, 1, 28, 28) in [-1, 1] and has a `z_dim` attribute.
Every D maps images (B, 1, 28, 28) to one logit per image, shape (B,).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from distgan.config import ModelConfig

IMAGE_SHAPE = (1, 28, 28)
IMAGE_PIXELS = 28 * 28


class MLPGenerator(nn.Module):
    """The classic MNIST GAN generator: z -> 256 -> 512 -> 1024 -> 784, LeakyReLU(0.2), tanh output."""

    def __init__(self, z_dim: int = 100, hidden: list[int] = (256, 512, 1024)) -> None:
        super().__init__()
        self.z_dim = z_dim
        layers: list[nn.Module] = []
        width = z_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers += [nn.Linear(width, IMAGE_PIXELS), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *IMAGE_SHAPE)


class MLPDiscriminator(nn.Module):
    """The classic MNIST GAN discriminator: 784 -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU(0.2)."""

    def __init__(self, hidden: list[int] = (1024, 512, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = IMAGE_PIXELS
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


class DCGANGenerator(nn.Module):
    """Convolutional G for 28x28: z -> (2w, 7, 7) -> (w, 14, 14) -> (1, 28, 28), BatchNorm + ReLU."""

    def __init__(self, z_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.width = width
        self.project = nn.Sequential(
            nn.Linear(z_dim, 2 * width * 7 * 7, bias=False), nn.BatchNorm1d(2 * width * 7 * 7), nn.ReLU(True)
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
            nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.project(z).view(-1, 2 * self.width, 7, 7))


class DCGANDiscriminator(nn.Module):
    """Convolutional D for 28x28: (1, 28, 28) -> (w, 14, 14) -> (2w, 7, 7) -> logit.

    No BatchNorm: it is wrong for WGAN-GP's per-sample penalty, and spectral norm can replace it.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN's N(0, 0.02) init for conv/linear weights and N(1, 0.02) for BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_generator(cfg: ModelConfig) -> nn.Module:
    """The generator named by `cfg.arch`."""
    if cfg.arch == "mlp":
        return MLPGenerator(cfg.z_dim, cfg.g_hidden)
    g = DCGANGenerator(cfg.z_dim, cfg.g_width)
    g.apply(_dcgan_init)
    return g


def build_discriminator(cfg: ModelConfig) -> nn.Module:
    """The discriminator named by `cfg.arch`."""
    if cfg.arch == "mlp":
        d: nn.Module = MLPDiscriminator(cfg.d_hidden)
    else:
        d = DCGANDiscriminator(cfg.d_width)
        d.apply(_dcgan_init)
    if cfg.spectral_norm:  # after init, so the parametrization wraps the initialised weights
        for m in list(d.modules()):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                spectral_norm(m)
    return d
