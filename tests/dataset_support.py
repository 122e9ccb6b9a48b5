"""Real-image datasets for tests: MNIST digits (../shared/data/mnist) written as RGB PNG files in class
folders, tinted per class. Import from any test: `from dataset_support import make_rgb_image_folder`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import MNIST_RAW
from PIL import Image

from distgan.data.idx import FILES, load_pair

# One tint per digit class (RGB multipliers of the white strokes); class folder names sort in digit order.
TINTS = np.array([(255, 64, 64), (64, 255, 64), (64, 64, 255), (255, 255, 64), (255, 64, 255), (64, 255, 255),
                  (255, 160, 64), (160, 64, 255), (64, 160, 160), (255, 255, 255)], np.float64)
CLASS_NAMES = tuple(f"digit{d}" for d in range(10))


def mnist_digits(n_per_class: int, raw: Path = MNIST_RAW) -> list[tuple[int, np.ndarray]]:
    """The first `n_per_class` real test-set digits (28 x 28 uint8) of each class, as (label, image)."""
    images, labels = load_pair(raw / FILES["test_images"], raw / FILES["test_labels"])
    out = []
    for d in range(10):
        idx = np.flatnonzero(labels == d)[:n_per_class]
        assert len(idx) == n_per_class, f"only {len(idx)} test digits of class {d}"
        out += [(d, images[i]) for i in idx]
    return out


def rgb_digit(digit: np.ndarray, label: int, size: int = 32) -> np.ndarray:
    """A 28 x 28 digit centred on a black size x size canvas (no resampling), tinted: uint8 H x W x 3."""
    pad = (size - 28) // 2
    canvas = np.zeros((size, size), np.float64)
    canvas[pad:pad + 28, pad:pad + 28] = digit
    return np.round(canvas[..., None] * TINTS[label] / 255.0).astype(np.uint8)


def make_rgb_image_folder(root: str | Path, n_per_class: int = 20, *, size: int = 32) -> Path:
    """ROOT/digit<d>/<d>_<i>.png: n_per_class real MNIST digits per class as size x size RGB PNG files.
    Returns ROOT (the `distgan prepare --image-folder` argument): 10 classes, hash-based split."""
    root = Path(root)
    for i, (label, digit) in enumerate(mnist_digits(n_per_class)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb_digit(digit, label, size)).save(folder / f"{label}_{i:05d}.png")
    return root


def add_truncated_png(root: str | Path, class_name: str = CLASS_NAMES[0]) -> Path:
    """A real PNG of ROOT cut in half (a download that stopped), saved as ROOT/<class_name>/truncated.png."""
    root = Path(root)
    source = sorted((root / class_name).glob("*.png"))[0]
    data = source.read_bytes()
    bad = root / class_name / "truncated.png"
    bad.write_bytes(data[:len(data) // 2])
    return bad


__all__ = ["TINTS", "CLASS_NAMES", "mnist_digits", "rgb_digit", "make_rgb_image_folder", "add_truncated_png"]
