"""Generators (and the building blocks the discriminators share) for images of shape (C, H, W).

Every G maps z of shape (B, z_dim) (and, when conditional, class labels (B,)) to images (B, C, H, W) in
[-1, 1] and has `z_dim`, `image_shape` and `num_classes` attributes (0: unconditional). Every D maps images
(B, C, H, W) (and labels, when conditional) to one logit per image, shape (B,).

Class-conditional models (`model.conditional`):
- G joins a learned class embedding to z; the DCGAN G also uses class-conditional BatchNorm (a per-class
  scale and shift after a shared, affine-free BatchNorm; de Vries et al. 2017, as in SNGAN/BigGAN).
- D is a projection discriminator (Miyato & Koyama 2018): logit = w . phi(x) + embed(y) . phi(x).
- A conditional G keeps the training set's class frequencies in its `class_freqs` buffer, so a checkpoint
  or an export alone can draw labels as the data has them.
- A self-conditioned G (`model.conditional: clusters`) is the same conditional G; its classes are clusters
  of the training images (their sizes in `class_freqs`) and its `clustered` attribute is True.

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

from distgan.config import ModelConfig
from distgan.errors import UserError

DCGAN_SIZES = (16, 28, 32, 64, 128)
CHANNELS = (1, 3)


CLASS_EMBED_DIM = 32  # width of G's class embedding, joined to z


def _pixels(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


class ClassInput(nn.Module):
    """G's input: z, or z joined to a learned embedding of the class; holds the class frequencies."""

    def __init__(self, z_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, CLASS_EMBED_DIM) if num_classes else None
        self.width = z_dim + (CLASS_EMBED_DIM if num_classes else 0)
        if num_classes:
            self.register_buffer("class_freqs", torch.full((num_classes,), 1.0 / num_classes))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.embed is None:
            return z
        if labels is None:
            raise ValueError("this generator is class-conditional: pass labels (B,) with values 0..K-1")
        return torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a per-class scale (init 1) and shift (init 0)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class MLPGenerator(nn.Module):
    """The classic MNIST GAN generator: z -> 256 -> 512 -> 1024 -> C*H*W, LeakyReLU(0.2), tanh output."""

    def __init__(self, z_dim: int, hidden: Sequence[int], image_shape: Sequence[int], num_classes: int = 0) -> None:
        super().__init__()
        self.z_dim, self.image_shape, self.num_classes = z_dim, tuple(image_shape), num_classes
        self.inputs = ClassInput(z_dim, num_classes)
        layers: list[nn.Module] = []
        width = self.inputs.width
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers += [nn.Linear(width, _pixels(self.image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.inputs(z, labels)).view(-1, *self.image_shape)


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

    For 28x28 (s = 7, two upsamplings, w_0 = 2w) this is exactly distgan's MNIST DCGAN. Conditional: the
    class embedding is joined to z and every BatchNorm2d after an upsampling is class-conditional.
    """

    def __init__(self, z_dim: int, width: int, image_shape: Sequence[int], num_classes: int = 0) -> None:
        super().__init__()
        self.z_dim, self.width, self.image_shape, self.num_classes = z_dim, width, tuple(image_shape), num_classes
        self.start, levels = _dcgan_plan(self.image_shape)
        widths = [width * min(2 ** (levels - 1 - i), 8) for i in range(levels)]  # ..., 4w, 2w, w
        self.top = widths[0]
        self.inputs = ClassInput(z_dim, num_classes)
        self.project = nn.Sequential(nn.Linear(self.inputs.width, self.top * self.start**2, bias=False),
                                     nn.BatchNorm1d(self.top * self.start**2), nn.ReLU(True))
        self.blocks = nn.ModuleList()
        c_in = self.top
        for c_out in widths[1:]:
            self.blocks.append(UpBlock(c_in, c_out, num_classes))
            c_in = c_out
        self.to_image = nn.ConvTranspose2d(c_in, self.image_shape[0], 4, 2, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(self.inputs(z, labels)).view(-1, self.top, self.start, self.start)
        for block in self.blocks:
            x = block(x, labels)
        return torch.tanh(self.to_image(x))


class UpBlock(nn.Module):
    """Stride-2 transposed conv, BatchNorm (class-conditional when there are classes), ReLU."""

    def __init__(self, c_in: int, c_out: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
        self.norm = ConditionalBatchNorm2d(c_out, num_classes) if num_classes else nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x)
        return torch.relu(self.norm(x, labels) if isinstance(self.norm, ConditionalBatchNorm2d) else self.norm(x))


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN's N(0, 0.02) init for conv/linear weights and N(1, 0.02) for BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):  # not the class embeddings
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def model_classes(cfg: ModelConfig) -> int:
    """K for a conditional model (`model.num_classes`, filled in from the data; `model.clusters` for a
    self-conditioned one), 0 for an unconditional one."""
    if not cfg.conditional:
        return 0
    if cfg.conditional == "clusters":  # a self-conditioned model: K clusters (the config checks it is set)
        return int(cfg.clusters)
    if not cfg.num_classes:
        raise UserError("model.conditional=true needs a labelled dataset (model.num_classes is taken from the "
                        "data's manifest); prepare the data with labels or set model.conditional=false")
    return int(cfg.num_classes)


def build_generator(cfg: ModelConfig, image_shape: Sequence[int]) -> nn.Module:
    """The generator named by `cfg.arch`, for images of `image_shape` (C, H, W)."""
    k = model_classes(cfg)
    if cfg.arch == "mlp":
        g: nn.Module = MLPGenerator(cfg.z_dim, cfg.g_hidden, image_shape, k)
    else:
        g = DCGANGenerator(cfg.z_dim, cfg.g_width, image_shape, k)
        g.apply(_dcgan_init)
    g.clustered = cfg.conditional == "clusters"  # its classes are clusters, not the data's labels
    return g


def model_sizes(cfg: ModelConfig) -> str:
    """The config keys that set the networks' sizes, with their values (for a one-line error)."""
    widths = (f"model.g_hidden={list(cfg.g_hidden)}, model.d_hidden={list(cfg.d_hidden)}" if cfg.arch == "mlp"
              else f"model.g_width={cfg.g_width}, model.d_width={cfg.d_width}")
    shape = list(cfg.image_shape) if cfg.image_shape is not None else None
    return f"model.arch={cfg.arch}, {widths}, model.z_dim={cfg.z_dim}, image shape {shape}"


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is a failed allocation: MemoryError, or torch's RuntimeError for one (CPU: "can't allocate
    memory"; CUDA: OutOfMemoryError)."""
    if isinstance(e, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e))


def out_of_memory_error(cfg: ModelConfig, what: str) -> UserError:
    """The one line for an allocation that failed while building `what` from `cfg`."""
    return UserError(f"not enough memory to build {what} ({model_sizes(cfg)}); use smaller model sizes, "
                     f"or a machine (or device) with more memory")
