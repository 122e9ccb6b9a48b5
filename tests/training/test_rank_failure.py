"""A rank that dies (SIGKILL) makes a 2-process run fail quickly, naming the rank; it never hangs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, free_port
from conftest import test_env as child_env  # not collected as a test

pytestmark = pytest.mark.slow

BOUND_S = 60  # the whole run must be gone this long after the kill


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat_fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_killed_rank_fails_the_run_quickly_and_is_named(mnist_shards, tmp_path):
    run_dir, out_path = tmp_path / "run", tmp_path / "launch.log"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", "launch/accelerate/cpu.yaml", "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "distgan", "train", "--config", "configs/debug.yaml",
           f"data.dir={mnist_shards}", f"run.dir={run_dir}", "wandb.mode=offline", "train.steps=1000000",
           "checkpoint.every=1000000", "log.grid_every=1000000", "dist.timeout_s=30"]
    with out_path.open("w") as out:
        launcher = subprocess.Popen(cmd, cwd=REPO, env=child_env(ACCELERATE_USE_CPU="true"), stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (run_dir / "samples" / "step_0000001.png").exists():
                assert launcher.poll() is None, out_path.read_text()[-5000:]
                assert time.monotonic() < deadline, "training did not start\n" + out_path.read_text()[-5000:]
                time.sleep(0.2)
            workers = {_rank_of(pid): pid for pid in _children(launcher.pid)}
            assert set(workers) == {0, 1}, workers
            os.kill(workers[1], signal.SIGKILL)
            t_kill = time.monotonic()
            code = launcher.wait(timeout=BOUND_S)
            elapsed = time.monotonic() - t_kill
        finally:
            if launcher.poll() is None:
                for pid in _children(launcher.pid):
                    os.kill(pid, signal.SIGKILL)
                launcher.kill()
                launcher.wait()
    log = out_path.read_text()
    print(f"run failed {elapsed:.1f}s after rank 1 was killed (exit {code})")
    assert code != 0
    assert elapsed < BOUND_S
    # torchrun's summary names the failed rank and how it died.
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", log), log[-5000:]
    # No worker is left behind.
    assert all(_rank_of(pid) is None for pid in workers.values())
