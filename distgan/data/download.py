"""Download MNIST's four gzipped IDX files from a list of mirrors, each checked against its md5.

Every file is written atomically (temporary name, then rename), so a failed or corrupt download never
leaves a file under its final name.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from distgan.atomic import atomic_path
from distgan.data.idx import FILES
from distgan.errors import UserError
from distgan.hashing import file_sha256

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


def _fetch(url: str, dest: Path, md5: str, *, timeout: float, progress: bool) -> None:
    """Download `url` to `dest` atomically, checking its md5; raise on any failure (no file left)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        h = hashlib.md5()
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, \
                tqdm(total=total, desc=f"  {dest.name}", unit="B", unit_scale=True, file=sys.stderr,
                     disable=not progress, mininterval=0.5) as bar:
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
            if h.hexdigest() != md5:
                raise ValueError(f"md5 {h.hexdigest()} != expected {md5}")


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
        if dest.is_file() and file_sha256(dest, "md5") == md5[name]:
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


__all__ = ["OFFICIAL_MD5", "DEFAULT_MIRRORS", "MIRRORS_ENV", "resolve_mirrors", "download_mnist"]
