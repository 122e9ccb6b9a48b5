"""RUN_DIR/metrics.jsonl: the format, the resume rule (rows past the resume step are dropped, a torn last
line too), and real training runs: a stop and resume, and a requeue after SIGKILL with rows logged past
the last checkpoint. Real files and real `distgan train` subprocesses with hard timeouts."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time

import pytest
from conftest import PYTHON, REPO, child_env, run_cli

from distgan.run.checkpoint import complete_checkpoints
from distgan.run.metrics_file import MetricsFile, parse_lines, read_metrics

DEBUG = "configs/debug.yaml"
SCALARS = ("loss/d", "loss/g", "d/real", "d/fake", "perf/images_per_s", "grad_norm/d", "lr/g", "epoch")


def lines(path):
    return path.read_bytes().decode().splitlines()


def test_rows_are_json_lines_with_step_time_and_values(tmp_path):
    before = time.time()
    metrics = MetricsFile(tmp_path, resume_step=0)
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""  # exists from set-up on
    metrics.write(5, {"loss/d": 1.5, "epoch": 0, "loss/g": float("nan"), "eval/fid": float("inf")})
    metrics.write(10, {"loss/d": 1.25})
    metrics.sync()
    rows = [json.loads(line) for line in lines(tmp_path / "metrics.jsonl")]  # standard JSON: no NaN tokens
    assert [list(r)[:2] for r in rows] == [["step", "time"]] * 2
    assert rows[0] == {"step": 5, "time": rows[0]["time"], "loss/d": 1.5, "epoch": 0, "loss/g": None, "eval/fid": None}
    assert before - 1 <= rows[0]["time"] <= rows[1]["time"] <= time.time() + 1
    assert read_metrics(tmp_path / "metrics.jsonl") == rows


def test_resume_keeps_rows_up_to_the_resume_step_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(tmp_path, resume_step=0)
    for step in (5, 10, 10, 15, 20):  # two rows at 10: scalars and eval scores
        metrics.write(step, {"loss/d": step / 10})
    kept = lines(path)[:3]
    with open(path, "ab") as f:
        f.write(b'{"step": 25, "time": 1.0, "loss/d": 0.')  # a crash in the middle of a write
    assert [r["step"] for r in read_metrics(path)] == [5, 10, 10, 15, 20]  # readers skip the torn line

    MetricsFile(tmp_path, resume_step=10)  # a requeued run resumes from the checkpoint at step 10
    assert lines(path) == kept  # byte for byte, in order
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]  # the rewrite left no temp file
    again = MetricsFile(tmp_path, resume_step=10)
    again.write(15, {"loss/d": 9.0})
    assert [r["step"] for r in read_metrics(path)] == [5, 10, 10, 15]
    assert read_metrics(path)[-1]["loss/d"] == 9.0

    MetricsFile(tmp_path, resume_step=0)  # a fresh start in the same directory keeps nothing
    assert path.read_bytes() == b""


def test_unreadable_lines_are_dropped_and_other_ranks_write_nothing(tmp_path):
    assert parse_lines(b'{"step": 1}\nnot json\n[1, 2]\n{"step": "x"}\n{"step": true}\n\n{"step": 2, "a": 1}\n') \
        == [{"step": 1}, {"step": 2, "a": 1}]
    other = MetricsFile(tmp_path, resume_step=0, enabled=False)
    other.write(5, {"loss/d": 1.0})
    other.sync()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_streams_a_huge_file_and_rewrites_it_only_when_rows_are_dropped(tmp_path):
    """A metrics.jsonl of GBs (here a 64 MB line of NULs, sparse) was read whole at resume: 3 GB was a
    MemoryError. It is streamed: memory stays at a line, the rule is the same (rows past the resume step, a
    line that is no row and a torn last line dropped), and the rewrite is atomic."""
    import tracemalloc

    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(tmp_path, resume_step=0)
    for step in (5, 10):
        metrics.write(step, {"loss/d": step / 10})
    kept = path.read_bytes()
    with open(path, "ab") as f:
        f.truncate(len(kept) + (64 << 20))  # a hole: NUL bytes, no newline
        f.seek(0, os.SEEK_END)
        f.write(b'\n{"step": 10, "eval/fid": 3.0}\n{"step": 15, "loss/d": 1.5}\nnot json\n{"step": 20, "loss/d"')
    tracemalloc.start()
    try:
        MetricsFile(tmp_path, resume_step=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert path.read_bytes() == kept + b'{"step": 10, "eval/fid": 3.0}\n'
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while resuming over a 64 MB metrics.jsonl"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left
    inode = path.stat().st_ino
    MetricsFile(tmp_path, resume_step=10)  # nothing to drop: the file is left as it is, not rewritten
    assert path.stat().st_ino == inode and read_metrics(path)[-1] == {"step": 10, "eval/fid": 3.0}


def train(shards, run_dir, *overrides, timeout=240):
    return run_cli(["train", "--config", DEBUG, f"data.dir={shards}", f"run.dir={run_dir}", "log.progress=false",
                    *overrides], timeout=timeout)


def scalar_rows(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss/d" in r]


@pytest.mark.slow
def test_stop_and_resume_logs_each_step_once(mnist_shards, tmp_path):
    run = tmp_path / "run"
    train(mnist_shards, run, "train.steps=10", "wandb.mode=offline")
    first = scalar_rows(run)
    assert [r["step"] for r in first] == [5, 10]
    proc = train(mnist_shards, run, "train.steps=20", "wandb.mode=disabled")  # whatever the W&B mode
    assert "resumed from" in proc.stdout + proc.stderr
    rows = scalar_rows(run)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[:2] == first  # the first run's rows are kept as they were
    assert all(r1["time"] <= r2["time"] for r1, r2 in zip(rows, rows[1:], strict=False))
    for key in SCALARS:
        assert all(isinstance(r[key], (int, float)) and math.isfinite(r[key]) for r in rows), key
    assert len(read_metrics(run / "metrics.jsonl")) == len(lines(run / "metrics.jsonl"))  # one row per line


def _run_until_logged(shards, run_dir, step, timeout=180):
    """Start `distgan train` (20 slow steps, checkpoint every 10, log every 5) and SIGKILL it as soon as
    metrics.jsonl has a row for `step`; returns the kill time, or None if it got to its next checkpoint first."""
    slow = ["model.g_hidden=[1024,1024]", "model.d_hidden=[1024,1024]", "train.batch_size=128"]  # ~0.2 s a step
    cmd = [PYTHON, "-m", "distgan", "train", "--config", DEBUG, f"data.dir={shards}", f"run.dir={run_dir}",
           "log.progress=false", "wandb.mode=disabled", "train.steps=20", "checkpoint.every=10", "log.every=5", *slow]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    path, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if path.is_file() and any(r["step"] == step for r in read_metrics(path)):
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = time.time()
                proc.wait(timeout=30)
                return killed_at if complete_checkpoints(run_dir)[-1][0] == 10 else None
            time.sleep(0.005)
        raise AssertionError(f"no row for step {step} in time; rc={proc.poll()} {proc.stderr.read().decode()[-2000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stderr.close()


@pytest.mark.slow
def test_requeue_after_sigkill_drops_the_rows_past_the_checkpoint(mnist_shards, tmp_path):
    """kill -9 after step 15 is logged (last checkpoint: 10); the requeued run logs 15 and 20 once each."""
    for attempt in range(3):  # the kill must land between the row for step 15 and the checkpoint at 20
        run = tmp_path / f"run{attempt}"
        killed_at = _run_until_logged(mnist_shards, run, 15)
        if killed_at is not None:
            break
    else:
        pytest.fail("the run reached its step-20 checkpoint before the kill three times")
    assert [r["step"] for r in scalar_rows(run)] == [5, 10, 15]  # the dead run logged past its checkpoint
    dead_rows = scalar_rows(run)[:2]

    proc = train(mnist_shards, run, "train.steps=20", "checkpoint.every=10", "log.every=5", "wandb.mode=disabled",
                 "model.g_hidden=[1024,1024]", "model.d_hidden=[1024,1024]", "train.batch_size=128")
    assert "resumed from" in proc.stdout + proc.stderr and "step_0000010" in proc.stdout + proc.stderr
    rows = scalar_rows(run)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[:2] == dead_rows  # up to the checkpoint: kept
    assert rows[2]["time"] > killed_at and rows[3]["time"] > killed_at  # 15 and 20: from the resumed run only
