"""`distgan prepare` as a library function: one source (IDX files, local or downloaded; an image folder;
an .npz file; see distgan.data.sources) -> the shards and manifest of distgan.data.shards, in an output
directory that it locks and only ever cleans of its own files.

Ownership: DIR may hold other things (a `raw/` download folder, notes...), but `prepare` refuses a
DIR whose manifest.json is not distgan's, or that has no manifest but tar files in train/ or test/;
it removes only shard files named by its own pattern (`<split>-NNNNNN.tar`) in a DIR that carries its
manifest (of any format version), and, after a success, the temporaries of those shards and of the manifest
that an interrupted run left (`.<name>.XXXXXXXX.tmp`). While it rewrites shards, manifest.json is a distgan
placeholder that readers refuse, so a crash leaves neither a stale manifest over new shards nor a DIR that
looks foreign.

`format="standard"` writes the same shards as one PNG (+ .cls) per image instead of packs, with a
format-version-4 manifest (distgan.data.standard), for whoever needs the interchange format more than speed.
`prepare_webdataset` writes only a manifest for existing standard webdataset shards.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from distgan.data.image_folder import DEFAULT_TEST_FRACTION
from distgan.data.imaging import Transform
from distgan.data.shards import (
    CHANNELS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MAX_SIDE,
    SPLITS,
    UNLABELLED,
    WIDE_FORMAT_VERSION,
    Layout,
    is_distgan_manifest,
    is_shard_name,
    label_bytes_for,
    read_manifest,
    read_manifest_bytes,
    shard_name,
    verify_split,
    write_incomplete_manifest,
    write_manifest,
    write_shard,
)
from distgan.data.sources import SourceData, choose_source
from distgan.data.standard import adopt_webdataset, default_out, standard_manifest, write_standard_shard
from distgan.errors import UserError
from distgan.hashing import file_sha256
from distgan.locks import DirLock

DEFAULT_SHARD_SIZE = 5000
FORMATS = ("packed", "standard")  # `prepare --format`: distgan's packs, or one PNG (+ .cls) per sample
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # distgan.atomic.atomic_path's (mkstemp)


def check_ownership(out: Path) -> None:
    """Refuse (one-line UserError) an output directory that holds another tool's dataset."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            ours = is_distgan_manifest(json.loads(read_manifest_bytes(manifest)))  # bounded, never waits on a FIFO
        except (UserError, OSError, ValueError, RecursionError):
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


def _remove_temporaries(out: Path) -> int:
    """Delete the temporary files an interrupted prepare left (`atomic_path`'s `.<name>.XXXXXXXX.tmp`, for
    `<name>` the manifest in DIR or a shard of ours in DIR/<split>); nothing else. Returns how many."""
    places: list[tuple[Path, Callable[[str], bool]]] = [(out, lambda name: name == MANIFEST)]
    places += [(out / split, partial(is_shard_name, split)) for split in SPLITS]
    removed = 0
    for directory, ours in places:
        for entry in directory.iterdir() if directory.is_dir() else ():
            m = _TEMP_NAME.match(entry.name)
            if m and ours(m.group("name")) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def _log_removed(out: Path, removed: int, log: Callable[[str], None]) -> None:
    if removed:
        log(f"{out}: removed {removed} temporary file(s) left by an interrupted prepare")


def _is_up_to_date(out: Path, key: Mapping[str, Any]) -> bool:
    """True if DIR already holds a valid, complete output (this format version) for exactly this input
    and these options (`key`: the manifest's source, transform, dataset and shard_size)."""
    try:
        manifest = read_manifest(out)
        if manifest["version"] not in (FORMAT_VERSION, WIDE_FORMAT_VERSION) \
                or any(manifest.get(k) != v for k, v in key.items()) or set(manifest["splits"]) != set(SPLITS):
            return False
        for split in SPLITS:
            verify_split(out, manifest, split)
    except UserError:
        return False
    return True


def _write_split(out: Path, split: str, images: np.ndarray, labels: np.ndarray | None, shard_size: int,
                 layout: Layout, standard: bool = False) -> dict[str, Any]:
    """Write one split's shards, remove its stale distgan shards, and return its manifest entry."""
    split_dir = out / split
    split_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, lo in enumerate(range(0, len(images), shard_size)):
        hi = min(lo + shard_size, len(images))
        path = split_dir / shard_name(split, i)
        if standard:
            write_standard_shard(path, split, images[lo:hi], None if labels is None else labels[lo:hi], lo)
        else:
            assert labels is not None
            write_shard(path, split, images[lo:hi], labels[lo:hi], lo, layout)
        shards.append({"name": path.name, **({"url": f"{split}/{path.name}"} if standard else {}),
                       "count": hi - lo, "bytes": path.stat().st_size, "sha256": file_sha256(path)})
    keep = {s["name"] for s in shards}
    for stale in split_dir.iterdir():
        if is_shard_name(split, stale.name) and stale.name not in keep and stale.is_file():
            stale.unlink()
    return {"count": int(len(images)), "shards": shards}


def _layout_of(data: SourceData) -> Layout:
    """The one image shape of all splits, within what the shard format allows, and the label width its
    number of classes needs."""
    shapes = {tuple(int(d) for d in x.shape[1:]) for x, _ in data.splits.values() if len(x)}
    if len(shapes) != 1:
        raise UserError(f"the splits have different image shapes {sorted(shapes)} (C, H, W); pass "
                        f"--resolution R and --channels 1|3")
    shape = shapes.pop()
    c, h, w = shape
    if c not in CHANNELS or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise UserError(f"images are {w}x{h} with {c} channel(s); shards hold 1 or 3 channels and sides up to "
                        f"{MAX_SIDE}: pass --resolution R (and --channels 1|3)")
    return Layout(shape, label_bytes_for(None if data.classes is None else len(data.classes)))  # type: ignore[arg-type]


def _sample_entry(layout: Layout) -> dict[str, Any]:
    """The manifest's `sample`: shape, pack size and members (with `label_dtype` for two-byte labels)."""
    c, h, w = layout.shape
    labels = "n raw uint8 (255 for every image if classes is null)" if layout.label_bytes == 1 \
        else "n raw uint16 little-endian"
    sample = {"shape": list(layout.shape), "dtype": "uint8", "pack_size": layout.pack_size,
              "members": {"images.u8": f"n*{c}*{h}*{w} raw uint8, each image C x H x W row-major",
                          layout.labels_member: labels, "keys.txt": "n newline-separated sample keys"}}
    if layout.label_bytes != 1:
        sample["label_dtype"] = "uint16"
    return sample


def _manifest(splits: Mapping[str, Any], key: Mapping[str, Any], layout: Layout, data: SourceData,
              counts: Mapping[str, list[int]] | None) -> dict[str, Any]:
    """The manifest of a finished output (format version 2; 3 for two-byte labels)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION if layout.label_bytes == 1 else WIDE_FORMAT_VERSION,
        "sample": _sample_entry(layout),
        "classes": None if data.classes is None else {"names": list(data.classes), "counts": dict(counts or {})},
        "skipped": list(data.skipped),
        **key,
        "splits": dict(splits),
        "totals": {"samples": sum(s["count"] for s in splits.values()),
                   "shards": sum(len(s["shards"]) for s in splits.values()),
                   **{name: s["count"] for name, s in splits.items()}},
    }


def prepare(out: str | os.PathLike[str], *, raw_dir: str | os.PathLike[str] | None = None,
            dataset: str | None = None, image_folder: str | os.PathLike[str] | None = None,
            npz: str | os.PathLike[str] | None = None, mirrors: Sequence[str] | None = None,
            resolution: int | None = None, channels: int | None = None,
            test_fraction: float = DEFAULT_TEST_FRACTION, skip_bad: bool = False,
            shard_size: int = DEFAULT_SHARD_SIZE, md5: Mapping[str, str] | None = None, progress: bool = True,
            log: Callable[[str], None] = print, format: str = "packed") -> dict[str, Any]:
    """Read one source (raw_dir [+ dataset], dataset alone = download, image_folder or npz; none at all
    downloads MNIST) and write shards + manifest into `out`.

    Holds an exclusive lock on `out` (DIR/.lock) for the whole run; a second prepare of the same
    DIR fails at once. Returns the manifest. Does nothing (beyond verifying) when `out` is already
    complete and valid for the same input and options.
    """
    out = Path(out)
    if format not in FORMATS:
        raise UserError(f"--format {format}: must be one of {', '.join(FORMATS)}")
    standard = format == "standard"
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size}: must be at least 1")
    transform = Transform(resolution, channels)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose a directory")
    check_ownership(out)  # before the lock, which would leave DIR/.lock in a foreign directory
    with DirLock(out, f"--out {out}"):
        check_ownership(out)  # again: another process may have written DIR meanwhile
        source = choose_source(out=out, raw_dir=raw_dir, dataset=dataset, image_folder_dir=image_folder, npz=npz,
                               mirrors=mirrors, md5=md5, transform=transform, test_fraction=test_fraction,
                               skip_bad=skip_bad, progress=progress)
        key = {"source": source.describe(), "transform": transform.describe(), "dataset": source.dataset,
               "shard_size": shard_size}
        if _is_up_to_date(out, key):
            _log_removed(out, _remove_temporaries(out), log)
            log(f"{out}: already complete and valid (manifest.json matches the input); nothing to do")
            return read_manifest(out)
        data = source.load(log)
        layout = _layout_of(data)
        counts = None
        if data.classes is not None:
            counts = {s: np.bincount(y, minlength=len(data.classes)).astype(int).tolist()
                      for s, (_, y) in data.splits.items() if y is not None}
        # An old manifest must never describe half-rewritten shards: a placeholder first, the manifest last.
        write_incomplete_manifest(out)
        splits: dict[str, Any] = {}
        for split in SPLITS:
            images, labels = data.splits[split]
            if labels is None and not standard:
                labels = np.full(len(images), UNLABELLED, np.uint8)
            splits[split] = _write_split(out, split, images, labels, shard_size, layout, standard)
            log(f"{split}: {len(images)} images in {len(splits[split]['shards'])} shards -> {out / split}")
        if standard:
            manifest = standard_manifest(
                splits, shape=layout.shape, image_ext="png", label_ext=None if data.classes is None else "cls",
                classes=None if data.classes is None else {"names": list(data.classes), "counts": dict(counts or {})},
                transform=transform, source=key["source"], skipped=data.skipped,
                extra={"dataset": key["dataset"], "shard_size": shard_size})
        else:
            manifest = _manifest(splits, key, layout, data, counts)
        write_manifest(out, manifest)
        _log_removed(out, _remove_temporaries(out), log)
        c, h, w = layout.shape
        classes = "unlabelled" if data.classes is None else f"{len(data.classes)} classes"
        log(f"wrote {out / MANIFEST} ({c}x{h}x{w} images, {classes})")
        if data.classes is None:  # the self-conditioned GAN makes its own classes; no classifier without labels
            log(f"no classes: train the self-conditioned GAN, `distgan train --config configs/mnist_selfcond.yaml "
                f"data.dir={out} eval.every=0`, and score it with `distgan eval --features inception`")
        return manifest


def prepare_webdataset(train: str, *, test: str | None = None, out: str | os.PathLike[str] | None = None,
                       resolution: int | None = None, channels: int | None = None, skip_bad: bool = False,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """`distgan prepare --webdataset TRAIN [--webdataset-test TEST]`: write only DIR/manifest.json (format
    version 4) for standard webdataset shards (brace patterns of local paths or URLs), into `out` or, for
    local shards, their own directory. Each shard is read once; nothing is copied. Holds DIR's lock."""
    patterns = {"train": train, **({"test": test} if test else {})}
    out = Path(out) if out is not None else default_out(list(patterns.values()))
    transform = Transform(resolution, channels)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose a directory")
    check_ownership(out)
    with DirLock(out, f"--out {out}"):
        check_ownership(out)
        return adopt_webdataset(out, patterns, transform=transform, skip_bad=skip_bad, log=log)


__all__ = ["DEFAULT_SHARD_SIZE", "FORMATS", "check_ownership", "prepare", "prepare_webdataset"]
