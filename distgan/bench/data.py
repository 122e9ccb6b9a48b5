"""`distgan bench data --shards DIR`: images/s through build_loader against in-memory slicing.

DIR is the `distgan prepare` output (its `train` split is used, or `--split`) or a split directory, of
any image shape, packed (distgan's own format) or standard webdataset shards (format version 4: one
encoded image per sample, `prepare --webdataset` or `prepare --format standard`). Also prints the
per-image decode cost of three sample encodings (raw bytes, npy, PNG) with webdataset's own
encoders/decoders, which is why the shards hold packed raw bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from distgan.data import build_loader, dataset_info, load_split, samples_per_epoch
from distgan.data.remote import local_split
from distgan.data.shards import MANIFEST, is_standard, read_manifest
from distgan.errors import UserError


def _split_dir(shards: Path, split: str) -> Path:
    """The split directory for DIR (prepare output) or DIR (already a split dir)."""
    if (shards / MANIFEST).is_file():
        return shards / split
    if (shards.parent / MANIFEST).is_file():
        return shards
    raise UserError(f"--shards {shards}: no {MANIFEST} here or in the parent; pass the `distgan prepare` "
                    f"output directory or one of its split directories")


def _loader_rate(split_dir: Path, batch_size: int, workers: int, min_seconds: float) -> tuple[float, int, float]:
    """(images/s, epochs, seconds) iterating whole epochs, a fresh loader per epoch as a trainer does."""
    images, epoch = 0, 0
    start = time.perf_counter()
    while epoch == 0 or time.perf_counter() - start < min_seconds:
        loader = build_loader(split_dir, batch_size=batch_size, rank=0, world_size=1, num_workers=workers,
                              seed=0, epoch=epoch)
        for batch in loader:
            images += batch["image"].shape[0]
        epoch += 1
    seconds = time.perf_counter() - start
    return images / seconds, epoch, seconds


def _memory_rate(split_dir: Path, batch_size: int, min_seconds: float) -> tuple[float, int, float]:
    """(images/s, epochs, seconds) slicing shuffled batches out of one in-memory uint8 tensor."""
    x, y = load_split(split_dir)  # (N, C, H, W)
    images, epoch = 0, 0
    start = time.perf_counter()
    while epoch == 0 or time.perf_counter() - start < min_seconds:
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            batch = {"image": x[idx], "label": y[idx]}
            images += batch["image"].shape[0]
        epoch += 1
    seconds = time.perf_counter() - start
    return images / seconds, epoch, seconds


def _per_sample_wds_rate(split_dir: Path, batch_size: int, min_seconds: float) -> tuple[float, int, float]:
    """(images/s, epochs, seconds) for the naive layout: one tar sample per image (raw bytes + label),
    read by a plain webdataset pipeline that batches in Python; the baseline the packed shards beat."""
    import tempfile

    import webdataset as wds

    x, y = load_split(split_dir)
    shape = tuple(x.shape[1:])
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "per-sample.tar")
        with open(path, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as writer:
            for i, (img, label) in enumerate(zip(x.numpy(), y.tolist(), strict=True)):
                writer.write({"__key__": f"{i:06d}", "u8": img.tobytes(), "cls": str(label).encode()})

        def decode(s: dict) -> tuple[np.ndarray, int]:
            return np.frombuffer(s["u8"], np.uint8).reshape(shape), int(s["cls"])

        images, epoch = 0, 0
        start = time.perf_counter()
        while epoch == 0 or time.perf_counter() - start < min_seconds:
            for batch in wds.WebDataset(path, shardshuffle=False).map(decode).batched(batch_size, partial=False):
                images += len(batch[0])
            epoch += 1
        seconds = time.perf_counter() - start
    return images / seconds, epoch, seconds


def _decode_costs(split_dir: Path, n: int) -> list[tuple[str, float, int]]:
    """(encoding, microseconds per image, bytes per image) decoding n images with webdataset's codecs.

    Images are compared in each codec's own layout: C x H x W for raw bytes and npy, H x W (grayscale)
    or H x W x 3 for PNG."""
    import webdataset as wds
    from webdataset import autodecode

    x, _ = load_split(split_dir)
    shape = tuple(x.shape[1:])
    gray = shape[0] == 1
    imgs = [a for a in x[:n].numpy()]
    png_decode = autodecode.imagehandler("l8" if gray else "rgb8")

    def hwc(a: np.ndarray) -> np.ndarray:
        return a[0] if gray else np.ascontiguousarray(a.transpose(1, 2, 0))

    encodings: list[tuple[str, Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]] = [
        ("raw uint8 bytes (.u8)", lambda a: a.tobytes(),
         lambda b: np.frombuffer(b, np.uint8).reshape(shape)),
        ("npy (.npy)", wds.writer.numpy_dumps, autodecode.npy_loads),
        ("PNG (.png)", lambda a: wds.writer.imageencoder(hwc(a), "png"),
         lambda b: np.asarray(png_decode("png", b))),
    ]
    rows = []
    for name, encode, decode in encodings:
        blobs = [encode(a) for a in imgs]
        want = hwc(imgs[0]) if name.startswith("PNG") else imgs[0]
        if not np.array_equal(decode(blobs[0]), want):
            raise AssertionError(f"{name} does not round-trip a {shape} image")
        start = time.perf_counter()
        for b in blobs:
            decode(b)
        rows.append((name, (time.perf_counter() - start) / len(blobs) * 1e6, sum(map(len, blobs)) // len(blobs)))
    return rows


def bench_data(shards: Path, *, split: str = "train", batch_size: int = 256, workers: Sequence[int] = (0, 2),
               min_seconds: float = 2.0, encodings: bool = True) -> float:
    """Print the tables, `data_ratio=` and, last, `loader_img_per_s=`; return the best loader images/s."""
    split_dir = _split_dir(Path(shards), split)
    n = samples_per_epoch(split_dir)
    torch.set_num_threads(1)
    info = dataset_info(split_dir)
    c, h, w = info.image_shape
    manifest = read_manifest(local_split(split_dir).parent)
    kind = f"standard .{manifest['sample']['image_ext']} shards" if is_standard(manifest) else "packed shards"
    print(f"distgan bench data: {split_dir} ({n} samples of {c}x{h}x{w}, {kind}), batch {batch_size}, "
          f">= {min_seconds:g} s per row, torch threads 1")
    if encodings:
        print("\n| sample encoding | decode us/image | bytes/image |\n| --- | ---: | ---: |")
        for name, us, size in _decode_costs(split_dir, min(n, 2000)):
            print(f"| {name} | {us:.2f} | {size} |")
    print("\n| source | images/s | epochs | seconds |\n| --- | ---: | ---: | ---: |")
    best = 0.0
    for w in workers:
        rate, epochs, seconds = _loader_rate(split_dir, batch_size, w, min_seconds)
        best = max(best, rate)
        print(f"| build_loader, {w} workers | {rate:,.0f} | {epochs} | {seconds:.2f} |", flush=True)
    if encodings:
        rate, epochs, seconds = _per_sample_wds_rate(split_dir, batch_size, min_seconds)
        print(f"| (baseline) plain webdataset, one tar sample per image, 0 workers | {rate:,.0f} | {epochs} | "
              f"{seconds:.2f} |", flush=True)
    mem, epochs, seconds = _memory_rate(split_dir, batch_size, min_seconds)
    print(f"| in-memory uint8 tensor, random batches | {mem:,.0f} | {epochs} | {seconds:.2f} |")
    print(f"\ndata_ratio={best / mem:.3f}")
    print(f"loader_img_per_s={best:.0f}")
    return best
