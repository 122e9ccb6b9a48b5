"""MNIST's four IDX files: read and validate them, find them in a local directory, or download them.

Local directories are validated by their IDX headers (the test data holds a 10k subset of the training
set, whose md5 differs from the official one); downloads are checked against the official md5s.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from distgan.atomic import atomic_path
from distgan.errors import UserError

# role -> official file name (gzipped, as served by every mirror)
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# The official MNIST md5s (the same table torchvision checks).
OFFICIAL_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRRORS_ENV = "DISTGAN_MNIST_MIRRORS"

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
ROWS = COLS = 28
NUM_CLASSES = 10


def umask_mode(path: Path) -> None:
    """Give a file made by atomic_path (mkstemp: 0600) the usual 0644 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o644 & ~umask)


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped if it starts with the gzip magic (whatever its name)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e}); check the file and its permissions") from e
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, ValueError) as e:
            raise UserError(f"{path}: corrupt gzip data ({e}); download the file again") from e
    return data


def parse_idx(path: str | os.PathLike[str], *, kind: str) -> np.ndarray:
    """Read an IDX file (gzipped or not) and validate it; `kind` is "images" or "labels".

    Returns uint8 images of shape (N, 28, 28) or uint8 labels of shape (N,). Raises a one-line
    UserError naming the file on a wrong magic number, wrong dimensions or a truncated/oversized body.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    want_magic, ndim = (IMAGE_MAGIC, 3) if kind == "images" else (LABEL_MAGIC, 1)
    if len(data) < 4:
        raise UserError(f"{path}: truncated IDX file ({len(data)} bytes, no header); download it again")
    magic = int.from_bytes(data[:4], "big")
    if magic != want_magic:
        raise UserError(f"{path}: wrong IDX magic number 0x{magic:08x} (expected 0x{want_magic:08x} for "
                        f"MNIST {kind}); is this the right file?")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header ({len(data)} bytes); download it again")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [ROWS, COLS]:
        raise UserError(f"{path}: images are {dims[1]}x{dims[2]}, expected {ROWS}x{COLS}; not MNIST")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise UserError(f"{path}: {what}: header says {dims[0]} items ({expected} bytes) but the data is "
                        f"{len(data)} bytes; download it again")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and arr.size and int(arr.max()) >= NUM_CLASSES:
        raise UserError(f"{path}: label {int(arr.max())} out of range 0..{NUM_CLASSES - 1}; not MNIST labels")
    return arr


def load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse an images/labels pair and check that their counts agree."""
    images = parse_idx(images_path, kind="images")
    labels = parse_idx(labels_path, kind="labels")
    if len(images) != len(labels):
        raise UserError(f"{images_path}: holds {len(images)} images but {labels_path.name} holds "
                        f"{len(labels)} labels; the two files must come from the same set")
    return images, labels


def find_raw_files(raw_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Locate the four IDX files in `raw_dir`, each gzipped (official name) or not (name without .gz)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise UserError(f"--raw-dir {raw_dir}: not a directory; point it at the folder holding the four "
                        f"MNIST IDX files")
    found: dict[str, Path] = {}
    for role, name in FILES.items():
        for candidate in (raw_dir / name, raw_dir / name.removesuffix(".gz")):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            raise UserError(f"{raw_dir / name}: missing (nor found without .gz); the raw dir needs "
                            f"{', '.join(FILES.values())}")
    return found


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def resolve_mirrors(cli_mirrors: Sequence[str] | None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Mirrors to try, in order: `--mirror` options, else $DISTGAN_MNIST_MIRRORS, else the defaults."""
    if cli_mirrors:
        mirrors = list(cli_mirrors)
    elif environ.get(MIRRORS_ENV, "").strip():
        mirrors = [m.strip() for m in environ[MIRRORS_ENV].split(",") if m.strip()]
    else:
        mirrors = list(DEFAULT_MIRRORS)
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _is_network_error(err: BaseException) -> bool:
    """True for failures to reach a host at all (DNS, refused, unreachable, timeout), not HTTP errors."""
    if isinstance(err, urllib.error.HTTPError):
        return False
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    return isinstance(err, (OSError, socket.timeout, urllib.error.URLError))


class _Progress:
    """Download progress on stderr: a rewritten line on a terminal, a few lines otherwise."""

    def __init__(self, name: str, total: int | None, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.tty = sys.stderr.isatty()
        self.next_pct = 0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self.total:
            pct = 100 * done // self.total
            if self.tty or pct >= self.next_pct:
                end = "\r" if self.tty and done < self.total else "\n"
                print(f"  {self.name}: {pct:3d}% ({done / 1e6:.1f}/{self.total / 1e6:.1f} MB)",
                      end=end, file=sys.stderr, flush=True)
                self.next_pct = pct - pct % 25 + 25
        elif self.tty:
            print(f"  {self.name}: {done / 1e6:.1f} MB", end="\r", file=sys.stderr, flush=True)


def _fetch(url: str, dest: Path, md5: str, *, timeout: float, progress: bool) -> None:
    """Download `url` to `dest` atomically, checking its md5; raise on any failure (no file left)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        total = resp.headers.get("Content-Length")
        bar = _Progress(dest.name, int(total) if total and total.isdigit() else None, progress)
        h = hashlib.md5()
        done = 0
        with atomic_path(dest) as tmp, open(tmp, "wb") as out:
            umask_mode(tmp)
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                bar.update(done)
            out.flush()
            if h.hexdigest() != md5:
                raise ValueError(f"md5 {h.hexdigest()} != expected {md5}")
        if bar.total is None:
            bar.total = done
            bar.update(done)


def download_mnist(dest_dir: str | os.PathLike[str], mirrors: Sequence[str], *,
                   md5: Mapping[str, str] = OFFICIAL_MD5, timeout: float = 30.0,
                   progress: bool = True) -> dict[str, Path]:
    """Download the four files into `dest_dir`, trying each mirror in turn; return role -> path.

    A file already present with the expected md5 is kept. Each file is checked against `md5` (the
    official table unless a test injects its own) and written atomically, so a failed or corrupt
    download never leaves a file under the final name.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for role, name in FILES.items():
        dest = dest_dir / name
        if dest.is_file() and file_digest(dest, "md5") == md5[name]:
            paths[role] = dest
            continue
        failures: list[tuple[str, BaseException]] = []
        for mirror in mirrors:
            url = mirror + name
            if progress:
                print(f"downloading {url}", file=sys.stderr, flush=True)
            try:
                _fetch(url, dest, md5[name], timeout=timeout, progress=progress)
                break
            except (OSError, ValueError, urllib.error.URLError) as e:
                failures.append((mirror, e))
                if progress:
                    print(f"  failed: {e}; trying the next mirror", file=sys.stderr, flush=True)
        else:
            if failures and all(_is_network_error(e) for _, e in failures):
                first = str(getattr(failures[0][1], "reason", failures[0][1])).replace("\n", " ")
                raise UserError(f"no network: could not reach any MNIST mirror for {name} "
                                f"({len(failures)} tried, first: {first}); copy the four IDX files to a "
                                f"directory by hand and use --raw-dir DIR")
            detail = "; ".join(f"{m}: {e}".replace("\n", " ") for m, e in failures) or "no mirrors given"
            raise UserError(f"{name}: download failed from every mirror ({detail}); try --mirror URL or "
                            f"--raw-dir DIR")
        paths[role] = dest
    return paths
