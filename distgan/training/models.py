"""Generators and discriminators for images of shape (C, H, W).

Every G maps z of shape (B, z_dim) to images (B, C, H, W) in [-1, 1] and has `z_dim` and
`image_shape` attributes. Every D maps images (B, C, H, W) to one logit per image, shape (B,).

- MLP (the classic MNIST GAN): any shape; the image is flattened.
- DCGAN: 28x28 (7 -> 14 -> 28, as for MNIST) and square powers of two from 16 to 128 (4 -> 8 -> ... ->
  R), with 1 or 3 channels. G's widths halve at every upsampling from `g_width * 2**(levels-1)` (capped
  at 8 x g_width) down to g_width; D's double from `d_width` (capped at 8 x d_width), so both grow with
  the resolution the way DCGAN's do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from distgan.config import ModelConfig
from distgan.errors import UserError
from distgan.pixels import MNIST_SHAPE

DCGAN_SIZES = (16, 28, 32, 64, 128)
CHANNELS = (1, 3)


def _pixels(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


class MLPGenerator(nn.Module):
    """The classic MNIST GAN generator: z -> 256 -> 512 -> 1024 -> C*H*W, LeakyReLU(0.2), tanh output."""

    def __init__(self, z_dim: int = 100, hidden: Sequence[int] = (256, 512, 1024),
                 image_shape: Sequence[int] = MNIST_SHAPE) -> None:
        super().__init__()
        self.z_dim, self.image_shape = z_dim, tuple(image_shape)
        layers: list[nn.Module] = []
        width = z_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers += [nn.Linear(width, _pixels(self.image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    """The classic MNIST GAN discriminator: C*H*W -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU(0.2)."""

    def __init__(self, hidden: Sequence[int] = (1024, 512, 256), image_shape: Sequence[int] = MNIST_SHAPE) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = _pixels(image_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def _dcgan_plan(image_shape: Sequence[int]) -> tuple[int, int]:
    """(start size, number of 2x up/downsamplings) of the DCGAN family for this shape; UserError if none."""
    c, h, w = image_shape
    if c not in CHANNELS or h != w or h not in DCGAN_SIZES:
        sizes = ", ".join(f"{s}x{s}" for s in DCGAN_SIZES)
        raise UserError(f"model.arch=dcgan cannot make images of shape {c}x{h}x{w}; it supports {sizes} with 1 "
                        f"or 3 channels (prepare the data with --resolution R --channels C, or use model.arch=mlp)")
    start = 7 if h == 28 else 4
    return start, round(math.log2(h // start))


class DCGANGenerator(nn.Module):
    """Convolutional G: z -> (w_0, s, s) -> ... -> (C, H, W); BatchNorm + ReLU, stride-2 transposed convs.

    For 28x28 (s = 7, two upsamplings, w_0 = 2w) this is exactly distgan's MNIST DCGAN.
    """

    def __init__(self, z_dim: int = 100, width: int = 64, image_shape: Sequence[int] = MNIST_SHAPE) -> None:
        super().__init__()
        self.z_dim, self.width, self.image_shape = z_dim, width, tuple(image_shape)
        self.start, levels = _dcgan_plan(self.image_shape)
        widths = [width * min(2 ** (levels - 1 - i), 8) for i in range(levels)]  # ..., 4w, 2w, w
        self.top = widths[0]
        self.project = nn.Sequential(nn.Linear(z_dim, self.top * self.start**2, bias=False),
                                     nn.BatchNorm1d(self.top * self.start**2), nn.ReLU(True))
        layers: list[nn.Module] = []
        c_in = self.top
        for c_out in widths[1:]:
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
            c_in = c_out
        layers += [nn.ConvTranspose2d(c_in, self.image_shape[0], 4, 2, 1), nn.Tanh()]
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.project(z).view(-1, self.top, self.start, self.start))


class DCGANDiscriminator(nn.Module):
    """Convolutional D: (C, H, W) -> (w, H/2) -> (2w, H/4) -> ... -> (., s, s) -> logit; LeakyReLU(0.2).

    No BatchNorm: it is wrong for WGAN-GP's per-sample penalty, and spectral norm can replace it.
    """

    def __init__(self, width: int = 64, image_shape: Sequence[int] = MNIST_SHAPE) -> None:
        super().__init__()
        start, levels = _dcgan_plan(image_shape)
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for i in range(levels):
            c_out = width * min(2**i, 8)
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(c_in * start * start, 1)]
        self.net = nn.Sequential(*layers)

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


def build_generator(cfg: ModelConfig, image_shape: Sequence[int] = MNIST_SHAPE) -> nn.Module:
    """The generator named by `cfg.arch`, for images of `image_shape` (C, H, W)."""
    if cfg.arch == "mlp":
        return MLPGenerator(cfg.z_dim, cfg.g_hidden, image_shape)
    g = DCGANGenerator(cfg.z_dim, cfg.g_width, image_shape)
    g.apply(_dcgan_init)
    return g


def build_discriminator(cfg: ModelConfig, image_shape: Sequence[int] = MNIST_SHAPE) -> nn.Module:
    """The discriminator named by `cfg.arch`, for images of `image_shape` (C, H, W)."""
    if cfg.arch == "mlp":
        d: nn.Module = MLPDiscriminator(cfg.d_hidden, image_shape)
    else:
        d = DCGANDiscriminator(cfg.d_width, image_shape)
        d.apply(_dcgan_init)
    if cfg.spectral_norm:  # after init, so the parametrization wraps the initialised weights
        for m in list(d.modules()):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                spectral_norm(m)
    return d
