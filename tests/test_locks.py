"""distgan.locks in-process: DirLock (the holder's pid and host in DIR/.lock; a second holder refused at once
in one line naming them; released on release() or leaving the block; a lock file left by a dead process
is taken over) and wait_for_lock's timeout. flock conflicts between two opens of the same file, so two
holders in one process behave as two processes would."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from distgan.errors import UserError
from distgan.locks import LOCK_FILE, DirLock, wait_for_lock

ME = f"pid {os.getpid()} on host {socket.gethostname()}"


def _refusal(directory, what: str = "run.dir runs/x") -> str:
    with pytest.raises(UserError) as exc:
        DirLock(directory, what).acquire()
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_acquire_creates_the_directory_and_names_the_holder(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    lock = DirLock(run_dir, "run.dir runs/x").acquire()
    try:
        assert (run_dir / LOCK_FILE).read_text() == ME + "\n"
    finally:
        lock.release()


def test_a_second_holder_is_refused_in_one_line(tmp_path):
    with DirLock(tmp_path, "run.dir runs/x"):
        assert _refusal(tmp_path) == f"run.dir runs/x is in use by {ME}; wait for it to finish or use another " \
                                     f"directory"
        _refusal(tmp_path)  # a refusal neither takes nor breaks the lock
        assert (tmp_path / LOCK_FILE).read_text() == ME + "\n"


def test_release_frees_the_lock_and_is_idempotent(tmp_path):
    first = DirLock(tmp_path, "a").acquire()
    first.release()
    first.release()
    second = DirLock(tmp_path, "b").acquire()
    _refusal(tmp_path)
    second.release()
    DirLock(tmp_path, "c").acquire().release()


def test_leaving_the_block_releases_even_on_error(tmp_path):
    with pytest.raises(RuntimeError), DirLock(tmp_path, "x"):
        raise RuntimeError("training failed")
    with DirLock(tmp_path, "x"):
        pass


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    """The pid in the file is only for the message: without a live flock the lock is free."""
    dead = 4_194_304 + 1  # above Linux's largest pid_max: no process has it
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    (tmp_path / LOCK_FILE).write_text(f"pid {dead} on host some-old-node-with-a-long-name\n")
    with DirLock(tmp_path, "x"):
        assert (tmp_path / LOCK_FILE).read_text() == ME + "\n"  # rewritten whole, nothing of the old line


def test_a_holder_that_wrote_nothing_is_another_process(tmp_path):
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _refusal(tmp_path, "--out d") == "--out d is in use by another process; wait for it to finish or " \
                                                "use another directory"
    finally:
        os.close(fd)


def test_a_directory_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    assert _refusal(tmp_path / "file" / "run") == \
        f"run.dir runs/x: cannot create {tmp_path / 'file' / 'run' / LOCK_FILE} (Not a directory)"


def test_wait_for_lock_times_out_naming_the_holder_then_frees(tmp_path):
    path = tmp_path / "cache" / "shard.lock"
    with wait_for_lock(path, timeout=5, what="download of s"):
        assert path.read_text() == ME + "\n"
        with pytest.raises(UserError) as exc, wait_for_lock(path, timeout=0.05, what="download of s"):
            pass
        assert str(exc.value) == f"download of s: still locked by {ME} after 0s ({path}); if that process is " \
                                 f"stuck, stop it and run again"
    with pytest.raises(ValueError), wait_for_lock(path, timeout=0.05, what="download of s"):
        raise ValueError("the block failed")
    with wait_for_lock(path, timeout=0.05, what="download of s"):  # free again after both blocks
        pass
