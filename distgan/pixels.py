"""The one pixel convention: images are uint8 [0, 255] on disk and float [-1, 1] in the models
(real data in training, G's tanh output, the classifier's input)."""

from __future__ import annotations

import torch

# MNIST's (C, H, W): the shape of every file made before shapes were recorded (v1 shards, old checkpoints
# and classifier files), so it is the default wherever a shape is missing.
MNIST_SHAPE: tuple[int, int, int] = (1, 28, 28)


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], same shape."""
    return images.float() / 127.5 - 1.0  # not in place: a float input must stay untouched


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1], (B, C, H, W) -> uint8 (B, H, W) for one channel (the channel axis is
    dropped), (B, C, H, W) otherwise."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1)
