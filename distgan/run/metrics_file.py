"""RUN_DIR/metrics.jsonl: every logged scalar and evaluation score, one JSON object per logging call.

    {"step": 50, "time": 1767225600.123, "loss/d": 1.21, "loss/g": 0.87, ...}

Written by the main process only, whatever the W&B mode, so a run can be read and plotted without W&B
(`distgan plot`). `step` is the training step the values belong to, `time` the Unix time of the call;
non-finite values (a diverging loss) are written as null, so every line is standard JSON.

Resume rule: a run that resumes from the checkpoint at step S first rewrites the file keeping only the
rows with step <= S (atomically: a temporary file renamed into place), then appends. Rows past S were
logged by a run that died before its next checkpoint (a requeue after SIGKILL, a crash, a node failure);
the resumed run logs those steps again, so each step is in the file once, in order. A torn last line
(a crash in the middle of a write) is dropped the same way. Rows up to the checkpoint are durable:
the trainer calls `sync()` (fsync) before it saves each checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from distgan.atomic import atomic_path, fixable_errno, write_bytes_atomic, write_error

log = logging.getLogger(__name__)

FILE_NAME = "metrics.jsonl"
MAX_LINE_BYTES = 1 << 20  # a row is a few hundred bytes; a longer line is not one (streaming readers skip it)


def _plain(value: Any) -> Any:
    """A JSON-safe scalar: numbers as float/int (non-finite -> None), bools and strings kept."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    number = float(value)  # numpy and 0-d torch values too
    return number if math.isfinite(number) else None


def parse_lines(data: bytes, source: str | os.PathLike[str] = FILE_NAME) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl text: objects with an integer `step`. A torn last line (no newline at the
    end) is dropped silently; any other unreadable line is dropped with a warning."""
    return [row for row, _ in _rows_and_lines(data, source)]


def _rows_and_lines(data: bytes, source: str | os.PathLike[str]) -> list[tuple[dict[str, Any], bytes]]:
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: b"" for a complete file, else a line cut mid-write
    if torn.strip():
        log.info("%s: dropping a torn last line (%d bytes)", source, len(torn))
    rows = []
    for number, line in enumerate(lines, 1):
        row = _parse_row(line, source, number)
        if row is not None:
            rows.append((row, line + b"\n"))
    return rows


def _parse_row(line: bytes, source: str | os.PathLike[str], number: int) -> dict[str, Any] | None:
    """The row of one line; None for a blank line, and for anything else that is no row (with a warning)."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        row = None
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        log.warning("%s:%d: not a metrics row, ignored", source, number)
        return None
    return row


def _read_lines(f: BinaryIO, source: str | os.PathLike[str]) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number, offset, line with its newline) for each complete line of `f`, read MAX_LINE_BYTES at most
    at a time: memory stays at one line. A longer line is read past with a warning and given as None; a torn
    last line (no newline at the end of the file) is not given."""
    number = 0
    while True:
        offset = f.tell()
        line = f.readline(MAX_LINE_BYTES)
        if not line:
            return
        number += 1
        if line.endswith(b"\n"):
            yield number, offset, line
            continue
        if len(line) < MAX_LINE_BYTES:  # the end of the file: a torn last line
            if line.strip():
                log.info("%s: dropping a torn last line (%d bytes)", source, len(line))
            return
        while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
        log.warning("%s:%d: a line of more than %d bytes, not a metrics row, ignored", source, number,
                    MAX_LINE_BYTES)
        yield number, offset, None


def iter_metrics(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The rows of a metrics.jsonl file one by one, as `read_metrics` gives them, reading a line at a time:
    memory stays at one row whatever the file's size (a line over MAX_LINE_BYTES is skipped with a warning)."""
    with open(path, "rb") as f:
        for number, _, line in _read_lines(f, path):
            row = None if line is None else _parse_row(line[:-1], path, number)
            if row is not None:
                yield row


def _copy_prefix(path: Path, out: BinaryIO, size: int) -> None:
    """Copy the first `size` bytes of `path` to `out`, a bounded piece at a time."""
    with open(path, "rb") as src:
        while size > 0 and (chunk := src.read(min(size, MAX_LINE_BYTES))):
            out.write(chunk)
            size -= len(chunk)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file, in file order (see `parse_lines`)."""
    return parse_lines(Path(path).read_bytes(), path)


class MetricsFile:
    """RUN_DIR/metrics.jsonl of one run, opened at set-up with the step the run resumes from.

    On the main process (`enabled`), opening rewrites the file to the rows with step <= `resume_step`;
    `write` appends one line and flushes it to the OS; `sync` makes the appended lines durable. On the
    other processes every method does nothing.
    """

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True) -> None:
        self.path = Path(run_dir) / FILE_NAME
        self.enabled = enabled
        if enabled:
            self._truncate_after(resume_step)

    def _truncate_after(self, resume_step: int) -> None:
        """Keep the rows with step <= resume_step (all of them are from before the checkpoint resumed).

        Streams the file (memory stays at one line whatever its size) and rewrites it atomically only when
        something is dropped: the leading lines that are all kept are copied as they are, then the kept rest."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            write_bytes_atomic(self.path, b"")  # the file exists from set-up on, even before the first log
            return
        dropped = 0  # rows logged after resume_step
        with f, contextlib.ExitStack() as stack:
            out: BinaryIO | None = None
            kept_bytes = 0  # the leading lines, all kept, while nothing was dropped
            for number, _, line in _read_lines(f, self.path):
                row = None if line is None else _parse_row(line[:-1], self.path, number)
                keep = row is not None and row["step"] <= resume_step
                dropped += row is not None and not keep
                if out is None and keep:
                    kept_bytes += len(line)
                    continue
                if out is None:
                    out = self._start_rewrite(stack, kept_bytes)
                if keep:
                    out.write(line)
            if out is None and kept_bytes != os.fstat(f.fileno()).st_size:  # a torn last line
                self._start_rewrite(stack, kept_bytes)
        if dropped:
            log.info("%s: dropping %d rows logged after step %d (they will be logged again)", self.path, dropped,
                     resume_step)

    def _start_rewrite(self, stack: contextlib.ExitStack, prefix: int) -> BinaryIO:
        """A temporary file renamed onto the file when `stack` closes, holding its first `prefix` bytes so far."""
        out = stack.enter_context(open(stack.enter_context(atomic_path(self.path)), "wb"))
        _copy_prefix(self.path, out, prefix)
        return out

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        """Append one row: `step`, the wall time, then `values` (a logging call's scalars)."""
        if not self.enabled:
            return
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({key: _plain(value) for key, value in values.items() if key not in ("step", "time")})
        try:
            with open(self.path, "ab") as f:  # one write of a whole line; closing flushes it to the OS
                f.write(_line(row))
        except OSError as e:
            code = fixable_errno(e)
            if code is None:
                raise
            raise write_error(f"append to {self.path}", code) from e

    def sync(self) -> None:
        """fsync the file: the rows logged so far survive a crash (called before each checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _line(row: Mapping[str, Any]) -> bytes:
    return (json.dumps(row, allow_nan=False, separators=(", ", ": ")) + "\n").encode("utf-8")


__all__ = ["FILE_NAME", "MetricsFile", "iter_metrics", "parse_lines", "read_metrics"]
