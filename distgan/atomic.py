"""Atomic file and directory writes: a temporary name in the same directory, then a rename.

A crash never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `final` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `final` atomically."""
    write_bytes_atomic(final, text.encode("utf-8"))


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `final` atomically."""
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")

