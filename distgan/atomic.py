"""Atomic, durable file writes, and one-line errors for writes the user can fix.

A file is written under a temporary name in the same directory, fsynced, renamed onto its final name,
and the directory is fsynced: a crash (even a power cut) leaves either the old file or the new one,
never a half-written file under the final name. A full disk, an exceeded quota, a read-only file system
or a directory without write permission becomes a `WriteError`: a `UserError` (one line from the CLI)
that is also an `OSError` with the original `errno`, so callers that catch `OSError` still do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distgan.errors import UserError

# errno -> (cause, what to do), for the write failures a user can fix.
_FIXABLE: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota or write elsewhere"),
    errno.EROFS: ("read-only file system", "remount it read-write or write elsewhere"),
    errno.EACCES: ("permission denied", "make the directory writable for this user or write elsewhere"),
    errno.EPERM: ("operation not permitted", "make the directory writable for this user or write elsewhere"),
}
# How Rust (safetensors) and C++ (torch.save) report an errno inside their own exception messages.
_CODE_IN_MESSAGE = re.compile(r"(?:code: |errno[ =:]*|\[Errno )(\d+)", re.IGNORECASE)
_TEXT_IN_MESSAGE = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                    "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES,
                    "Operation not permitted": errno.EPERM}


class WriteError(UserError, OSError):
    """A write failed for a reason the user can fix (full disk, quota, read-only or unwritable directory).

    The message is one line naming the path, the cause and the remedy; `errno` is the original errno.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def fixable_errno(exc: BaseException) -> int | None:
    """The errno of a user-fixable write failure (ENOSPC, EDQUOT, EROFS, EACCES, EPERM) behind `exc`, or None.

    Understands `OSError`s and the messages of safetensors' `SafetensorError` ("IoError(Os { code: 28 ...")
    and torch's `RuntimeError`s, which carry the errno only in their text.
    """
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in _FIXABLE else None
    if not isinstance(exc, RuntimeError) and type(exc).__name__ != "SafetensorError":
        return None
    text = str(exc)
    for match in _CODE_IN_MESSAGE.finditer(text):
        if int(match.group(1)) in _FIXABLE:
            return int(match.group(1))
    return next((code for needle, code in _TEXT_IN_MESSAGE.items() if needle in text), None)


def write_error(what: str, code: int, remedy: str | None = None) -> WriteError:
    """`cannot <what>: <cause>; <remedy>` as a WriteError, e.g. what = "write runs/x/config.yaml"."""
    cause, default = _FIXABLE[code]
    return WriteError(f"cannot {what}: {cause}; {remedy or default}", code)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory by path (a directory's fsync makes its entries, e.g. a rename, durable)."""
    is_dir = os.path.isdir(path)
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL or not is_dir:  # a few file systems cannot fsync a directory
            raise
    finally:
        os.close(fd)


def write_file_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` (not atomically) and fsync it: for files inside a directory renamed into place later."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The file is fsynced before the rename and the directory after it. A full disk, a quota, a read-only
    or unwritable directory raises `WriteError` naming `final`; the temporary file is removed.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as e:
        code = fixable_errno(e)
        if code is None:
            raise
        raise write_error(f"write {final}", code) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, final)
        fsync_path(final.parent)  # the rename itself survives a power cut
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        code = fixable_errno(e) if isinstance(e, Exception) and not isinstance(e, UserError) else None
        if code is None:
            raise
        raise write_error(f"write {final}", code) from e


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `final` atomically and durably."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `final` atomically and durably."""
    write_bytes_atomic(final, text.encode("utf-8"))


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `final` atomically and durably."""
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")
