"""An exclusive lock on a directory for the life of a process: one training run per run directory,
one `distgan prepare` per output directory; and `wait_for_lock`, a lock on a file that waits for its
holder (one download of a remote shard per node).

The lock is `fcntl.flock` on DIR/.lock, held through an open file descriptor. The kernel drops it when
the process exits in any way (kill -9 included), so there is never a stale lock to clean up; the pid
and host written into the file only serve the error message. Caveat: flock is reliable on local file
systems and on NFSv4 and Lustre (where it is mounted with `flock`), but on NFSv3 or a mount without
lock support two hosts may both get it: keep run directories of concurrent jobs apart there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from distgan.errors import UserError

LOCK_FILE = ".lock"


class DirLock:
    """Hold an exclusive lock on `directory` (created if needed) until `release()` or process exit."""

    def __init__(self, directory: str | os.PathLike[str], what: str) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.what = what  # how the error names the directory, e.g. "run.dir runs/x"
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        """Take the lock or raise a one-line UserError naming the holder's pid and host."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.what}: cannot create {self.path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.what} is in use by {holder}; wait for it to finish or use another "
                            f"directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (also happens when the process exits)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def wait_for_lock(path: str | os.PathLike[str], *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive flock on file `path` (created if needed) for the block, *waiting* for it.

    Unlike DirLock, which fails at once when the lock is taken, this waits for the holder to finish
    (polling every 20-200 ms, so the wait itself is bounded), then raises a one-line UserError naming
    `what` and the holder's pid and host if `timeout` seconds pass first. For short critical sections
    that several processes of one node may enter at the same time (one download of a shard).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"{what}: cannot create the lock file {path} ({e.strerror})") from None
    try:
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
                    raise UserError(f"{what}: still locked by {holder} after {timeout:.0f}s ({path}); if that "
                                    f"process is stuck, stop it and run again") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
