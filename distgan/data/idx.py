"""IDX quadruples (MNIST, Fashion-MNIST, KMNIST...: any N x H x W uint8 images with uint8 labels): read
and validate them, and find the four files in a local directory.

Local directories are validated by their IDX headers (the test data holds a 10k subset of MNIST's
training set, whose md5 differs from the official one); downloads (distgan.data.download) are checked
against the official md5s. Image size comes from the header (each side 1..MAX_SIDE); labels may be any
byte 0..255 (a named dataset narrows the range in distgan.data.sources). Reading is bounded: the header
is read first, the body size follows from its dimensions (at most MAX_BODY_BYTES), and a gzipped file is
decompressed incrementally, never past that size plus one byte, so a small gzip that inflates to
gigabytes costs no more memory than the file its header describes.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from distgan.errors import UserError

# role -> official file name (gzipped, as served by every mirror)
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
ROWS = COLS = 28  # MNIST's image size (format version 1 shards hold only this)
NUM_CLASSES = 10  # MNIST's
MAX_ITEMS = 10_000_000  # a header claiming more items than this is corrupt (MNIST has 60000 training images)
MAX_SIDE = 4096  # largest image side an IDX header may claim
MAX_BODY_BYTES = 2 << 30  # largest body (N x H x W bytes) an IDX header may claim: 2 GiB
_CHUNK = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a stat mode that is not a regular file's is, for a message: "a directory", "a FIFO (named pipe)"..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, what: str, remedy: str) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (links followed), else a one-line UserError
    "PATH: is a directory, not WHAT; REMEDY". A FIFO is opened without waiting for a writer, then refused, so
    this never blocks; a device (/dev/zero) is refused before a byte is read. OSError propagates."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{path}: is {file_kind(mode)}, not {what}; {remedy}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _open_maybe_gzip(path: Path) -> Iterator[BinaryIO]:
    """The file as a stream of its bytes, gunzipped on the fly if it starts with the gzip magic."""
    try:
        f = open_regular(path, "an IDX file", "put the IDX file itself there")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e}); check the file and its permissions") from e
    with f:
        if f.read(2) == b"\x1f\x8b":
            f.seek(0)
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                yield gz  # type: ignore[misc]
        else:
            f.seek(0)
            yield f


def _read_at_most(stream: BinaryIO, path: Path, n: int) -> bytes:
    """Up to `n` bytes, read (and decompressed) in chunks of at most 1 MiB: memory follows the real data."""
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = stream.read(min(_CHUNK, n - len(buf)))
            if not chunk:
                break
            buf += chunk
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if isinstance(stream, gzip.GzipFile):
            raise UserError(f"{path}: corrupt gzip data ({e}); download the file again") from e
        raise UserError(f"{path}: cannot read ({e}); check the file and its permissions") from e
    return bytes(buf)


def parse_idx(path: str | os.PathLike[str], *, kind: str) -> np.ndarray:
    """Read an IDX file (gzipped or not) and validate it; `kind` is "images" or "labels".

    Returns uint8 images of shape (N, H, W) or uint8 labels of shape (N,). Raises a one-line
    UserError naming the file on a wrong magic number, absurd dimensions, or a truncated/oversized
    body. At most header + body + 1 bytes are ever decompressed.
    """
    path = Path(path)
    want_magic, ndim = (IMAGE_MAGIC, 3) if kind == "images" else (LABEL_MAGIC, 1)
    header = 4 + 4 * ndim
    with _open_maybe_gzip(path) as stream:
        head = _read_at_most(stream, path, header)
        if len(head) < 4:
            raise UserError(f"{path}: truncated IDX file ({len(head)} bytes, no header); download it again")
        magic = int.from_bytes(head[:4], "big")
        if magic != want_magic:
            raise UserError(f"{path}: wrong IDX magic number 0x{magic:08x} (expected 0x{want_magic:08x} for "
                            f"IDX uint8 {kind}); is this the right file?")
        if len(head) < header:
            raise UserError(f"{path}: truncated IDX header ({len(head)} bytes); download it again")
        dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        if dims[0] > MAX_ITEMS:
            raise UserError(f"{path}: header claims {dims[0]} {kind}, more than the {MAX_ITEMS} an IDX file "
                            f"may hold here; the file is corrupt, download it again")
        if kind == "images" and not all(1 <= d <= MAX_SIDE for d in dims[1:]):
            raise UserError(f"{path}: header claims {dims[1]}x{dims[2]} images; each side must be 1..{MAX_SIDE}; "
                            f"the file is corrupt, download it again")
        body_size = int(np.prod(dims, dtype=np.int64))
        if body_size > MAX_BODY_BYTES:
            raise UserError(f"{path}: header claims {body_size} bytes of {kind}, more than the {MAX_BODY_BYTES} "
                            f"read here; the file is corrupt (or split the dataset)")
        body = _read_at_most(stream, path, body_size + 1)
    if len(body) != body_size:
        what = "truncated" if len(body) < body_size else "has trailing bytes"
        got = f"{header + len(body)} bytes" if len(body) < body_size else "longer"
        raise UserError(f"{path}: {what}: header says {dims[0]} items ({header + body_size} bytes) but the "
                        f"data is {got}; download it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


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
                        f"IDX files")
    found: dict[str, Path] = {}
    for role, name in FILES.items():
        candidates = (raw_dir / name, raw_dir / name.removesuffix(".gz"))
        for candidate in candidates:
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            for odd in (c for c in candidates if c.exists()):  # a directory, FIFO, device: not "missing"
                raise UserError(f"{odd}: is {file_kind(odd.stat().st_mode)}, not an IDX file; put the IDX file "
                                f"itself there")
            raise UserError(f"{raw_dir / name}: missing (nor found without .gz); the raw dir needs "
                            f"{', '.join(FILES.values())}")
    return found


__all__ = ["FILES", "ROWS", "COLS", "NUM_CLASSES", "MAX_ITEMS", "MAX_SIDE", "MAX_BODY_BYTES", "file_kind",
           "open_regular", "parse_idx", "load_pair", "find_raw_files"]
