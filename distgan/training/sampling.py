"""`distgan sample`: images from a checkpoint's EMA generator, and the helpers to load and run it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from distgan.atomic import write_bytes_atomic
from distgan.config import Config
from distgan.errors import UserError
from distgan.pixels import to_uint8
from distgan.training.checkpoint import EMA_FILE, resolve_checkpoint, saved_config
from distgan.training.models import build_generator
from distgan.training.tracking import grid_image, save_png


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """The EMA generator (eval mode) and config of a checkpoint directory, a run directory's latest, or a
    folder written by `distgan export` (distgan.training.export)."""

    from distgan.training.export import is_export_dir, load_exported

    if is_export_dir(path):
        return load_exported(path, device)
    ckpt = resolve_checkpoint(path)
    cfg = saved_config(ckpt)
    g = build_generator(cfg.model, cfg.model.image_shape)
    g.load_state_dict(load_file(str(ckpt / EMA_FILE)))
    return g.to(device).eval(), cfg


def fixed_noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """n noise vectors from `seed` alone (CPU generator), whatever the device or world size."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def sample_images(generator: torch.nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) on the CPU from the fixed noise of `seed` (the same on any device)."""
    return generate_images(generator, fixed_noise(n, int(generator.z_dim), seed))


@torch.no_grad()
def generate_images(generator: torch.nn.Module, z: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """uint8 images on the CPU from noise `z`, in batches: (N, H, W) for one channel, (N, H, W, C) otherwise
    (the layout of image files and of `distgan sample`'s npz)."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = [to_uint8(generator(chunk.to(device))).cpu() for chunk in z.split(batch_size)]
    generator.train(was_training)
    images = torch.cat(out) if out else torch.empty(0, *generator.image_shape[1:], dtype=torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous() if images.dim() == 4 else images


def write_samples(checkpoint: str | Path, *, n: int, seed: int, out: str | Path, grid: str | Path | None = None,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Generate `n` images from a checkpoint's EMA G with noise from `seed`; write them to `out` (.npz, key
    `images`) and optionally a PNG grid, both atomically. Returns the uint8 images."""
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not str(out).endswith(".npz"):
        raise UserError(f"--out {out}: the output must be a .npz file")
    g, _ = load_generator(checkpoint, device)
    images = sample_images(g, n, seed).numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images)
    write_bytes_atomic(out, buf.getvalue())
    if grid:
        save_png(Path(grid), grid_image(images, nrow=int(np.ceil(np.sqrt(len(images))))))
    return images
