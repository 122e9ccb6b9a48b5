"""A prepared split read whole, for evaluation and the feature classifier: its images in the layout
evaluation holds them, and a fingerprint of its shard list (to tell whether features were computed from it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from distgan.data import load_split
from distgan.data.shards import MANIFEST, read_manifest_bytes
from distgan.errors import UserError


def split_fingerprint(split_dir: str | Path) -> str | None:
    """SHA-256 of a prepared split's shard list (names and sha256s from manifest.json); None if unreadable."""
    split_dir = Path(split_dir)
    try:
        manifest = json.loads(read_manifest_bytes(split_dir.parent / MANIFEST))  # bounded, never a FIFO's wait
        shards = manifest["splits"][split_dir.name]["shards"]
        listing = [(str(s["name"]), str(s["sha256"])) for s in shards]
    except (UserError, OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: deep JSON
        return None
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def canonical_images(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 images as evaluation holds them: N x H x W for one channel, N x C x H x W (C = 3) for colour.

    Accepts N x H x W (one channel) and N x C x H x W with C in {1, 3} (the channel axis of one-channel
    images is dropped, as distgan.pixels.to_uint8 does); UserError otherwise."""
    if images.ndim == 4 and images.shape[1] == 1:
        return images[:, 0]
    if images.ndim == 3 or (images.ndim == 4 and images.shape[1] == 3):
        return images
    raise UserError(f"{what}: images have shape {tuple(images.shape)}; expected N x H x W or N x C x H x W "
                    f"with C in {{1, 3}}")


def load_split_images(split_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, int64 labels) of a prepared split, via distgan.data.load_split: images N x H x W
    for one channel (as the loader returns (N, H, W), or (N, 1, H, W)), N x 3 x H x W for colour."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(f"split directory {split_dir} not found; pass --shards DIR, the output of "
                        f"`distgan prepare` (with DIR/train and DIR/test)")
    images, labels = load_split(split_dir)
    return canonical_images(np.asarray(images), str(split_dir)), np.asarray(labels)
