"""`dataset_info(DIR)`: what a model needs to know about a prepared dataset, read from its manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from distgan.data.shards import MANIFEST, manifest_classes, manifest_layout, read_manifest, read_shard, verify_split


class DatasetInfo(NamedTuple):
    """Image shape (C, H, W); number of classes, their names and their frequencies in the train split
    (fractions summing to 1, in class order), each None for an unlabelled dataset."""

    image_shape: tuple[int, int, int]
    num_classes: int | None
    class_names: tuple[str, ...] | None
    class_frequencies: tuple[float, ...] | None


def _root(data_dir: str | os.PathLike[str]) -> Path:
    """The prepare output for DIR or for one of its split directories."""
    path = Path(data_dir)
    if not (path / MANIFEST).is_file() and (path.parent / MANIFEST).is_file():
        return path.parent
    return path


def dataset_info(data_dir: str | os.PathLike[str]) -> DatasetInfo:
    """DatasetInfo of the `distgan prepare` output DIR (or a split dir of it), from its validated manifest.

    Version-1 (MNIST) manifests hold no class counts: the train split's labels are read (and its
    shards verified) to compute them.
    """
    root = _root(data_dir)
    manifest = read_manifest(root)
    layout = manifest_layout(manifest)
    names = manifest_classes(manifest)
    if names is None:
        return DatasetInfo(layout.shape, None, None, None)
    if manifest["version"] >= 2:
        counts = np.asarray(manifest["classes"]["counts"]["train"], np.float64)
    else:
        verify_split(root, manifest, "train")
        labels = [read_shard(root / "train" / s["name"], layout)[1] for s in manifest["splits"]["train"]["shards"]]
        counts = np.bincount(np.concatenate(labels), minlength=len(names)).astype(np.float64)
    total = counts.sum()
    freqs = tuple(float(c / total) for c in counts) if total else tuple(0.0 for _ in names)
    return DatasetInfo(layout.shape, len(names), names, freqs)


__all__ = ["DatasetInfo", "dataset_info"]
