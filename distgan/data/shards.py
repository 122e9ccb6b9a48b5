"""The on-disk shard format of `distgan prepare`, end to end: names, writing and reading shards, the
manifest (read, validated, written) and the one integrity check used by both the writer and the loader.

Layout (DIR = `prepare --out`):

    DIR/manifest.json             format version, image shape, classes, source, per-shard name/count/bytes/sha256
    DIR/train/train-000000.tar    plain (uncompressed) tar shards; each tar *sample* is a pack of images
    DIR/test/test-000000.tar

Each pack (webdataset key = `<split>-<index of its first image>`) has three members:
`images.u8` (n*C*H*W raw uint8 bytes, each image C x H x W row-major), `labels.u8` (n raw uint8 bytes;
255 for every image of an unlabelled dataset) and `keys.txt` (n newline-separated stable sample keys
`<split>-<index in the source's order>`). A dataset of more than 256 classes has `labels.u16` instead of
`labels.u8`: n raw uint16 little-endian labels (format version 3). A pack holds as many images as fit in
PACK_BYTES (1 MiB), at least one and at most MAX_PACK_IMAGES: the pack size follows from the image shape
(Layout), never from a number the manifest could inflate, and so do the member-size caps checked before
any member is read.
Raw bytes decode in about a microsecond per image where PNG or npy take ~100 us, and packing removes
webdataset's per-sample tar and Python overhead; see the README's data section for the measurements.

Format version 2 records the shape [C, H, W] and the classes (at most 256: one-byte labels); version 3 is
version 2 with two-byte labels (`sample.label_dtype` "uint16", members `labels.u16`) for 257..65,536
classes, written only then, so that a distgan reading only version 2 refuses it in one line and every
dataset of up to 256 classes stays byte-identical.

Format version 4 describes *standard* webdataset shards (one sample per key: an encoded image, `.png`,
`.jpg`, `.jpeg` or `.webp`, and optionally a `.cls` or `.json` label), wherever they are: written by
`distgan prepare --webdataset PATTERN` next to the user's own shards (or into --out), which copies nothing,
or by `distgan prepare --format standard`. Its `sample` records `"encoding": "standard"`, the extensions
that hold the image (`image_ext`) and the label (`label_ext`, null: unlabelled) and the shape [C, H, W]
the loader delivers (images are decoded, and resized as `transform` says, at load time); each shard
entry adds `url` (a local path, absolute or relative to the manifest's directory, or a URL) and
`skip` (the keys of bad samples left out with --skip-bad); `count` is the samples the loader yields from
it. Version 1 (MNIST only, format name "distgan-mnist-shards",
before the shape was recorded) is no longer read: `distgan prepare` rewrites it in one command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import webdataset as wds

from distgan.atomic import atomic_path, write_json_atomic
from distgan.data.idx import COLS, ROWS, open_regular
from distgan.errors import UserError
from distgan.hashing import file_sha256

FORMAT = "distgan-shards"
LEGACY_FORMAT = "distgan-mnist-shards"  # version 1: known as distgan's (prepare may replace it), never read
FORMAT_VERSION = 2  # written for up to BYTE_CLASSES classes (labels.u8)
WIDE_FORMAT_VERSION = 3  # written for more classes: version 2 with uint16 labels (labels.u16)
STANDARD_FORMAT_VERSION = 4  # standard webdataset shards: one encoded image (+ label) per sample
READABLE_VERSIONS = (2, 3, 4)
STANDARD_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")  # image members of standard shards, in order of preference
STANDARD_LABEL_EXTS = ("cls", "json")  # label members of standard shards, in order of preference
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest of a few thousand shards is well under 1 MiB (local or served)
PACK_BYTES = 1 << 20  # image bytes per pack, at most (a pack holds at least one image)
MAX_PACK_IMAGES = 1000
PACK_SIZE = MAX_PACK_IMAGES  # MNIST's pack size (28x28: 1000 images, 784,000 bytes)
MAX_SIDE = 1024  # largest image side a manifest may declare
CHANNELS = (1, 3)
UNLABELLED = 255  # the label byte of every image of an unlabelled dataset (yielded as -1 by the loader)
BYTE_CLASSES = 256  # classes one-byte labels name; whether 255 is a label or "unlabelled" is the manifest's `classes`
MAX_CLASSES = 1 << 16  # the most classes a dataset may have: uint16 labels (labels.u16) name 0..65535
SHARD_MTIME = 946684800  # fixed tar member mtime (2000-01-01) so that shards are byte-identical
SPLITS = ("train", "test")
MEMBERS = ("images.u8", "labels.u8", "keys.txt")  # a pack's members with one-byte labels (Layout.members)
IMAGE_BYTES = ROWS * COLS  # MNIST's
MAX_KEY_BYTES = 64  # a sample key is `<split>-<index>`; anything longer is not ours
_TAR_HEADER = 512  # every tar member starts with (at least) one 512-byte header block


@dataclass(frozen=True)
class Layout:
    """How images are packed: shape (C, H, W) and bytes per label (1: labels.u8, 2: labels.u16 little-endian),
    and what follows from them (pack size, member names and size caps)."""

    shape: tuple[int, int, int]
    label_bytes: int = 1

    @property
    def labels_member(self) -> str:
        """The name (suffix) of a pack's labels member."""
        return "labels.u8" if self.label_bytes == 1 else "labels.u16"

    @property
    def label_dtype(self) -> np.dtype:
        """The numpy dtype of the labels member's raw bytes."""
        return np.dtype(np.uint8) if self.label_bytes == 1 else np.dtype("<u2")

    @property
    def members(self) -> tuple[str, str, str]:
        """The members every pack holds."""
        return ("images.u8", self.labels_member, "keys.txt")

    @property
    def image_bytes(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def pack_size(self) -> int:
        """Images per pack: as many as fit in PACK_BYTES, at least 1, at most MAX_PACK_IMAGES."""
        return max(1, min(MAX_PACK_IMAGES, PACK_BYTES // self.image_bytes))

    def min_shard_bytes(self, count: int) -> int:
        """The fewest bytes a shard of `count` images can have: their pixels and labels and one tar header
        per member of each pack (keys, padding and the end of the archive come on top)."""
        packs = -(-count // self.pack_size)
        return count * (self.image_bytes + self.label_bytes) + packs * len(self.members) * _TAR_HEADER

    @property
    def max_member_bytes(self) -> dict[str, int]:
        """The most bytes each member of a pack may declare in its tar header: checked before reading."""
        n = self.pack_size
        return {"images.u8": n * self.image_bytes, self.labels_member: n * self.label_bytes,
                "keys.txt": n * (MAX_KEY_BYTES + 1)}


def check_num_classes(count: int, where: str, what: str = "classes") -> None:
    """One-line UserError, starting with `where`, if `count` classes are more than shards can label."""
    if count > MAX_CLASSES:
        raise UserError(f"{where}: {count:,} {what}, more than the {MAX_CLASSES:,} classes distgan shards can label "
                        f"(16-bit labels); merge classes or split the dataset")


def label_bytes_for(num_classes: int | None) -> int:
    """Bytes per label for a dataset of `num_classes` classes (None: unlabelled): 1 up to BYTE_CLASSES, else
    2 (UserError beyond MAX_CLASSES)."""
    if num_classes is None or num_classes <= BYTE_CLASSES:
        return 1
    check_num_classes(num_classes, "the dataset")
    return 2


# Used with fullmatch: with match, `$` also matches before a trailing "\n" ("train-000000.tar\n" passed).
# [0-9], not \d: \d also takes other scripts' digits ("train-٠٠٠٠٠٠.tar").
_SHARD_NAME = re.compile(r"(?P<split>[a-z]+)-(?P<index>[0-9]{6,})\.tar")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INCOMPLETE = "incomplete"  # key of the placeholder manifest that `prepare` writes while it works


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`."""
    return f"{split}-{index:06d}.tar"


def is_shard_name(split: str, name: str) -> bool:
    """True if `name` is a shard file name that `distgan prepare` writes for `split`."""
    m = _SHARD_NAME.fullmatch(name)
    return bool(m) and m.group("split") == split


def sample_key(split: str, index: int) -> str:
    """Stable key of image `index` (its position in the IDX file) of `split`."""
    return f"{split}-{index:06d}"


# -- shards ---------------------------------------------------------------------------------------

def write_shard(path: Path, split: str, images: np.ndarray, labels: np.ndarray, start: int,
                layout: Layout) -> None:
    """Write images[i] (C x H x W, or H x W for one channel), labels[i] (global indices start + i) as one
    tar shard of packs of `layout.pack_size` images, atomically.

    We use webdataset's TarWriter, one per shard, instead of ShardWriter: ShardWriter opens the final
    file name directly (a crash leaves a partial shard there) and cuts shards by record count, while
    our records are packs and a shard is cut by image count. The tar goes to a temporary name and is
    renamed into place; the fixed mtime (and TarWriter's fixed user/group/mode) make it byte-identical.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=SHARD_MTIME)
        pack = layout.pack_size
        for lo in range(0, len(images), pack):
            hi = min(lo + pack, len(images))
            keys = "\n".join(sample_key(split, start + i) for i in range(lo, hi))
            writer.write({
                "__key__": sample_key(split, start + lo),
                "images.u8": np.ascontiguousarray(images[lo:hi], dtype=np.uint8).tobytes(),
                layout.labels_member: _encode_labels(labels[lo:hi], layout),
                "keys.txt": keys.encode("ascii"),
            })
        writer.close()


def _encode_labels(labels: np.ndarray, layout: Layout) -> bytes:
    """Labels as the raw bytes of `layout`'s labels member; ValueError for one it cannot hold (never wrapped)."""
    labels = np.asarray(labels)
    top = 1 << (8 * layout.label_bytes)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= top):
        raise ValueError(f"labels {int(labels.min())}..{int(labels.max())} do not fit {layout.labels_member} "
                         f"(0..{top - 1})")
    return np.ascontiguousarray(labels, dtype=layout.label_dtype).tobytes()


def _check_pack(sample: Mapping[str, Any], where: str, layout: Layout) -> tuple[np.ndarray, list[str]]:
    """A pack's labels and keys, once its members are all there and their sizes agree (else UserError)."""
    missing = [m for m in layout.members if m not in sample]
    if missing:
        raise UserError(f"{where}: pack {sample.get('__key__')} lacks {', '.join(missing)}; the shard is "
                        f"corrupt, rerun `distgan prepare`")
    raw = sample[layout.labels_member]
    if len(raw) % layout.label_bytes:
        raise UserError(f"{where}: pack {sample.get('__key__')} has {len(raw)} bytes of {layout.label_bytes}-byte "
                        f"labels; the shard is corrupt, rerun `distgan prepare`")
    labels = np.frombuffer(raw, dtype=layout.label_dtype)
    n = len(labels)
    image_len = len(sample["images.u8"])
    try:
        keys = bytes(sample["keys.txt"]).decode("ascii").split("\n") if n else []
    except UnicodeDecodeError:
        keys = []
    if image_len != n * layout.image_bytes or len(keys) != n:
        raise UserError(f"{where}: pack {sample.get('__key__')} has {image_len} image bytes and {len(keys)} "
                        f"keys for {n} labels ({'x'.join(map(str, layout.shape))} images); the shard is corrupt, "
                        f"rerun `distgan prepare`")
    return labels, keys


def _corrupt(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; the shard is truncated or corrupt, rerun `distgan prepare`")


@contextlib.contextmanager
def reading_shard(path: Path, *, rerun: str, why: str = "") -> Iterator[None]:
    """Around the reading of shard `path`: a missing file or a read or tar error becomes one UserError line
    naming the shard, `why` it failed (when given, ending in ", ") and the command to `rerun`."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as e:
        raise UserError(f"{path}: shard missing; rerun `{rerun}`") from e
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        msg = str(e).split("\n")[0] or type(e).__name__
        raise UserError(f"{path}: cannot read shard ({type(e).__name__}: {msg}); {why}rerun `{rerun}`") from e


@dataclass(frozen=True)
class _Span:
    """Where an images.u8 member's bytes lie in the shard file (read later, straight into the array)."""

    offset: int
    size: int

    def __len__(self) -> int:
        return self.size


def _packs(path: Path, f: BinaryIO, file_size: int, layout: Layout) -> list[dict[str, Any]]:
    """Group the members of an uncompressed tar file into packs, checking each header first; images.u8
    members are left as a _Span (not read), the small labels and keys members are read.

    Why the stdlib `tarfile` and not webdataset's pipeline: we always read whole packed shards (no
    streaming, shuffling or URL handling to gain), webdataset's tar reader lives in its internal
    `tariterators` module, and it opens tars with mode "r|*", which transparently gunzips a
    compressed shard and reads each member whole, so a 1.4 MB shard holding a 1.5 GB member cost
    3 GB of memory. Here only headers are parsed: each member's declared size is checked against
    what a pack of `layout` can hold (Layout.max_member_bytes) and against the file's size *before*
    its bytes are touched. Shards are still written by webdataset's TarWriter and stay readable by
    `wds.WebDataset(url)` (tests/data/test_prepare.py checks both).
    """
    if f.read(2) == b"\x1f\x8b":
        raise _corrupt(path, "is gzip-compressed, but distgan shards are plain tar files")
    f.seek(0)
    packs: list[dict[str, Any]] = []
    caps = layout.max_member_bytes
    small: list[tuple[dict[str, Any], str, int, int]] = []
    with tarfile.open(fileobj=f, mode="r:") as tar:  # type: ignore[call-overload]
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            key, dot, suffix = base.partition(".")
            limit = caps.get(suffix)
            if not dot or limit is None:
                raise _corrupt(path, f"unexpected member {member.name!r} (a pack holds {', '.join(layout.members)})")
            if member.size > limit:  # for a sparse member, the size it would expand to
                raise _corrupt(path, f"member {member.name!r} declares {member.size} bytes, more than the "
                                     f"{limit} a pack of {layout.pack_size} "
                                     f"{'x'.join(map(str, layout.shape))} images allows")
            if not member.isfile() or member.issparse():
                raise _corrupt(path, f"member {member.name!r} is not a plain regular file")
            if member.offset_data + member.size > file_size:
                raise _corrupt(path, f"member {member.name!r} runs past the end of the file")
            if not packs or packs[-1]["__key__"] != key:
                packs.append({"__key__": key})
            if suffix in packs[-1]:
                raise _corrupt(path, f"member {member.name!r} appears twice")
            packs[-1][suffix] = _Span(member.offset_data, member.size)
            if suffix != "images.u8":
                small.append((packs[-1], suffix, member.offset_data, member.size))
    for pack, suffix, offset, size in small:  # labels and keys: at most 67 bytes per image
        f.seek(offset)
        pack[suffix] = f.read(size)
    return packs


def read_shard(path: Path, layout: Layout) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a whole shard: images (n,C,H,W) uint8, labels (n,) of `layout.label_dtype`, keys.

    Every pack is checked (members present, sizes agreeing with its number of labels) before the image
    array is allocated, so memory is bounded by the shard's size on disk; each images member is then
    read from the file straight into its place in that array (one copy). Any read or format problem
    becomes a one-line UserError naming the shard.
    """
    with (reading_shard(path, rerun="distgan prepare", why="the shard is truncated or corrupt, "),
          open(path, "rb") as f):
        packs = _packs(path, f, os.fstat(f.fileno()).st_size, layout)
        checked = [_check_pack(p, str(path), layout) for p in packs]  # before any allocation
        images = np.empty((sum(len(labels) for labels, _ in checked), *layout.shape), np.uint8)
        flat = memoryview(images.reshape(-1))
        pos = 0
        for p in packs:
            span: _Span = p["images.u8"]
            f.seek(span.offset)
            if f.readinto(flat[pos:pos + span.size]) != span.size:
                raise _corrupt(path, f"pack {p['__key__']} runs past the end of the file")
            pos += span.size
    if not checked:
        return images, np.empty((0,), layout.label_dtype), []
    return images, np.concatenate([labels for labels, _ in checked]), [k for _, keys in checked for k in keys]


# -- where shards are --------------------------------------------------------------------------------

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True if `location` is a URL (`scheme://...` or `pipe:...`) rather than a local path."""
    if not isinstance(location, str):
        return False
    m = _URL.match(location)
    return bool(m) and (location[m.end():].startswith("//") or m.group("scheme") == "pipe")


def is_standard(manifest: Mapping[str, Any]) -> bool:
    """True for a (validated) manifest of standard webdataset shards (format version 4)."""
    return manifest.get("version") == STANDARD_FORMAT_VERSION


def resolve_location(base: str | os.PathLike[str], url: str) -> str:
    """Where a version-4 shard entry's `url` points: a URL or an absolute path as is, a relative path under
    `base` (the manifest's directory, or the URL it was served from)."""
    if is_url(url) or os.path.isabs(url):
        return url
    base = str(base)
    if is_url(base):
        if base.startswith("pipe:"):
            return base.replace("{path}", url) if "{path}" in base else base.rstrip("/") + "/" + url
        return base.rstrip("/") + "/" + url
    return str(Path(base) / url)


def shard_file(out: Path, split: str, shard: Mapping[str, Any], version: int) -> Path:
    """The local file of a shard of a local dataset DIR: DIR/<split>/<name>, or for version 4 its `url`
    (a URL there is read through a download cache, see distgan.data.remote)."""
    if version != STANDARD_FORMAT_VERSION:
        return out / split / shard["name"]
    location = resolve_location(out, shard["url"])
    if is_url(location):
        raise UserError(f"{out / MANIFEST}: shard {location} is remote; open the dataset with "
                        f"distgan.data.remote.open_dataset (data.dir does), which reads it through its cache")
    return Path(location)


# -- manifest -------------------------------------------------------------------------------------

def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _field(path: Path, field: str, problem: str) -> UserError:
    return UserError(f"{path}: field {field!r} {problem}; the manifest does not match its shards, rerun "
                     f"`distgan prepare --out {path.parent}`")


def _validate_split(path: Path, split: str, entry: Any, layout: Layout, standard: bool = False) -> None:
    """Check one `splits.<split>` entry: count, shard list, that each shard's bytes can hold its count of
    `layout` images, and that the counts add up."""
    where = f"splits.{split}"
    if not isinstance(entry, dict):
        raise _field(path, where, "must be an object")
    for key in ("count", "shards"):
        if key not in entry:
            raise _field(path, f"{where}.{key}", "is missing")
    if not _is_int(entry["count"], 0):
        raise _field(path, f"{where}.count", f"must be an integer >= 0, not {entry['count']!r}")
    if not isinstance(entry["shards"], list):
        raise _field(path, f"{where}.shards", "must be a list")
    names: set[str] = set()
    for i, shard in enumerate(entry["shards"]):
        at = f"{where}.shards[{i}]"
        if not isinstance(shard, dict):
            raise _field(path, at, "must be an object")
        for key in ("name", "count", "bytes", "sha256"):
            if key not in shard:
                raise _field(path, f"{at}.{key}", "is missing")
        name = shard["name"]
        if not isinstance(name, str) or not is_shard_name(split, name):
            raise _field(path, f"{at}.name", f"{name!r} is not a plain shard file name like "
                                             f"{shard_name(split, 0)!r}")
        if name in names:
            raise _field(path, f"{at}.name", f"{name!r} is listed twice")
        names.add(name)
        if not _is_int(shard["count"], 1):
            raise _field(path, f"{at}.count", f"must be an integer >= 1, not {shard['count']!r}")
        if not _is_int(shard["bytes"], 1):
            raise _field(path, f"{at}.bytes", f"must be a positive integer, not {shard['bytes']!r}")
        if standard:
            if not isinstance(shard.get("url"), str) or not shard["url"] or "\n" in shard["url"]:
                raise _field(path, f"{at}.url", "must be a shard's path or URL")
            skip = shard.get("skip", [])
            if not (isinstance(skip, list) and all(isinstance(k, str) for k in skip)):
                raise _field(path, f"{at}.skip", "must be a list of sample keys")
        elif layout.min_shard_bytes(shard["count"]) > shard["bytes"]:
            raise _field(path, f"{at}.count", f"is {shard['count']:,} images, more than the {shard['bytes']:,} "
                                              f"bytes of {name} (its 'bytes') can hold as "
                                              f"{'x'.join(map(str, layout.shape))} images")
        if not isinstance(shard["sha256"], str) or not _SHA256.fullmatch(shard["sha256"]):
            raise _field(path, f"{at}.sha256", "must be 64 lowercase hex digits")
    total = sum(s["count"] for s in entry["shards"])
    if entry["count"] != total:
        raise _field(path, f"{where}.count", f"is {entry['count']} but its shards hold {total} "
                                             f"(the sum of {where}.shards[].count)")


def _validate_sample(path: Path, manifest: Mapping[str, Any]) -> None:
    """Check `sample`: v1 is MNIST's fixed layout; v2 declares a shape whose pack size must follow from it."""
    sample = manifest["sample"]
    if manifest["version"] == 1:
        if not isinstance(sample, dict) or sample.get("pack_size") != PACK_SIZE \
                or sample.get("image") != [ROWS, COLS] or sample.get("dtype") != "uint8":
            raise _field(path, "sample", f"must describe packs of {PACK_SIZE} uint8 {ROWS}x{COLS} images")
        return
    if not isinstance(sample, dict) or sample.get("dtype") != "uint8":
        raise _field(path, "sample", "must be an object with dtype \"uint8\"")
    shape = sample.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(d, 1) for d in shape)
            and shape[0] in CHANNELS and shape[1] <= MAX_SIDE and shape[2] <= MAX_SIDE):
        raise _field(path, "sample.shape", f"must be [C, H, W] with C in {list(CHANNELS)} and H, W in "
                                           f"1..{MAX_SIDE}, not {shape!r}")
    if manifest["version"] == STANDARD_FORMAT_VERSION:
        if sample.get("encoding") != "standard":
            raise _field(path, "sample.encoding", f"must be \"standard\" in format version {STANDARD_FORMAT_VERSION}")
        if sample.get("image_ext") not in STANDARD_IMAGE_EXTS:
            raise _field(path, "sample.image_ext", f"must be one of {', '.join(STANDARD_IMAGE_EXTS)}, not "
                                                   f"{sample.get('image_ext')!r}")
        if sample.get("label_ext") not in (None, *STANDARD_LABEL_EXTS):
            raise _field(path, "sample.label_ext", f"must be null or one of {', '.join(STANDARD_LABEL_EXTS)}, "
                                                   f"not {sample.get('label_ext')!r}")
        if (sample.get("label_ext") is None) != (manifest.get("classes") is None):
            raise _field(path, "sample.label_ext", "must be null exactly when classes is null")
        transform = manifest.get("transform")
        if not (isinstance(transform, dict) and all(transform.get(k) is None or _is_int(transform.get(k), 1)
                                                    for k in ("resolution", "channels"))):
            raise _field(path, "transform", "must be an object with integer or null resolution and channels")
        return
    if manifest["version"] == WIDE_FORMAT_VERSION and sample.get("label_dtype") != "uint16":
        raise _field(path, "sample.label_dtype", f"must be \"uint16\" in format version {WIDE_FORMAT_VERSION}, not "
                                                 f"{sample.get('label_dtype')!r}")
    want = Layout(tuple(shape)).pack_size  # type: ignore[arg-type]
    if sample.get("pack_size") != want:
        raise _field(path, "sample.pack_size", f"is {sample.get('pack_size')!r} but {shape} images pack "
                                               f"{want} to a pack ({PACK_BYTES} bytes at most)")


def _validate_classes(path: Path, manifest: Mapping[str, Any]) -> None:
    """Check v2 `classes`: null (unlabelled), or names and per-split counts that add up to the splits."""
    classes = manifest["classes"]
    if classes is None:
        return
    if not isinstance(classes, dict):
        raise _field(path, "classes", "must be null (unlabelled) or an object")
    names = classes.get("names")
    most = MAX_CLASSES if manifest["version"] in (WIDE_FORMAT_VERSION, STANDARD_FORMAT_VERSION) else BYTE_CLASSES
    if not (isinstance(names, list) and 1 <= len(names) <= most and all(isinstance(n, str) for n in names)):
        raise _field(path, "classes.names", f"must be a list of 1..{most} strings"
                                            f"{' (one-byte labels)' if most == BYTE_CLASSES else ''}")
    counts = classes.get("counts")
    if not isinstance(counts, dict) or set(counts) != set(manifest["splits"]):
        raise _field(path, "classes.counts", "must hold one list per split")
    for split, per_class in counts.items():
        if not (isinstance(per_class, list) and len(per_class) == len(names)
                and all(_is_int(c, 0) for c in per_class)):
            raise _field(path, f"classes.counts.{split}", f"must be {len(names)} integers >= 0")
        if sum(per_class) != manifest["splits"][split]["count"]:
            raise _field(path, f"classes.counts.{split}", f"adds up to {sum(per_class)}, not the "
                                                          f"{manifest['splits'][split]['count']} of splits.{split}")


def validate_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    """Check a loaded manifest (versions 2 and 3) completely; a one-line UserError naming `path` and the
    bad field."""
    out = path.parent
    if not is_distgan_manifest(manifest):
        raise UserError(f"{path}: not a distgan shard manifest; rerun `distgan prepare --out {out}`")
    version = manifest.get("version")
    if version not in READABLE_VERSIONS or manifest["format"] != FORMAT:
        readable = f"{', '.join(map(str, READABLE_VERSIONS[:-1]))} and {READABLE_VERSIONS[-1]}"
        raise UserError(f"{path}: manifest format version {version!r}, this distgan reads versions {readable}; "
                        f"rerun `distgan prepare --out {out}` (or use the distgan that wrote it)")
    if _INCOMPLETE in manifest:
        raise UserError(f"{path}: `distgan prepare` did not finish writing {out} (interrupted, or still "
                        f"running); rerun `distgan prepare --out {out}`")
    standard = version == STANDARD_FORMAT_VERSION
    keys = ("sample", "source", "splits", "totals", "classes", *(("transform",) if standard else ("shard_size",)))
    for key in keys:
        if key not in manifest:
            raise _field(path, key, "is missing")
    _validate_sample(path, manifest)
    if not standard and not _is_int(manifest["shard_size"], 1):
        raise _field(path, "shard_size", f"must be an integer >= 1, not {manifest['shard_size']!r}")
    if not isinstance(manifest["source"], dict):
        raise _field(path, "source", "must be an object")
    splits = manifest["splits"]
    if not isinstance(splits, dict) or not splits:
        raise _field(path, "splits", "must be a non-empty object")
    layout = manifest_layout(manifest)
    for split, entry in splits.items():
        if split not in SPLITS:
            raise _field(path, f"splits.{split}", f"is not a known split ({', '.join(SPLITS)})")
        _validate_split(path, split, entry, layout, standard)
    totals = manifest["totals"]
    want = {"samples": sum(e["count"] for e in splits.values()),
            "shards": sum(len(e["shards"]) for e in splits.values()),
            **{name: e["count"] for name, e in splits.items()}}
    if totals != want:
        raise _field(path, "totals", f"is {totals!r} but the splits add up to {want!r}")
    _validate_classes(path, manifest)
    return manifest


def manifest_layout(manifest: Mapping[str, Any]) -> Layout:
    """The Layout of a validated manifest (version 3: two-byte labels; version 4: the shape it loads as)."""
    classes = manifest["classes"]
    wide = manifest["version"] == STANDARD_FORMAT_VERSION and classes is not None \
        and len(classes["names"]) > BYTE_CLASSES
    label_bytes = 2 if manifest["version"] == WIDE_FORMAT_VERSION or wide else 1
    return Layout(tuple(manifest["sample"]["shape"]), label_bytes)  # type: ignore[arg-type]


def manifest_classes(manifest: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Class names of a validated manifest; None for an unlabelled dataset."""
    classes = manifest["classes"]
    return None if classes is None else tuple(classes["names"])


def read_manifest_bytes(path: Path) -> bytes:
    """The bytes of manifest file `path`, at most MAX_MANIFEST_BYTES (as for a served one); FileNotFoundError
    if absent, a one-line UserError for anything but a regular file (a FIFO is never waited on, /dev/zero
    never read to the end) or a bigger file."""
    remedy = f"remove it and rerun `distgan prepare --out {path.parent}`"
    with open_regular(path, "a manifest file", remedy) as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise UserError(f"{path}: over {MAX_MANIFEST_BYTES:,} bytes, too big for a distgan shard manifest; "
                        f"{remedy}")
    return data


def load_manifest_json(path: Path) -> Any:
    """The parsed JSON of a manifest file (read_manifest_bytes), unvalidated; UserError if missing or not JSON."""
    try:
        return json.loads(read_manifest_bytes(path))
    except FileNotFoundError as e:
        raise UserError(f"{path}: missing; run `distgan prepare --out {path.parent}` first") from e
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested 1,000s deep
        raise UserError(f"{path}: unreadable ({e}); rerun `distgan prepare --out {path.parent}`") from e


def is_distgan_manifest(obj: Any) -> bool:
    """True if a parsed manifest.json was written by distgan (any version, complete or not)."""
    return isinstance(obj, dict) and obj.get("format") in (FORMAT, LEGACY_FORMAT)


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Load DIR/manifest.json and validate all of it (versions 2 and 3); a one-line UserError if absent or
    unusable."""
    path = Path(out) / MANIFEST
    return validate_manifest(path, load_manifest_json(path))


def write_manifest(out: Path, manifest: Mapping[str, Any]) -> None:
    """Write DIR/manifest.json atomically (key-sorted, indent 2, trailing newline)."""
    write_json_atomic(out / MANIFEST, manifest)


def write_incomplete_manifest(out: Path) -> None:
    """Replace DIR/manifest.json with a placeholder that marks DIR as distgan's while shards are rewritten:
    readers refuse it (an old manifest never describes half-rewritten shards) and a crashed run leaves
    proof of ownership for the next `prepare`."""
    write_manifest(out, {"format": FORMAT, "version": FORMAT_VERSION,
                         _INCOMPLETE: "distgan prepare is writing this directory"})


# -- integrity ------------------------------------------------------------------------------------

# path -> (size, mtime_ns, inode, sha256) of shards already hashed in this process, so that building
# the loader again each epoch does not re-hash unchanged files.
_VERIFIED: dict[str, tuple[int, int, int, str]] = {}


def verify_split(out: Path, manifest: Mapping[str, Any], split: str) -> None:
    """Check that every shard of `split` exists with the manifest's size and sha256 (UserError if not).

    Each file is hashed once per process while its size, mtime and inode stay the same.
    """
    for shard in manifest["splits"][split]["shards"]:
        verify_file(shard_file(out, split, shard, manifest["version"]), shard, out)


def verify_file(path: Path, shard: Mapping[str, Any], out: Path) -> None:
    """Check that shard file `path` has the size and sha256 of manifest entry `shard` (of DIR `out`);
    hashed once per process while its size, mtime and inode stay the same."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise UserError(f"{path}: shard missing; rerun `distgan prepare --out {out}`") from e
    if st.st_size != shard["bytes"]:
        raise UserError(f"{path}: {st.st_size} bytes but the manifest says {shard['bytes']} (truncated "
                        f"or modified); rerun `distgan prepare --out {out}`")
    sig = (st.st_size, st.st_mtime_ns, st.st_ino, shard["sha256"])
    if _VERIFIED.get(str(path)) == sig:
        return
    if file_sha256(path) != shard["sha256"]:
        raise UserError(f"{path}: sha256 differs from {out / MANIFEST} (corrupt or modified); rerun "
                        f"`distgan prepare --out {out}`")
    _VERIFIED[str(path)] = sig


__all__ = ["FORMAT", "LEGACY_FORMAT", "FORMAT_VERSION", "WIDE_FORMAT_VERSION", "READABLE_VERSIONS", "MANIFEST",
           "MAX_MANIFEST_BYTES", "PACK_BYTES", "MAX_PACK_IMAGES", "PACK_SIZE", "MAX_SIDE", "CHANNELS", "UNLABELLED",
           "BYTE_CLASSES",
           "MAX_CLASSES", "check_num_classes", "label_bytes_for", "SPLITS", "MEMBERS",
           "IMAGE_BYTES", "Layout", "shard_name",
           "is_shard_name", "sample_key", "write_shard", "read_shard", "validate_manifest",
           "manifest_layout", "manifest_classes", "read_manifest_bytes", "load_manifest_json", "is_distgan_manifest",
           "read_manifest",
           "write_manifest", "write_incomplete_manifest", "verify_split", "verify_file", "STANDARD_FORMAT_VERSION",
           "STANDARD_IMAGE_EXTS", "STANDARD_LABEL_EXTS", "is_url", "is_standard", "resolve_location", "shard_file"]
