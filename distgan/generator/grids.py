"""Sample grids: one row per class for a conditional G, the fixed grid the trainer logs and an export shows,
and the PNG files they are saved as."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distgan.atomic import write_bytes_atomic
from distgan.generator.sampling import LabelsLike, fixed_noise, generate_images, num_classes_of


def class_grid(images: np.ndarray | torch.Tensor, labels: LabelsLike, pad: int = 2) -> np.ndarray:
    """A uint8 grid (grid_image's layout) with one row per class present in `labels`, in class order: the
    images of each class in their given order (a stable sort by label), as many columns as the largest
    class has images, empty cells black."""
    images = np.asarray(images)
    y = np.asarray(labels).astype(np.int64)
    if len(y) != len(images):
        raise ValueError(f"{len(images)} images but {len(y)} labels")
    if len(y) == 0:
        return grid_image(images, nrow=1, pad=pad)
    order = np.argsort(y, kind="stable")
    classes, first, counts = np.unique(y[order], return_index=True, return_counts=True)
    ncol = int(counts.max())
    cells = np.zeros((len(classes) * ncol, *images.shape[1:]), dtype=images.dtype)
    for row, (start, count) in enumerate(zip(first, counts, strict=True)):
        cells[row * ncol: row * ncol + count] = images[order[start:start + count]]
    return grid_image(cells, nrow=ncol, pad=pad)


GRID_MAX_CLASSES = 32  # rows of a conditional sample grid


def grid_inputs(generator: torch.nn.Module, grid_size: int, z_dim: int, seed: int) -> tuple[torch.Tensor,
                                                                                             torch.Tensor | None]:
    """The fixed inputs of the trainer's sample grid: for a conditional G, one row of `grid_size` per class
    (at most GRID_MAX_CLASSES rows, evenly spaced classes beyond: 1,000 classes would make a grid of 8,000
    images), noise `fixed_noise(rows * grid_size, z_dim, seed)`; else grid_size**2 noise rows and None."""
    k = num_classes_of(generator)
    if k == 0:
        return fixed_noise(grid_size**2, z_dim, seed), None
    classes = torch.arange(k) if k <= GRID_MAX_CLASSES else torch.linspace(0, k - 1, GRID_MAX_CLASSES).round().long()
    return fixed_noise(len(classes) * grid_size, z_dim, seed), classes.repeat_interleave(grid_size)


def samples_grid(images: np.ndarray, labels: LabelsLike | None) -> np.ndarray:
    """The grid of `distgan sample`: one row per class for labelled samples, else square-ish."""
    if labels is not None:
        return class_grid(images, labels)
    return grid_image(images, nrow=int(np.ceil(np.sqrt(len(images)))))


def fixed_grid(generator: torch.nn.Module, grid_size: int, seed: int) -> np.ndarray:
    """The uint8 grid of `generator` on `grid_inputs(generator, grid_size, z_dim, seed)`: grid_size x grid_size
    samples, or one row of grid_size per class for a conditional G (the trainer's grids, an export's samples)."""
    z, labels = grid_inputs(generator, grid_size, int(generator.z_dim), seed)
    return samples_grid(generate_images(generator, z, labels).numpy(), labels)


def grid_image(images: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W) or (N, H, W, C) into one uint8 (rows*(H+pad)+pad, nrow*(W+pad)+pad[, C])
    grid with `pad` black pixels between."""
    n, h, w = images.shape[:3]
    rows = -(-n // nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, *images.shape[3:]), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 image, grayscale (H, W) or RGB (H, W, 3), as PNG atomically."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
