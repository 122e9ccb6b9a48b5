"""Manifest validation and reading (distgan.data.shards): a shard count its declared bytes cannot hold, and a
manifest.json that is no regular file or too big, on a small real `distgan prepare` output made in-process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import NOT_A_FILE

from distgan.data import build_loader, samples_per_epoch
from distgan.data.prepare import prepare
from distgan.data.shards import MANIFEST, MAX_MANIFEST_BYTES, Layout, read_manifest, read_shard, write_shard
from distgan.errors import UserError

BIG = 10**12


@pytest.fixture(scope="module")
def small_out(tmp_path_factory) -> Path:
    """A prepare output of 30 + 10 random 28x28 images of 3 classes, 10 images per shard."""
    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("test", 10)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n, dtype=np.uint8) % 3
    np.savez(root / "src.npz", **arrays)
    prepare(root / "out", npz=root / "src.npz", shard_size=10, progress=False, log=lambda s: None)
    return root / "out"


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def _inflate(manifest: dict, extra: int) -> None:
    """Raise train shard 0's count by `extra`, keeping the split count, totals and class counts consistent."""
    manifest["splits"]["train"]["shards"][0]["count"] += extra
    manifest["splits"]["train"]["count"] += extra
    manifest["totals"]["train"] += extra
    manifest["totals"]["samples"] += extra
    manifest["classes"]["counts"]["train"][0] += extra


def _copy_with(small_out: Path, dest: Path, manifest: dict | None = None) -> Path:
    """`dest`: the shards of `small_out` (hard links) beside `manifest` (default: the real one)."""
    for split in ("train", "test"):
        (dest / split).mkdir(parents=True)
        for shard in (small_out / split).iterdir():
            os.link(shard, dest / split / shard.name)
    if manifest is not None:
        (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("extra", [BIG, 1])
def test_count_beyond_the_declared_bytes_is_refused(small_out, tmp_path, extra):
    """Before the fix, a count raised by 10^12 (totals and class counts kept consistent) passed validation and
    `distgan train` died in numpy's permutation ("Unable to allocate 7.28 TiB"). One more image than the bytes
    can hold is enough to refuse: the declared bytes bound the count (Layout.min_shard_bytes)."""
    manifest = _manifest(small_out)
    shard = manifest["splits"]["train"]["shards"][0]
    layout = Layout((1, 28, 28))
    if extra == 1:  # the most images its bytes hold, plus one
        extra = shard["bytes"] // (layout.image_bytes + layout.label_bytes) + 1 - shard["count"]
    _inflate(manifest, extra)
    out = _copy_with(small_out, tmp_path / "out", manifest)
    start = time.monotonic()
    for call in (lambda: read_manifest(out), lambda: samples_per_epoch(out / "train"),
                 lambda: build_loader(out / "train", batch_size=4, rank=0, world_size=1, num_workers=0, seed=0,
                                      epoch=0)):
        with pytest.raises(UserError) as exc:
            call()
        msg = _one_line(exc)
        assert msg.startswith(f"{out / MANIFEST}: field 'splits.train.shards[0].count' is {shard['count']:,} "
                              f"images, more than the {shard['bytes']:,} bytes of {shard['name']}"), msg
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("shape, label_bytes, n", [((1, 28, 28), 1, 1), ((1, 28, 28), 1, 2500), ((3, 64, 64), 2, 7),
                                                   ((1, 1, 1), 1, 3000), ((3, 1024, 1024), 1, 2)])
def test_real_shards_hold_at_least_the_minimum(tmp_path, shape, label_bytes, n):
    """The bound never refuses a shard `distgan prepare` writes: its size is at least min_shard_bytes."""
    layout = Layout(shape, label_bytes)
    path = tmp_path / "train-000000.tar"
    images = np.zeros((n, *shape), np.uint8)
    write_shard(path, "train", images, np.arange(n) % 7, 0, layout)
    assert path.stat().st_size >= layout.min_shard_bytes(n)
    assert len(read_shard(path, layout)[2]) == n


def _make_huge(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GB to read, none on disk


def _make_just_over(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)


CASES = {"fifo": (NOT_A_FILE["fifo"], "is a FIFO (named pipe), not a manifest file"),
         "dir": (NOT_A_FILE["dir"], "is a directory, not a manifest file"),
         "dev_zero": (NOT_A_FILE["dev_zero"], "is a character device, not a manifest file"),
         "3GB": (_make_huge, f"over {MAX_MANIFEST_BYTES:,} bytes"),
         "cap_plus_1": (_make_just_over, f"over {MAX_MANIFEST_BYTES:,} bytes")}


@pytest.mark.timeout(30)  # a FIFO opened for reading waits for a writer: before the fix, forever
@pytest.mark.parametrize("case", sorted(CASES))
def test_manifest_that_is_no_regular_file_or_too_big(small_out, tmp_path, case):
    """Before the fix a local manifest.json was read whole: 3 GB (MemoryError after 26 s), /dev/zero (3.3 GB)
    or a FIFO (a hang in open()). Now, like a served one, at most MAX_MANIFEST_BYTES of a regular file."""
    make, message = CASES[case]
    out = _copy_with(small_out, tmp_path / "out")
    make(out / MANIFEST)
    start = time.monotonic()
    for call in (lambda: read_manifest(out), lambda: samples_per_epoch(out / "train")):
        with pytest.raises(UserError) as exc:
            call()
        msg = _one_line(exc)
        assert msg.startswith(f"{out / MANIFEST}: {message}") and "distgan prepare --out" in msg, msg
    assert time.monotonic() - start < 2
    if case == "cap_plus_1":  # the cap itself is allowed: a file of that size is read (and then not JSON)
        os.truncate(out / MANIFEST, MAX_MANIFEST_BYTES)
        with pytest.raises(UserError, match="unreadable"):
            read_manifest(out)
