"""Download a named IDX dataset's four gzipped files (distgan.data.datasets) from a list of mirrors, each
checked against its official checksum.

A file is accepted if the md5 of the .gz is the official one, or, where the dataset publishes it, if its
decompressed content has the official md5 and size (a mirror that recompressed the same IDX bytes).
Every file is written atomically (temporary name, then rename), so a failed or corrupt download never
leaves a file under its final name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from distgan.atomic import atomic_path
from distgan.data.datasets import MNIST, Content, NamedDataset, named_dataset
from distgan.data.datasets import resolve_mirrors as _resolve_for
from distgan.data.idx import FILES
from distgan.errors import UserError
from distgan.hashing import file_sha256

OFFICIAL_MD5: dict[str, str] = dict(MNIST.md5)  # MNIST's table (kept for callers of the MNIST-only API)
DEFAULT_MIRRORS: tuple[str, ...] = MNIST.mirrors
MIRRORS_ENV = MNIST.mirrors_env  # DISTGAN_MNIST_MIRRORS


def resolve_mirrors(cli_mirrors: Sequence[str] | None, environ: Mapping[str, str] = os.environ,
                    dataset: str = "mnist") -> list[str]:
    """Mirrors to try, in order: `--mirror` options, else $DISTGAN_<NAME>_MIRRORS, else the defaults."""
    return _resolve_for(named_dataset(dataset), list(cli_mirrors) if cli_mirrors else None, environ)


def _is_network_error(err: BaseException) -> bool:
    """True for failures to reach a host at all (DNS, refused, unreachable, timeout), not HTTP errors."""
    if isinstance(err, urllib.error.HTTPError):
        return False
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    return isinstance(err, (OSError, socket.timeout, urllib.error.URLError))


def content_matches(path: Path, want: Content) -> bool:
    """True if gunzipping `path` gives exactly `want.size` bytes with md5 `want.md5` (never inflates more
    than size + 1 bytes, and only 1 MiB at a time)."""
    h, n = hashlib.md5(), 0
    try:
        with gzip.open(path, "rb") as gz:
            while n <= want.size and (chunk := gz.read(min(1 << 20, want.size + 1 - n))):
                h.update(chunk)
                n += len(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return n == want.size and h.hexdigest() == want.md5


def _check(path: Path, md5: str, content: Content | None) -> str | None:
    """None if the file is the official one; else why not (one phrase)."""
    got = file_sha256(path, "md5")
    if got == md5:
        return None
    if content is not None and content_matches(path, content):
        return None
    extra = " nor is its decompressed content the official one" if content is not None else ""
    return f"md5 {got} != expected {md5}{extra}"


def _fetch(url: str, dest: Path, md5: str, content: Content | None, *, timeout: float, progress: bool) -> None:
    """Download `url` to `dest` atomically, checking it; raise on any failure (no file left)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as out, \
                    tqdm(total=total, desc=f"  {dest.name}", unit="B", unit_scale=True, file=sys.stderr,
                         disable=not progress, mininterval=0.5) as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
            problem = _check(tmp, md5, content)
            if problem:
                raise ValueError(problem)


def download_dataset(dataset: NamedDataset | str, dest_dir: str | os.PathLike[str], mirrors: Sequence[str], *,
                     md5: Mapping[str, str] | None = None, timeout: float = 30.0,
                     progress: bool = True) -> dict[str, Path]:
    """Download the dataset's four files into `dest_dir`, trying each mirror in turn; return role -> path.

    A file already present and official is kept. Each file is checked against `md5` (the dataset's
    official table unless a test injects its own; an injected table disables the content check) and
    written atomically, so a failed or corrupt download never leaves a file under the final name.
    """
    spec = named_dataset(dataset) if isinstance(dataset, str) else dataset
    table = dict(spec.md5) if md5 is None else dict(md5)
    contents: Mapping[str, Content] = spec.content if md5 is None else {}
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for role, name in FILES.items():
        dest = dest_dir / name
        if dest.is_file() and _check(dest, table[name], contents.get(name)) is None:
            paths[role] = dest
            continue
        failures: list[tuple[str, BaseException]] = []
        for mirror in mirrors:
            url = mirror + name
            if progress:
                print(f"downloading {url}", file=sys.stderr, flush=True)
            try:
                _fetch(url, dest, table[name], contents.get(name), timeout=timeout, progress=progress)
                break
            except (OSError, ValueError, urllib.error.URLError) as e:
                failures.append((mirror, e))
                if progress:
                    print(f"  failed: {e}; trying the next mirror", file=sys.stderr, flush=True)
        else:
            if failures and all(_is_network_error(e) for _, e in failures):
                first = str(getattr(failures[0][1], "reason", failures[0][1])).replace("\n", " ")
                raise UserError(f"no network: could not reach any {spec.name} mirror for {name} "
                                f"({len(failures)} tried, first: {first}); copy the four IDX files to a "
                                f"directory by hand and use --raw-dir DIR --dataset {spec.name}")
            detail = "; ".join(f"{m}: {e}".replace("\n", " ") for m, e in failures) or "no mirrors given"
            raise UserError(f"{name}: download failed from every mirror ({detail}); try --mirror URL or "
                            f"--raw-dir DIR")
        paths[role] = dest
    return paths


__all__ = ["OFFICIAL_MD5", "DEFAULT_MIRRORS", "MIRRORS_ENV", "resolve_mirrors", "content_matches",
           "download_dataset"]
