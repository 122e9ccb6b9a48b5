"""`distgan prepare`: MNIST IDX files -> webdataset tar shards for `train` and `test` + manifest.json.

Output layout (DIR = --out):

    DIR/manifest.json             format version, source checksums, per-shard name/count/sha256, totals
    DIR/train/train-000000.tar    webdataset shards; each tar *sample* is a pack of up to 1000 images
    DIR/test/test-000000.tar
    DIR/raw/                      only when downloading: the four verified .gz files

Each pack (webdataset key = `<split>-<index of its first image>`) has three members:
`images.u8` (n*28*28 raw uint8 bytes, row-major), `labels.u8` (n raw uint8 bytes) and `keys.txt`
(n newline-separated stable sample keys `<split>-<index in the IDX file>`). Raw bytes decode in about a
microsecond per image where PNG or npy take ~100 us, and packing removes webdataset's per-sample tar
and Python overhead; see the README's data section for the measurements.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from distgan.atomic import atomic_path
from distgan.data.idx import (
    COLS,
    FILES,
    OFFICIAL_MD5,
    ROWS,
    download_mnist,
    file_digest,
    find_raw_files,
    load_pair,
    resolve_mirrors,
    umask_mode,
)
from distgan.errors import UserError

FORMAT = "distgan-mnist-shards"
FORMAT_VERSION = 1
PACK_SIZE = 1000
DEFAULT_SHARD_SIZE = 5000
SHARD_MTIME = 946684800  # fixed tar member mtime (2000-01-01) so that shards are byte-identical
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train_images", "train_labels"),
    "test": ("test_images", "test_labels"),
}
MEMBERS = ("images.u8", "labels.u8", "keys.txt")
IMAGE_BYTES = ROWS * COLS


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`."""
    return f"{split}-{index:06d}.tar"


def sample_key(split: str, index: int) -> str:
    """Stable key of image `index` (its position in the IDX file) of `split`."""
    return f"{split}-{index:06d}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, "sha256")


def write_shard(path: Path, split: str, images: np.ndarray, labels: np.ndarray, start: int) -> None:
    """Write images[i], labels[i] (global indices start + i) as one tar shard of packs, atomically.

    We use webdataset's TarWriter, one per shard, instead of ShardWriter: ShardWriter opens the final
    file name directly (a crash leaves a partial shard there) and cuts shards by record count, while
    our records are packs and a shard is cut by image count. The tar goes to a temporary name and is
    renamed into place; the fixed mtime (and TarWriter's fixed user/group/mode) make it byte-identical.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        umask_mode(tmp)
        writer = wds.TarWriter(f, encoder=False, mtime=SHARD_MTIME)
        for lo in range(0, len(images), PACK_SIZE):
            hi = min(lo + PACK_SIZE, len(images))
            keys = "\n".join(sample_key(split, start + i) for i in range(lo, hi))
            writer.write({
                "__key__": sample_key(split, start + lo),
                "images.u8": np.ascontiguousarray(images[lo:hi], dtype=np.uint8).tobytes(),
                "labels.u8": np.ascontiguousarray(labels[lo:hi], dtype=np.uint8).tobytes(),
                "keys.txt": keys.encode("ascii"),
            })
        writer.close()


def decode_pack(sample: Mapping[str, Any], where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode one pack (a webdataset sample dict) into images (n,28,28), labels (n,) and keys."""
    missing = [m for m in MEMBERS if m not in sample]
    if missing:
        raise UserError(f"{where}: pack {sample.get('__key__')} lacks {', '.join(missing)}; the shard is "
                        f"corrupt, rerun `distgan prepare`")
    labels = np.frombuffer(sample["labels.u8"], dtype=np.uint8)
    n = len(labels)
    raw = sample["images.u8"]
    keys = sample["keys.txt"].decode("ascii").split("\n") if n else []
    if len(raw) != n * IMAGE_BYTES or len(keys) != n:
        raise UserError(f"{where}: pack {sample.get('__key__')} has {len(raw)} image bytes and {len(keys)} "
                        f"keys for {n} labels; the shard is corrupt, rerun `distgan prepare`")
    return np.frombuffer(raw, dtype=np.uint8).reshape(n, ROWS, COLS), labels, keys


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a whole shard with webdataset's tar reader: images (n,28,28) uint8, labels (n,) uint8, keys.

    Any read or format problem becomes a one-line UserError naming the shard.
    """
    try:
        with open(path, "rb") as f:
            packs = [decode_pack(s, str(path)) for s in wds.tariterators.group_by_keys(
                wds.tariterators.tar_file_expander([{"url": str(path), "stream": f}]))]
    except UserError:
        raise
    except FileNotFoundError as e:
        raise UserError(f"{path}: shard missing; rerun `distgan prepare`") from e
    except Exception as e:  # tarfile, OSError, ...: all mean a damaged shard
        # webdataset appends " @ <stream repr>" to the message; the path is already in ours.
        msg = str(e.args[0] if e.args else e).split("\n")[0].split(" @ ")[0]
        raise UserError(f"{path}: cannot read shard ({type(e).__name__}: {msg}); it is truncated or "
                        f"corrupt, rerun `distgan prepare`") from e
    if not packs:
        return np.empty((0, ROWS, COLS), np.uint8), np.empty((0,), np.uint8), []
    return (np.concatenate([p[0] for p in packs]), np.concatenate([p[1] for p in packs]),
            [k for p in packs for k in p[2]])


def read_manifest(out: Path) -> dict[str, Any]:
    """Load DIR/manifest.json and check its format; a one-line UserError if absent or unusable."""
    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise UserError(f"{path}: missing; run `distgan prepare --out {out}` first") from e
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); rerun `distgan prepare --out {out}`") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a distgan shard manifest; rerun `distgan prepare --out {out}`")
    if manifest.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: manifest version {manifest.get('version')}, this distgan reads "
                        f"{FORMAT_VERSION}; rerun `distgan prepare --out {out}`")
    return manifest


def verify_split(out: Path, manifest: Mapping[str, Any], split: str) -> None:
    """Check that every shard of `split` exists with the manifest's size and sha256 (UserError if not)."""
    for shard in manifest["splits"][split]["shards"]:
        path = out / split / shard["name"]
        if not path.is_file():
            raise UserError(f"{path}: shard missing; rerun `distgan prepare --out {out}`")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise UserError(f"{path}: {size} bytes, manifest says {shard['bytes']} (truncated or "
                            f"modified); rerun `distgan prepare --out {out}`")
        if sha256_file(path) != shard["sha256"]:
            raise UserError(f"{path}: sha256 differs from {out / 'manifest.json'} (corrupt or modified); "
                            f"rerun `distgan prepare --out {out}`")


def _source_checksums(paths: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """md5 and sha256 of each source file, keyed by the official file name."""
    return {FILES[role]: {"file": p.name, "md5": file_digest(p, "md5"), "sha256": sha256_file(p)}
            for role, p in sorted(paths.items())}


def _is_up_to_date(out: Path, source: Mapping[str, Any], shard_size: int) -> bool:
    """True if DIR already holds a valid, complete output for exactly this input and shard size."""
    try:
        manifest = read_manifest(out)
        if manifest.get("source") != source or manifest.get("shard_size") != shard_size:
            return False
        for split in SPLITS:
            verify_split(out, manifest, split)
    except (UserError, KeyError, TypeError):
        return False
    return True


def prepare(out: str | os.PathLike[str], *, raw_dir: str | os.PathLike[str] | None = None,
            mirrors: Sequence[str] | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
            md5: Mapping[str, str] = OFFICIAL_MD5, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Read (raw_dir) or download (mirrors) MNIST and write shards + manifest into `out`.

    Returns the manifest. Does nothing (beyond verifying) when `out` is already complete and valid.
    """
    out = Path(out)
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size}: must be at least 1")
    if raw_dir is not None:
        paths = find_raw_files(raw_dir)
    else:
        paths = download_mnist(out / "raw", resolve_mirrors(mirrors), md5=md5, progress=progress)
    source = _source_checksums(paths)
    if _is_up_to_date(out, source, shard_size):
        log(f"{out}: already complete and valid (manifest.json matches the input); nothing to do")
        return read_manifest(out)

    data = {split: load_pair(paths[img], paths[lab]) for split, (img, lab) in SPLITS.items()}
    # An old manifest must never describe half-rewritten shards: drop it first, write it last.
    (out / "manifest.json").unlink(missing_ok=True)
    splits: dict[str, Any] = {}
    for split, (images, labels) in data.items():
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        shards = []
        for i, lo in enumerate(range(0, len(images), shard_size)):
            hi = min(lo + shard_size, len(images))
            path = split_dir / shard_name(split, i)
            write_shard(path, split, images[lo:hi], labels[lo:hi], lo)
            shards.append({"name": path.name, "count": hi - lo, "bytes": path.stat().st_size,
                           "sha256": sha256_file(path)})
        keep = {s["name"] for s in shards}
        for stale in split_dir.glob(f"{split}-*.tar"):
            if stale.name not in keep:
                stale.unlink()
        splits[split] = {"count": int(len(images)), "shards": shards}
        log(f"{split}: {len(images)} images in {len(shards)} shards -> {split_dir}")
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sample": {"image": [ROWS, COLS], "dtype": "uint8", "pack_size": PACK_SIZE,
                   "members": {"images.u8": "n*28*28 raw uint8, row-major", "labels.u8": "n raw uint8",
                               "keys.txt": "n newline-separated sample keys"}},
        "shard_size": shard_size,
        "source": source,
        "splits": splits,
        "totals": {"samples": sum(s["count"] for s in splits.values()),
                   "shards": sum(len(s["shards"]) for s in splits.values()),
                   **{name: s["count"] for name, s in splits.items()}},
    }
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        umask_mode(tmp)
    log(f"wrote {out / 'manifest.json'}")
    return manifest


__all__ = ["prepare", "read_manifest", "verify_split", "read_shard", "write_shard", "decode_pack",
           "shard_name", "sample_key"]
