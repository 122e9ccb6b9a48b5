"""Differentiable augmentation (DiffAugment; Zhao et al. 2020, "Differentiable Augmentation for
Data-Efficient GAN Training"): the same random transformations are applied to every image D sees, real
and fake, in the D step and in the G step, and they are differentiable, so G learns through them.

Policies (comma-separated, applied in this order whatever order they are written in):
- `color`: random brightness (+U[-0.5, 0.5]), saturation (x U[0, 2]) and contrast (x U[0.5, 1.5]); for RGB.
- `translation`: shift by up to `translation_ratio` of the size in each direction, zero-filled.
- `cutout`: zero one square of `cutout_ratio` of the size at a random position.

The transformations follow the paper's reference code (images in [-1, 1]; the fill value is 0). Every
random number comes from the `torch.Generator` passed in, which the GAN step seeds by (seed, rank, step,
phase), so a resumed run augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distgan.config import AugmentConfig

POLICIES = ("color", "translation", "cutout")


def _uniform(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """U[0, 1) per image, shaped (B, 1, 1, 1), in x's dtype."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=gen).to(x.dtype)


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random brightness, saturation (a no-op for one channel) and contrast."""
    x = x + (_uniform(x, gen) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(x, gen) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, gen) + 0.5) + mean


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by its own integer offset in [-ratio * size, ratio * size], filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device, generator=gen)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device, generator=gen)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)  # +1: the zero pad
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # (B, C, H+2, W+2): out-of-image reads land on the zero border
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one (ratio * H) x (ratio * W) square per image, centred at a random pixel (clipped at the edges)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device, generator=gen)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device, generator=gen)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch) & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


class DiffAugment:
    """The configured policy as one callable: `augment(images, generator) -> images` (identity when off)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.policies = [p for p in POLICIES if p in cfg.policy_list()]
        self.cfg = cfg

    def __bool__(self) -> bool:
        return bool(self.policies)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for policy in self.policies:
            if policy == "color":
                x = color(x, gen)
            elif policy == "translation":
                x = translation(x, gen, self.cfg.translation_ratio)
            else:
                x = cutout(x, gen, self.cfg.cutout_ratio)
        return x
