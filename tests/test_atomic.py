"""distgan.atomic in-process: atomic writes (exact bytes and mode, the old file replaced by a rename and
left whole when the block fails, no temporary left behind either way), the durable (in-place) write, the
fsync helper, and the classification of write errors into one-line WriteErrors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from safetensors import SafetensorError

from distgan.atomic import (
    WriteError,
    atomic_path,
    fixable_errno,
    fsync_path,
    write_bytes_atomic,
    write_error,
    write_file_durably,
    write_json_atomic,
    write_text_atomic,
)
from distgan.errors import UserError


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_creates_parents_and_leaves_only_the_file(tmp_path):
    final = tmp_path / "a" / "b" / "data.bin"
    write_bytes_atomic(final, b"\x00\x01payload")
    assert final.read_bytes() == b"\x00\x01payload"
    assert _names(final.parent) == ["data.bin"]


def test_the_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_replace_is_a_rename_a_reader_of_the_old_file_keeps_it(tmp_path):
    final = tmp_path / "state.json"
    final.write_text("old contents")
    old_inode = final.stat().st_ino
    with open(final) as reader:
        write_text_atomic(final, "new")
        assert reader.read() == "old contents"  # not truncated in place
    assert final.read_text() == "new" and final.stat().st_ino != old_inode
    assert _names(tmp_path) == ["state.json"]


def test_text_is_utf8_and_json_is_sorted_and_indented(tmp_path):
    write_text_atomic(tmp_path / "t.txt", "é\n")
    assert (tmp_path / "t.txt").read_bytes() == b"\xc3\xa9\n"
    write_json_atomic(tmp_path / "m.json", {"b": [1, 2], "a": "x"})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": "x",\n  "b": [\n    1,\n    2\n  ]\n}\n'


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_a_failed_block_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    final = tmp_path / "model.bin"
    final.write_bytes(b"old")
    with pytest.raises(type(error)) as exc, atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"half written")
        raise error
    assert exc.value is error  # propagated as is: neither wrapped nor classified
    assert final.read_bytes() == b"old" and _names(tmp_path) == ["model.bin"]


@pytest.mark.parametrize("code, cause, remedy", [
    (errno.ENOSPC, "no space left on device", "free space or write elsewhere"),
    (errno.EDQUOT, "disk quota exceeded", "free space within the quota or write elsewhere"),
    (errno.EROFS, "read-only file system", "remount it read-write or write elsewhere"),
    (errno.EACCES, "permission denied", "make the directory writable for this user or write elsewhere"),
])
def test_a_fixable_os_error_in_the_block_becomes_one_line(tmp_path, code, cause, remedy):
    final = tmp_path / "out" / "x.yaml"
    with pytest.raises(WriteError) as exc, atomic_path(final) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(code, os.strerror(code))
    e = exc.value
    assert str(e) == f"cannot write {final}: {cause}; {remedy}" and "\n" not in str(e)
    assert isinstance(e, UserError) and isinstance(e, OSError) and e.errno == code
    assert isinstance(e.__cause__, OSError) and e.__cause__.errno == code
    assert _names(final.parent) == []  # neither the file nor its temporary


def test_a_write_error_raised_in_the_block_is_not_wrapped_again(tmp_path):
    inner = write_error("save checkpoint X", errno.ENOSPC)
    with pytest.raises(WriteError) as exc, atomic_path(tmp_path / "f"):
        raise inner
    assert exc.value is inner


def test_an_unfixable_os_error_propagates_unchanged(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError) as exc:  # the parent "directory" is a file: nothing the classification knows
        write_bytes_atomic(tmp_path / "file" / "sub" / "x", b"x")
    assert not isinstance(exc.value, WriteError) and exc.value.errno in (errno.EEXIST, errno.ENOTDIR)
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "y") as tmp:
        tmp.unlink()  # the block removed its own temporary: the fsync cannot open it
    assert _names(tmp_path) == ["file"]


def test_write_file_durably_overwrites_in_place(tmp_path):
    path = tmp_path / "shard.tar"
    path.write_bytes(b"a much longer old content")
    inode = path.stat().st_ino
    write_file_durably(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_ino == inode


def test_fsync_path_takes_files_and_directories(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    fsync_path(tmp_path / "f")
    fsync_path(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_path(tmp_path / "missing")


@pytest.mark.parametrize("exc, code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (PermissionError(errno.EPERM, "Operation not permitted"), errno.EPERM),
    (OSError(errno.ENOENT, "No such file or directory"), None),
    (OSError("no errno at all"), None),
    (SafetensorError('Error while serializing: IoError(Os { code: 122, kind: QuotaExceeded, message: '
                     '"Disk quota exceeded" })'), errno.EDQUOT),
    (SafetensorError("IoError(Os { code: 2, kind: NotFound })"), None),
    (RuntimeError("[enforce fail at inline_container.cc:588] . PytorchStreamWriter failed writing file "
                  "data/0: file write failed: [Errno 28]"), errno.ENOSPC),
    (RuntimeError("write failed: errno=30"), errno.EROFS),
    (RuntimeError("cannot write: Read-only file system"), errno.EROFS),
    (RuntimeError("code: 5 then Permission denied"), errno.EACCES),  # an unfixable code, then a fixable text
    (RuntimeError("unexpected pos 704 vs 598"), None),
    (ValueError("[Errno 28] No space left on device"), None),  # only OSError, RuntimeError, SafetensorError
])
def test_fixable_errno(exc, code):
    assert fixable_errno(exc) == code


def test_write_error_message_and_custom_remedy():
    e = write_error("save checkpoint runs/x/step_1", errno.EROFS, "set run.dir elsewhere")
    assert str(e) == "cannot save checkpoint runs/x/step_1: read-only file system; set run.dir elsewhere"
    assert e.errno == errno.EROFS and isinstance(e, OSError)
    with pytest.raises(KeyError):  # only the fixable errnos have a cause and a remedy
        write_error("write x", errno.ENOENT)
