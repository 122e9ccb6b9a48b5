"""A trained generator from its files (a checkpoint, a run directory's latest, or an export), and the files
`distgan sample` writes from it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from distgan.atomic import write_bytes_atomic
from distgan.config import Config
from distgan.errors import UserError
from distgan.generator.architectures import build_generator
from distgan.generator.export import is_export_dir, load_exported
from distgan.generator.grids import samples_grid, save_png
from distgan.generator.sampling import num_classes_of, parse_labels, sample_images
from distgan.run.checkpoint import EMA_FILE, resolve_checkpoint
from distgan.run.resume import saved_config


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """The EMA generator (eval mode) and config of a checkpoint directory, a run directory's latest, or a
    folder written by `distgan export` (distgan.generator.export). A conditional G is rebuilt from the saved
    `model.conditional`/`model.num_classes`; its class frequencies come with its weights."""

    if is_export_dir(path):
        return load_exported(path, device)
    ckpt = resolve_checkpoint(path)
    cfg = saved_config(ckpt)
    g = build_generator(cfg.model, cfg.model.image_shape)
    g.load_state_dict(load_file(str(ckpt / EMA_FILE)))
    return g.to(device).eval(), cfg



def write_samples(checkpoint: str | Path, *, n: int, seed: int, out: str | Path, grid: str | Path | None = None,
                  device: str | torch.device = "cpu", labels: str | None = None) -> np.ndarray:
    """Generate `n` images from a checkpoint's EMA G with noise from `seed`; write them to `out` (.npz, key
    `images`, plus `labels` for a conditional G) and optionally a PNG grid (one row per class for a
    conditional G), both atomically. `labels` is `--labels`' spec (default "all" for a conditional G; an
    error for an unconditional one). Returns the uint8 images."""
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not str(out).endswith(".npz"):
        raise UserError(f"--out {out}: the output must be a .npz file")
    g, _ = load_generator(checkpoint, device)
    k = num_classes_of(g)
    y = parse_labels(labels if labels is not None else "all", k, n) if (k or labels is not None) else None
    images = sample_images(g, n, seed, y).numpy()
    arrays = {"images": images} if y is None else {"images": images, "labels": y.numpy()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes_atomic(out, buf.getvalue())
    if grid:
        save_png(Path(grid), samples_grid(images, y))
    return images
