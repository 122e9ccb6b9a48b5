"""Standard webdataset shards, both ways.

In: `distgan prepare --webdataset PATTERN` (`adopt_webdataset`) reads each shard of a brace pattern once
(local, http(s), s3, gs, pipe:, as data.dir takes them), checks every sample (decodes its image, reads its
label) and writes only a format-version-4 manifest (distgan.data.shards) next to the shards or into --out:
per shard its url, sample count, bytes, sha256 and the keys of bad samples left out (--skip-bad). The
loader (distgan.data.loader) then reads those shards through `StandardShard`, which indexes a shard's
samples and decodes only the images a batch asks for, so the split over ranks and workers, the
(seed, epoch) order and the resume position are the ones of distgan's own shards.

Out: `expand_packs` turns distgan's packed samples (images.u8 + labels + keys.txt, 1,000 images each) into
one sample per image, as a stage of a stock webdataset pipeline; `write_standard_shard` writes one PNG
(+ .cls) per image (`distgan prepare --format standard`).

Samples are grouped as webdataset groups them (its `tar_file_iterator` and `group_by_keys`: the key is the
member name up to the first dot of its base name, the extension the rest, lowercased).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

from distgan.atomic import atomic_path
from distgan.data.imaging import Transform
from distgan.data.remote import fetch_bytes
from distgan.data.shards import (
    CHANNELS,
    FORMAT,
    MANIFEST,
    MAX_CLASSES,
    MAX_SIDE,
    SHARD_MTIME,
    STANDARD_FORMAT_VERSION,
    STANDARD_IMAGE_EXTS,
    STANDARD_LABEL_EXTS,
    check_num_classes,
    is_url,
    reading_shard,
    sample_key,
    shard_name,
    write_manifest,
)
from distgan.errors import UserError

MAX_SHARD_BYTES = 64 << 30  # what the manifest pass reads of one remote shard, at most
_PIL_FORMATS = {"png": ("PNG",), "jpg": ("JPEG",), "jpeg": ("JPEG",), "webp": ("WEBP",)}
_MODE = {1: "L", 3: "RGB"}


# -- reading standard shards ------------------------------------------------------------------------

def iter_samples(data: bytes, url: str) -> Iterator[dict[str, Any]]:
    """The webdataset samples of one shard's bytes (plain or compressed tar), grouped by webdataset itself."""
    files = tar_file_iterator(io.BytesIO(data))  # tarfile mode "r|*": a .tar.gz shard works too
    yield from group_by_keys({**f, "__url__": url} for f in files)


_META = re.compile(rb"__[^/]*__($|/)")  # tar_file_iterator's skip_meta: members webdataset leaves out
_BLOCK = 512
Index = list[tuple[str, dict[str, tuple[int, int]]]]  # per sample: key, extension -> (offset, size) in the shard


def plain_index(data: bytes) -> Index | None:
    """Where each sample's members lie in the bytes of a plain ustar/GNU tar of regular files, grouped as
    webdataset groups them (`base_plus_ext`'s rule: key = the name up to the first dot of its base name,
    extension = the rest, lowercased; its meta members skipped); None for anything else (compressed, pax or
    long-name headers, links, directories), which `samples` leaves to webdataset's own iterator.

    Why not tarfile (through webdataset's tar_file_iterator) here: it costs ~115 us per sample of two
    members, more than decoding a 32x32 PNG, and the loader indexes every shard it reads, in every worker,
    each epoch; this costs a few us. The loader only reads shards whose sha256 it has checked against the
    manifest, written by a pass that read them with webdataset's iterator, and the sample counts must
    agree; tests check that both group shards the same way."""
    index: Index = []
    pos, end, find = 0, len(data), data.find
    current: dict[str, tuple[int, int]] | None = None
    key_bytes = b""
    exts: dict[bytes, str] = {}  # each distinct extension decoded once
    while pos + _BLOCK <= end and data[pos]:
        if data[pos + 156] not in (48, 0) or data[pos + 257:pos + 262] != b"ustar" or data[pos + 345] \
                or data[pos + 124] & 0x80:
            return None
        z = find(b"\0", pos, pos + 100)
        name = data[pos:z if z >= 0 else pos + 100]
        try:
            size = int(data[pos + 124:pos + 135], 8)
        except ValueError:
            return None
        offset = pos + _BLOCK
        if offset + size > end:  # truncated
            return None
        pos = offset + ((size + _BLOCK - 1) & ~(_BLOCK - 1))
        if name.startswith(b"__") and (_META.match(name) or (b"/" not in name and name.endswith(b"__"))):
            continue
        slash = name.rfind(b"/")
        dot = name.find(b".", slash + 1)
        if dot <= slash + 1 or b"/" in name[dot:]:
            continue  # no key: webdataset skips it too
        key, raw_ext = name[:dot], name[dot + 1:]
        ext = exts.get(raw_ext)
        if ext is None:
            ext = exts[raw_ext] = raw_ext.decode("utf-8", "surrogateescape").lower()
        if current is None or key != key_bytes:
            current, key_bytes = {}, key
            index.append((key.decode("utf-8", "surrogateescape"), current))
        if ext in current:
            raise ValueError(f"{name!r}: duplicate file name in tar file {ext}")
        current[ext] = (offset, size)
    if pos + _BLOCK > end or data[pos:pos + _BLOCK].count(0) != _BLOCK:  # truncated, or an odd header
        return None
    return index


def samples(data: bytes, url: str) -> Iterator[dict[str, Any]]:
    """The samples of a shard exactly as `iter_samples` (webdataset) gives them, fast for a plain tar."""
    index = plain_index(data)
    if index is None:
        yield from iter_samples(data, url)
        return
    for key, members in index:
        yield {"__key__": key, "__url__": url, **{e: data[o:o + n] for e, (o, n) in members.items()}}


def parse_label(raw: bytes, ext: str) -> int:
    """A sample's class from its .cls (an integer) or .json (an integer, or an object with an integer
    "label", "cls" or "class"); ValueError if there is none in 0..MAX_CLASSES-1."""
    text = bytes(raw).decode("utf-8").strip()
    value: Any = text if ext == "cls" else json.loads(text)
    if isinstance(value, dict):
        value = next((value[k] for k in ("label", "cls", "class") if k in value), None)
    if isinstance(value, bool) or value is None or (ext == "json" and not isinstance(value, int)):
        raise ValueError(f"no integer class in .{ext} {text[:40]!r}")
    label = int(value)
    if not 0 <= label < MAX_CLASSES:
        raise ValueError(f"class {label} is outside 0..{MAX_CLASSES - 1}")
    return label


def decode_image(blob: bytes, ext: str, transform: Transform, where: str) -> np.ndarray:
    """One encoded image as uint8 (C, H, W) after `transform` (--resolution/--channels, distgan.data.imaging);
    OSError/ValueError/SyntaxError for an image Pillow cannot decode completely."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(blob), formats=_PIL_FORMATS[ext]) as img:
            img.load()
            return transform.apply(img, where)


@dataclass(frozen=True)
class StandardSpec:
    """How the loader decodes a version-4 dataset's samples (picklable, part of the loader's plan)."""

    image_ext: str
    label_ext: str | None
    shape: tuple[int, int, int]
    resolution: int | None
    channels: int | None

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> StandardSpec:
        sample, transform = manifest["sample"], manifest["transform"]
        return cls(sample["image_ext"], sample["label_ext"], tuple(sample["shape"]),  # type: ignore[arg-type]
                   transform.get("resolution"), transform.get("channels"))


def _index_of_samples(found: Iterable[Mapping[str, Any]]) -> tuple[Index, bytes]:
    """An Index over the members of `found` samples, laid end to end in one bytes object (returned too)."""
    parts: list[bytes] = []
    index: Index = []
    pos = 0
    for sample in found:
        members: dict[str, tuple[int, int]] = {}
        for ext, value in sample.items():
            if not ext.startswith("__") and isinstance(value, bytes):
                members[ext] = (pos, len(value))
                parts.append(value)
                pos += len(value)
        index.append((sample["__key__"], members))
    return index, b"".join(parts)


# (path, spec, skipped keys) -> (size, mtime_ns, inode), image (offset, size) per sample, labels, keys: the
# index of each plain shard this process has read. build_loader warms it in the main process (`warm`), so
# that the DataLoader workers it forks each epoch inherit it and read only the bytes of their own images.
_INDEXED: dict[tuple[str, StandardSpec, frozenset[str]],
               tuple[tuple[int, int, int], list[tuple[int, int]], np.ndarray, np.ndarray]] = {}


class StandardShard:
    """The samples of one standard shard, indexed (where each encoded image lies, labels, keys); images are
    decoded on `take`, so that each loader worker decodes only its own batches. A plain tar is indexed once
    per process (see _INDEXED) and its images are then read one by one (pread); a compressed one is read
    whole each time."""

    def __init__(self, path: Path, expected: int, spec: StandardSpec, skip: Iterable[str]) -> None:
        self.path, self.spec = path, spec
        self.transform = Transform(spec.resolution, spec.channels)
        self.data: bytes | None = None
        self._fd: int | None = None
        cache_key = (str(path), spec, frozenset(skip))
        with reading_shard(path, rerun="distgan prepare --webdataset"):  # missing or unreadable: one line
            st = path.stat()
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        hit = _INDEXED.get(cache_key)
        if hit is not None and hit[0] == sig and len(hit[3]) == expected:
            _, self.offsets, self.labels, self.keys = hit
            return
        self.data, self.offsets, self.labels, self.keys, plain = self._index(path, spec, cache_key[2])
        if len(self.keys) != expected:
            raise UserError(f"{path}: holds {len(self.keys)} samples but the manifest says {expected} (modified); "
                            f"rerun `distgan prepare --webdataset`")
        if plain:
            _INDEXED[cache_key] = (sig, self.offsets, self.labels, self.keys)

    @staticmethod
    def _index(path: Path, spec: StandardSpec, skipped: frozenset[str]
               ) -> tuple[bytes, list[tuple[int, int]], np.ndarray, np.ndarray, bool]:
        """(shard bytes, image (offset, size) per sample, labels, keys, plain tar?) of the samples not skipped."""
        offsets: list[tuple[int, int]] = []
        labels: list[int] = []
        keys: list[str] = []
        image_ext, label_ext = spec.image_ext, spec.label_ext
        with reading_shard(path, rerun="distgan prepare --webdataset"):
            data = path.read_bytes()
            index = plain_index(data)
            plain = index is not None
            if index is None:  # not a plain tar: decompressed and grouped by webdataset, members kept in memory
                index, data = _index_of_samples(samples(data, str(path)))
            for key, members in index:
                if key in skipped:
                    continue
                image = members.get(image_ext)
                label = members.get(label_ext) if label_ext is not None else (0, 0)
                if image is None or label is None:
                    raise UserError(f"{path}: sample {key} lacks its .{image_ext} image or .{label_ext} label; the "
                                    f"shard changed since its manifest was written, rerun `distgan prepare "
                                    f"--webdataset`")
                offsets.append(image)
                labels.append(-1 if label_ext is None else parse_label(data[label[0]:label[0] + label[1]], label_ext))
                keys.append(key)
        return data, offsets, np.asarray(labels, np.int64), np.array(keys), plain

    def _blob(self, j: int) -> bytes:
        """The encoded image of sample j: from the shard's bytes if held, else read from the file."""
        offset, size = self.offsets[j]
        if self.data is not None:
            return self.data[offset:offset + size]
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        blob = os.pread(self._fd, size, offset)
        if len(blob) != size:
            raise UserError(f"{self.path}: sample {self.keys[j]} runs past the end of the file (modified); rerun "
                            f"`distgan prepare --webdataset`")
        return blob

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]

    def _decode_into(self, out: np.ndarray, i: int, j: int) -> None:
        """Decode sample j into out[i] (H, W, C). The common case (already the right size and mode) skips
        Transform.apply's copy; anything else goes through it, exactly as prepare's check did."""
        c, h, w = self.spec.shape
        blob = self._blob(j)
        try:
            with Image.open(io.BytesIO(blob), formats=_PIL_FORMATS[self.spec.image_ext]) as img:
                img.load()
                if img.size == (w, h) and img.mode == _MODE[c]:
                    out[i] = np.asarray(img).reshape(h, w, c)
                    return
                arr = self.transform.apply(img, f"{self.path}: sample {self.keys[j]}")
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise UserError(f"{self.path}: sample {self.keys[j]}: cannot decode image ({type(e).__name__}: {e}); "
                            f"the shard changed since its manifest was written, rerun `distgan prepare "
                            f"--webdataset`") from e
        if arr.shape != self.spec.shape:
            raise UserError(f"{self.path}: sample {self.keys[j]} decodes to {list(arr.shape)}, not the manifest's "
                            f"{list(self.spec.shape)}; rerun `distgan prepare --webdataset`")
        out[i] = arr.transpose(1, 2, 0)

    def take(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images (n, C, H, W) uint8, labels (n,) int64, keys (n,)) of samples `local`, decoded now."""
        c, h, w = self.spec.shape
        hwc = np.empty((len(local), h, w, c), np.uint8)
        for i, j in enumerate(local.tolist()):
            self._decode_into(hwc, i, j)
        return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), self.labels[local], self.keys[local]


def warm(files: Sequence[str], counts: Sequence[int], spec: StandardSpec, skips: Sequence[Sequence[str]]) -> None:
    """Index every (local) shard of a split in this process, once while the files stay the same (_INDEXED)."""
    for i, (file, count) in enumerate(zip(files, counts, strict=True)):
        StandardShard(Path(file), count, spec, skips[i] if skips else ())


# -- the manifest pass: `distgan prepare --webdataset` -----------------------------------------------

def expand_pattern(pattern: str) -> list[str]:
    """The shard URLs of a brace pattern, as webdataset expands it (`::` separates patterns)."""
    from webdataset.shardlists import expand_urls

    urls = [u for u in expand_urls(pattern) if u]
    if not urls:
        raise UserError(f"--webdataset {pattern!r}: names no shard")
    if len(set(urls)) != len(urls):
        raise UserError(f"--webdataset {pattern!r}: names a shard twice")
    return urls


def _read_whole(url: str) -> bytes:
    """A shard's bytes, read once: a local file, or a URL through distgan.data.remote (bounded retries)."""
    if is_url(url):
        return fetch_bytes(url, limit=MAX_SHARD_BYTES)
    try:
        return Path(url).read_bytes()
    except FileNotFoundError:
        raise UserError(f"--webdataset: {url}: no such shard; check the pattern") from None
    except OSError as e:
        raise UserError(f"--webdataset: {url}: cannot read ({e.strerror or e})") from None


@dataclass
class _Pass:
    """What the manifest pass has found so far."""

    transform: Transform
    skip_bad: bool
    image_ext: str | None = None
    label_ext: str | None = None
    shape: tuple[int, int, int] | None = None
    first: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)

    def bad(self, url: str, key: str, problem: str, skip: list[str]) -> None:
        if not self.skip_bad:
            raise UserError(f"{url}: sample {key}: {problem}; fix or remove it, or pass --skip-bad to leave bad "
                            f"samples out")
        skip.append(key)
        self.skipped.append({"shard": url, "key": key, "error": problem})


def _formats(sample: Mapping[str, Any], url: str) -> tuple[str, str | None]:
    image = next((e for e in STANDARD_IMAGE_EXTS if e in sample), None)
    if image is None:
        exts = sorted(k for k in sample if not k.startswith("__"))
        raise UserError(f"{url}: sample {sample['__key__']} has no image ({', '.join(exts)}); standard shards hold "
                        f"one .{', .'.join(STANDARD_IMAGE_EXTS)} image per sample")
    return image, next((e for e in STANDARD_LABEL_EXTS if e in sample), None)


def _scan_shard(url: str, state: _Pass, labels: list[int]) -> dict[str, Any]:
    """One shard's manifest entry (without name/url); appends its good samples' labels to `labels`."""
    data = _read_whole(url)
    skip: list[str] = []
    count = 0
    try:
        for sample in iter_samples(data, url):
            key = sample["__key__"]
            if state.image_ext is None:
                state.image_ext, state.label_ext = _formats(sample, url)
            ext = state.image_ext
            if ext not in sample:
                state.bad(url, key, f"no .{ext} image", skip)
                continue
            label = -1
            if state.label_ext is not None:
                if state.label_ext not in sample:
                    state.bad(url, key, f"no .{state.label_ext} label", skip)
                    continue
                try:
                    label = parse_label(sample[state.label_ext], state.label_ext)
                except (ValueError, UnicodeDecodeError) as e:
                    state.bad(url, key, f"bad .{state.label_ext} label ({e})", skip)
                    continue
            try:
                arr = decode_image(sample[ext], ext, state.transform, f"{url}: sample {key}")
            except UserError:
                raise
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning) as e:
                state.bad(url, key, f"cannot decode .{ext} image ({type(e).__name__}: {str(e).splitlines()[0]})",
                          skip)
                continue
            shape = tuple(int(d) for d in arr.shape)
            if state.shape is None:
                c, h, w = shape
                if c not in CHANNELS or not (h <= MAX_SIDE and w <= MAX_SIDE):
                    raise UserError(f"{url}: sample {key} is {w}x{h} with {c} channel(s); distgan reads 1 or 3 "
                                    f"channels and sides up to {MAX_SIDE}: pass --resolution R (and --channels 1|3)")
                state.shape, state.first = shape, f"{url} sample {key}"  # type: ignore[assignment]
            elif shape != state.shape:
                (c, h, w), (c0, h0, w0) = shape, state.shape
                state.bad(url, key, f"{w}x{h} with {c} channel(s), but {state.first} is {w0}x{h0} with {c0} "
                                    f"(pass --resolution R and --channels 1|3 to convert)", skip)
                continue
            labels.append(label)
            count += 1
    except UserError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise UserError(f"{url}: not a readable tar shard ({type(e).__name__}: {str(e).splitlines()[0]}); check the "
                        f"--webdataset pattern") from e
    entry = {"count": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if skip:
        entry["skip"] = skip
    return entry


def _location(url: str, out: Path) -> str:
    """The manifest's `url` of a shard: relative to `out` for a local file under it, else absolute or the URL."""
    if is_url(url):
        return url
    path = Path(os.path.abspath(url))
    try:
        return path.relative_to(Path(os.path.abspath(out))).as_posix()
    except ValueError:
        return str(path)


def default_out(patterns: Sequence[str]) -> Path:
    """Where the manifest goes without --out: the directory of local shards (their deepest common one)."""
    urls = [u for p in patterns for u in expand_pattern(p)]
    if any(is_url(u) for u in urls):
        raise UserError("--webdataset with remote shards: pass --out DIR, the local directory for the manifest")
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:  # before prepare takes a lock (and so creates a directory) where the manifest would go
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"--webdataset: {missing[0]}: no such shard{more}; check the pattern")
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(u)) for u in urls]))


def adopt_webdataset(out: Path, patterns: Mapping[str, str], *, transform: Transform, skip_bad: bool,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write DIR/manifest.json (version 4) for standard shards (`patterns`: split -> brace pattern), reading
    each shard once; no shard is copied. The caller holds DIR's lock. Returns the manifest."""
    state = _Pass(transform, skip_bad)
    splits: dict[str, Any] = {}
    split_labels: dict[str, list[int]] = {}
    for split, pattern in patterns.items():
        shards = []
        labels: list[int] = split_labels.setdefault(split, [])
        for url in expand_pattern(pattern):
            entry = _scan_shard(url, state, labels)
            if not entry["count"]:
                log(f"{url}: no good sample, left out")
                continue
            shards.append({"name": shard_name(split, len(shards)), "url": _location(url, out), **entry})
        if not shards:
            raise UserError(f"--webdataset {pattern!r}: no readable sample for the {split} split")
        splits[split] = {"count": sum(s["count"] for s in shards), "shards": shards}
        log(f"{split}: {splits[split]['count']} samples in {len(shards)} shards ({pattern})")
    assert state.shape is not None and state.image_ext is not None
    classes = None
    if state.label_ext is not None:
        top = max(max(v, default=0) for v in split_labels.values()) + 1
        check_num_classes(top, "--webdataset")
        classes = {"names": [str(i) for i in range(top)],
                   "counts": {s: np.bincount(np.asarray(v, np.int64), minlength=top).astype(int).tolist()
                              for s, v in split_labels.items()}}
    if state.skipped:
        log(f"skipped {len(state.skipped)} bad sample(s) (--skip-bad), listed in the manifest: "
            f"{', '.join(s['key'] for s in state.skipped[:3])}{', ...' if len(state.skipped) > 3 else ''}")
    manifest = standard_manifest(splits, shape=state.shape, image_ext=state.image_ext, label_ext=state.label_ext,
                                 classes=classes, transform=transform,
                                 source={"kind": "webdataset", "patterns": dict(patterns), "skip_bad": skip_bad},
                                 skipped=state.skipped)
    write_manifest(out, manifest)
    c, h, w = state.shape
    labels = "unlabelled" if classes is None else f"{len(classes['names'])} classes from .{state.label_ext}"
    log(f"wrote {out / MANIFEST} ({c}x{h}x{w} .{state.image_ext} images, {labels}; no shard copied)")
    return manifest


def standard_manifest(splits: Mapping[str, Any], *, shape: tuple[int, int, int], image_ext: str,
                      label_ext: str | None, classes: Mapping[str, Any] | None, transform: Transform,
                      source: Mapping[str, Any], skipped: Sequence[Mapping[str, str]] = (),
                      extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A format-version-4 manifest (distgan.data.shards)."""
    return {
        "format": FORMAT,
        "version": STANDARD_FORMAT_VERSION,
        "sample": {"encoding": "standard", "shape": list(shape), "dtype": "uint8", "image_ext": image_ext,
                   "label_ext": label_ext},
        "transform": transform.describe(),
        "classes": None if classes is None else dict(classes),
        "skipped": [dict(s) for s in skipped],
        "source": dict(source),
        **(extra or {}),
        "splits": dict(splits),
        "totals": {"samples": sum(s["count"] for s in splits.values()),
                   "shards": sum(len(s["shards"]) for s in splits.values()),
                   **{name: s["count"] for name, s in splits.items()}},
    }


# -- writing standard shards: `distgan prepare --format standard` -------------------------------------

def write_standard_shard(path: Path, split: str, images: np.ndarray, labels: np.ndarray | None,
                         start: int) -> None:
    """Write images[i] (C x H x W uint8) as one PNG per sample (key `<split>-<start + i>`), with a .cls
    holding labels[i] unless labels is None, atomically (webdataset's TarWriter, fixed mtime)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=SHARD_MTIME)
        for i, img in enumerate(images):
            hwc = img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
            sample = {"__key__": sample_key(split, start + i), "png": wds.writer.imageencoder(hwc, "png")}
            if labels is not None:
                sample["cls"] = str(int(labels[i])).encode("ascii")
            writer.write(sample)
        writer.close()


# -- distgan's packs as standard samples --------------------------------------------------------------

def _pack_shape(image_bytes: int, key: str) -> tuple[int, int, int]:
    """(C, H, W) of square images of `image_bytes` bytes: unambiguous, since 3*s*s is never a square."""
    for c in CHANNELS:
        side = math.isqrt(image_bytes // c)
        if c * side * side == image_bytes:
            return c, side, side
    raise ValueError(f"pack {key}: images of {image_bytes} bytes are not square; pass shape=(C, H, W) from the "
                     f"manifest's sample.shape")


def expand_packs(samples: Iterable[Mapping[str, Any]], shape: Sequence[int] | None = None, *,
                 labelled: bool = True) -> Iterator[dict[str, Any]]:
    """A webdataset pipeline stage: each of distgan's packed samples (members images.u8, labels.u8 or
    labels.u16, keys.txt, as `wds.WebDataset(url)` yields them undecoded) becomes one sample per image:
    {"__key__": its stable key, "__url__": the shard's, "image": uint8 H x W (one channel) or H x W x 3
    array, "cls": int label (left out with labelled=False, for a manifest whose classes are null)}.

    `shape` is the manifest's sample.shape [C, H, W]; without it, square images are assumed (the shape then
    follows from the bytes). Usage:
    `wds.WebDataset(urls).compose(functools.partial(expand_packs, shape=(1, 28, 28)))`.
    """
    for sample in samples:
        key = sample.get("__key__")
        wide = "labels.u16" in sample
        raw = sample["labels.u16" if wide else "labels.u8"]
        labels = np.frombuffer(raw, "<u2" if wide else np.uint8)
        keys = bytes(sample["keys.txt"]).decode("ascii").split("\n") if len(labels) else []
        pixels = np.frombuffer(sample["images.u8"], np.uint8)
        n = len(labels)
        if not n or len(keys) != n or len(pixels) % n:
            raise ValueError(f"pack {key}: {len(pixels)} image bytes, {len(keys)} keys, {n} labels; not a distgan "
                             f"pack")
        c, h, w = tuple(shape) if shape is not None else _pack_shape(len(pixels) // n, str(key))
        images = pixels.reshape(n, c, h, w)
        for i in range(n):
            image = images[i, 0] if c == 1 else images[i].transpose(1, 2, 0)
            out: dict[str, Any] = {"__key__": keys[i], "image": np.ascontiguousarray(image)}
            if "__url__" in sample:
                out["__url__"] = sample["__url__"]
            if labelled:
                out["cls"] = int(labels[i])
            yield out


__all__ = ["MAX_SHARD_BYTES", "iter_samples", "parse_label", "decode_image", "StandardSpec",
           "StandardShard", "warm", "expand_pattern", "default_out", "adopt_webdataset", "standard_manifest",
           "write_standard_shard", "expand_packs"]
