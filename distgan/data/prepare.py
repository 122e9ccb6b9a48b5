"""`distgan prepare` as a library function: MNIST IDX files (local or downloaded) -> the shards and
manifest of distgan.data.shards, in an output directory that it locks and only ever cleans of its own files.

Ownership: DIR may hold other things (a `raw/` download folder, notes...), but `prepare` refuses a
DIR whose manifest.json is not distgan's, or that has no manifest but tar files in train/ or test/;
it removes only shard files named by its own pattern (`<split>-NNNNNN.tar`) in a DIR that carries its
manifest. While it rewrites shards, manifest.json is a distgan placeholder that readers refuse, so a
crash leaves neither a stale manifest over new shards nor a DIR that looks foreign.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distgan.data.download import OFFICIAL_MD5, download_mnist, resolve_mirrors
from distgan.data.idx import COLS, FILES, ROWS, find_raw_files, load_pair
from distgan.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PACK_SIZE,
    SPLITS,
    is_distgan_manifest,
    is_shard_name,
    read_manifest,
    shard_name,
    verify_split,
    write_incomplete_manifest,
    write_manifest,
    write_shard,
)
from distgan.errors import UserError
from distgan.hashing import file_sha256
from distgan.locks import DirLock

DEFAULT_SHARD_SIZE = 5000
# split -> (role of its images file, role of its labels file) in distgan.data.idx.FILES
SOURCES: dict[str, tuple[str, str]] = {
    "train": ("train_images", "train_labels"),
    "test": ("test_images", "test_labels"),
}


def check_ownership(out: Path) -> None:
    """Refuse (one-line UserError) an output directory that holds another tool's dataset."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            ours = is_distgan_manifest(json.loads(manifest.read_text()))
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise UserError(f"--out {out}: {manifest} is not a distgan shard manifest, so this directory "
                            f"belongs to something else and prepare will not overwrite it; choose a new or "
                            f"empty --out directory")
        return
    for split in SPLITS:
        foreign = sorted(p.name for p in (out / split).glob("*.tar")) if (out / split).is_dir() else []
        if foreign:
            raise UserError(f"--out {out}: {out / split} holds tar files ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}) but there is no distgan manifest.json; "
                            f"they are not distgan's, so choose a new or empty --out directory (or delete "
                            f"them if they are)")


def _source_checksums(paths: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """md5 and sha256 of each source file, keyed by the official file name."""
    return {FILES[role]: {"file": p.name, "md5": file_sha256(p, "md5"), "sha256": file_sha256(p)}
            for role, p in sorted(paths.items())}


def _is_up_to_date(out: Path, source: Mapping[str, Any], shard_size: int) -> bool:
    """True if DIR already holds a valid, complete output for exactly this input and shard size."""
    try:
        manifest = read_manifest(out)
        if manifest["source"] != source or manifest["shard_size"] != shard_size \
                or set(manifest["splits"]) != set(SPLITS):
            return False
        for split in SPLITS:
            verify_split(out, manifest, split)
    except UserError:
        return False
    return True


def _write_split(out: Path, split: str, images: np.ndarray, labels: np.ndarray,
                 shard_size: int) -> dict[str, Any]:
    """Write one split's shards, remove its stale distgan shards, and return its manifest entry."""
    split_dir = out / split
    split_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, lo in enumerate(range(0, len(images), shard_size)):
        hi = min(lo + shard_size, len(images))
        path = split_dir / shard_name(split, i)
        write_shard(path, split, images[lo:hi], labels[lo:hi], lo)
        shards.append({"name": path.name, "count": hi - lo, "bytes": path.stat().st_size,
                       "sha256": file_sha256(path)})
    keep = {s["name"] for s in shards}
    for stale in split_dir.iterdir():
        if is_shard_name(split, stale.name) and stale.name not in keep and stale.is_file():
            stale.unlink()
    return {"count": int(len(images)), "shards": shards}


def _manifest(splits: Mapping[str, Any], source: Mapping[str, Any], shard_size: int) -> dict[str, Any]:
    """The manifest of a finished output."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sample": {"image": [ROWS, COLS], "dtype": "uint8", "pack_size": PACK_SIZE,
                   "members": {"images.u8": "n*28*28 raw uint8, row-major", "labels.u8": "n raw uint8",
                               "keys.txt": "n newline-separated sample keys"}},
        "shard_size": shard_size,
        "source": dict(source),
        "splits": dict(splits),
        "totals": {"samples": sum(s["count"] for s in splits.values()),
                   "shards": sum(len(s["shards"]) for s in splits.values()),
                   **{name: s["count"] for name, s in splits.items()}},
    }


def prepare(out: str | os.PathLike[str], *, raw_dir: str | os.PathLike[str] | None = None,
            mirrors: Sequence[str] | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
            md5: Mapping[str, str] = OFFICIAL_MD5, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Read (raw_dir) or download (mirrors) MNIST and write shards + manifest into `out`.

    Holds an exclusive lock on `out` (DIR/.lock) for the whole run; a second prepare of the same
    DIR fails at once. Returns the manifest. Does nothing (beyond verifying) when `out` is already
    complete and valid.
    """
    out = Path(out)
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size}: must be at least 1")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose a directory")
    check_ownership(out)  # before the lock, which would leave DIR/.lock in a foreign directory
    with DirLock(out, f"--out {out}"):
        check_ownership(out)  # again: another process may have written DIR meanwhile
        if raw_dir is not None:
            paths = find_raw_files(raw_dir)
        else:
            paths = download_mnist(out / "raw", resolve_mirrors(mirrors), md5=md5, progress=progress)
        source = _source_checksums(paths)
        if _is_up_to_date(out, source, shard_size):
            log(f"{out}: already complete and valid (manifest.json matches the input); nothing to do")
            return read_manifest(out)
        data = {split: load_pair(paths[img], paths[lab]) for split, (img, lab) in SOURCES.items()}
        # An old manifest must never describe half-rewritten shards: a placeholder first, the manifest last.
        write_incomplete_manifest(out)
        splits: dict[str, Any] = {}
        for split, (images, labels) in data.items():
            splits[split] = _write_split(out, split, images, labels, shard_size)
            log(f"{split}: {len(images)} images in {len(splits[split]['shards'])} shards -> {out / split}")
        manifest = _manifest(splits, source, shard_size)
        write_manifest(out, manifest)
        log(f"wrote {out / MANIFEST}")
        return manifest


__all__ = ["DEFAULT_SHARD_SIZE", "check_ownership", "prepare"]
