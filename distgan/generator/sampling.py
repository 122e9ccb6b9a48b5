"""Running a generator: its noise, its labels and its images.

A class-conditional generator (`num_classes` K > 0) takes labels (B,) in 0..K-1 beside z; `parse_labels`
reads `--labels all|K|K1,K2,...`, `eval_labels` draws labels in the training set's class frequencies.
Grids of samples are in `distgan.generator.grids`, loading a G from its files in `distgan.generator.loading`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distgan.errors import UserError
from distgan.pixels import to_uint8

LabelsLike = torch.Tensor | np.ndarray | Sequence[int]


def num_classes_of(generator: torch.nn.Module) -> int:
    """K of a conditional generator, 0 for an unconditional one (or one without the attribute)."""
    return int(getattr(generator, "num_classes", 0) or 0)


def is_clustered(generator: torch.nn.Module) -> bool:
    """Whether a conditional G's classes are clusters (a self-conditioned GAN) rather than the data's labels."""
    return bool(getattr(generator, "clustered", False)) and num_classes_of(generator) > 0


def default_labels(generator: torch.nn.Module, n: int, seed: int) -> torch.Tensor | None:
    """The labels of n samples when none are asked for: every class in turn for a class-conditional G, the
    clusters in their frequencies (eval_labels) for a self-conditioned one, None for an unconditional G."""
    k = num_classes_of(generator)
    if not k:
        return None
    return eval_labels(class_freqs_of(generator), n, seed) if is_clustered(generator) else cycle_labels(n, k)


def class_freqs_of(generator: torch.nn.Module) -> torch.Tensor:
    """The training class frequencies (K,) a conditional G carries (`inputs.class_freqs`); uniform if absent."""
    freqs = getattr(getattr(generator, "inputs", None), "class_freqs", None)
    k = num_classes_of(generator)
    return freqs.detach().cpu() if freqs is not None else torch.full((k,), 1.0 / max(k, 1))


def fixed_noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """n noise vectors from `seed` alone (CPU generator), whatever the device or world size."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def cycle_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ... (n of them): every class in turn."""
    return torch.arange(n, dtype=torch.long) % num_classes


def parse_labels(spec: str, num_classes: int, n: int) -> torch.Tensor:
    """The n labels of `--labels`: "all" (every class in turn: i % K), "K" (all K) or "K1,K2,..." (cycled to n).

    UserError (one line) for an unconditional generator (num_classes 0), a malformed spec or a class out of
    0..K-1."""
    spec = " ".join(spec.split())  # stripped, and one line in messages ("1,\n12": int() skips whitespace)
    if num_classes < 1:
        raise UserError(f"--labels {spec}: this generator is unconditional (no classes); drop --labels")
    valid = f"use all, one class K or K1,K2,... with classes 0..{num_classes - 1}"
    if spec.lower() == "all":
        return cycle_labels(n, num_classes)
    parts = [p.strip() for p in spec.split(",")]
    try:
        classes = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--labels {spec!r} is not understood; {valid}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"--labels {spec}: class {bad[0]} is out of range; {valid}")
    return torch.tensor(classes, dtype=torch.long)[torch.arange(n) % len(classes)]


def eval_labels(class_freqs: torch.Tensor | Sequence[float], n: int, seed: int) -> torch.Tensor:
    """n labels whose class counts follow `class_freqs` exactly (largest-remainder allocation of n; ties
    go to the lower class), shuffled by a CPU generator seeded with `seed`: the same on any device and
    world size."""
    freqs = torch.as_tensor(class_freqs, dtype=torch.float64).cpu()
    if freqs.dim() != 1 or len(freqs) < 1 or not bool(torch.isfinite(freqs).all()) or bool((freqs < 0).any()) \
            or float(freqs.sum()) <= 0:
        raise ValueError(f"class frequencies must be a non-negative vector with a positive sum, got {freqs.tolist()}")
    quotas = freqs / freqs.sum() * n
    counts = quotas.floor().long()
    remainders = (quotas - counts).tolist()
    short = n - int(counts.sum())
    by_remainder = sorted(range(len(freqs)), key=lambda k: (-remainders[k], k))  # stable, lower class first
    for k in by_remainder[:short]:
        counts[k] += 1
    labels = torch.repeat_interleave(torch.arange(len(freqs)), counts)
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def check_labels(generator: torch.nn.Module, n: int, labels: LabelsLike | None) -> torch.Tensor | None:
    """`labels` as a CPU LongTensor (n,) checked against the generator: required (values 0..K-1) for a
    conditional G, refused for an unconditional one. UserError (one line) otherwise."""
    k = num_classes_of(generator)
    if k == 0:
        if labels is not None:
            raise UserError("this generator is unconditional: it takes no class labels")
        return None
    if labels is None:
        raise UserError(f"this generator is class-conditional ({k} classes): pass labels, one per sample, "
                        f"in 0..{k - 1}")
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).cpu()
    if y.dim() != 1 or len(y) != n or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserError(f"labels must be integers of shape ({n},), got {y.dtype} of shape {tuple(y.shape)}")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise UserError(f"labels range from {int(y.min())} to {int(y.max())}; this generator's classes are "
                        f"0..{k - 1}")
    return y


def sample_images(generator: torch.nn.Module, n: int, seed: int = 0, labels: LabelsLike | None = None) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) on the CPU from the fixed noise of `seed` (the same on any device).

    A conditional G without `labels` draws every class in turn (sample i is class i % K); a self-conditioned
    one draws its clusters in their frequencies (default_labels)."""
    if labels is None:
        labels = default_labels(generator, n, seed)
    return generate_images(generator, fixed_noise(n, int(generator.z_dim), seed), labels)


@torch.no_grad()
def generate_images(generator: torch.nn.Module, z: torch.Tensor, labels: LabelsLike | None = None,
                    batch_size: int = 500) -> torch.Tensor:
    """uint8 images on the CPU from noise `z` (and, for a conditional G, `labels` (N,) in 0..K-1, which it
    requires), in batches: (N, H, W) for one channel, (N, H, W, C) otherwise (the layout of image files
    and of `distgan sample`'s npz)."""
    y = check_labels(generator, len(z), labels)
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = []
    try:
        for i, chunk in enumerate(z.split(batch_size)):
            if y is None:
                out.append(to_uint8(generator(chunk.to(device))).cpu())
            else:
                part = y[i * batch_size: i * batch_size + len(chunk)].to(device)
                out.append(to_uint8(generator(chunk.to(device), part)).cpu())
    finally:
        generator.train(was_training)
    images = torch.cat(out) if out else torch.empty(0, *generator.image_shape[1:], dtype=torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous() if images.dim() == 4 else images


