"""Helpers for tests on the real local SLURM cluster (`launch/slurm/local_cluster.sh start --nodes 2`):
fixtures that skip (or fail in CI) without it, job submission, job state, waits with the job's log on
failure, and the training processes of a node."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, REPO, child_env

DONE_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


def usable_nodes() -> tuple[list[str], str | None]:
    """(names of the nodes that take jobs, why SLURM cannot run jobs or None)."""
    for tool in ("sbatch", "scontrol", "scancel", "sinfo", "srun"):
        if shutil.which(tool) is None:
            return [], f"{tool} not found"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return [], "sinfo timed out (slurmctld not answering)"
    nodes = [name for name, state in (line.split() for line in proc.stdout.splitlines() if line.strip())
             if state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if proc.returncode != 0 or not nodes:
        return [], f"no usable SLURM node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    return sorted(set(nodes)), None


def require_cluster(nodes: int = 1) -> None:
    """Skip (fail in CI) unless the local cluster has `nodes` usable nodes."""
    have, problem = usable_nodes()
    if problem is None and len(have) < nodes:
        problem = f"{nodes} nodes needed, {len(have)} usable ({' '.join(have)})"
    if problem is None:
        return
    message = (f"SLURM cluster unavailable: {problem}; start it with "
               f"`bash launch/slurm/local_cluster.sh start --nodes {max(nodes, 2)}`")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def job_env(**extra: str) -> dict[str, str]:
    """Environment for sbatch: the tests' child environment with this venv's tools first on PATH."""
    return child_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra)


def submit(args: list[str], *, env: dict[str, str] | None = None) -> str:
    """`sbatch --parsable ARGS` from the repository root; the job id."""
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, env=env or job_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def train_job(out: Path, run_dir: Path, data: Path, *, nodes: int = 1, cpus: int = 2, name: str = "distgan-test",
              sbatch: tuple[str, ...] = (), overrides: tuple[str, ...] = ()) -> str:
    """Submit launch/slurm/train.sbatch with configs/debug.yaml (W&B offline); the job id."""
    return submit([f"--job-name={name}", f"--output={out}", "--time=10", f"--nodes={nodes}",
                   f"--cpus-per-task={cpus}", *sbatch, "launch/slurm/train.sbatch", "configs/debug.yaml",
                   f"data.dir={data}", f"run.dir={run_dir}", "wandb.mode=offline", "dist.timeout_s=60",
                   "log.progress=false", *overrides])


def job_info(job: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, ...); {} once the job is purged."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, job: str, out: Path,
             interval: float = 0.5) -> Any:
    """Poll `predicate()` until it returns something truthy; cancel the job and fail with its state and
    log if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    subprocess.run(["scancel", job], timeout=30)
    log = out.read_text()[-6000:] if out.exists() else "(no job output)"
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; job {job}: {job_info(job)}\n{log}")


def wait_until_done(job: str, out: Path, timeout: float) -> dict[str, str]:
    """Wait for the job to end; its final `scontrol show job` fields."""
    wait_for("the job to end", lambda: job_info(job).get("JobState") in DONE_STATES, timeout, job, out)
    return job_info(job)


def metric_steps(run_dir: Path) -> list[int]:
    """The steps of RUN_DIR/metrics.jsonl's scalar rows, in file order (a torn last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss/d" in row:
            steps.append(int(row["step"]))
    return steps


def wait_for_training(job: str, out: Path, run_dir: Path, step: int = 1, timeout: float = 150) -> None:
    """Wait until the job's training has logged step `step` or later to metrics.jsonl (fail if the job
    ends first)."""
    def trained() -> bool:
        if job_info(job).get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING"):
            pytest.fail(f"job {job} ended before it was signalled: {job_info(job)}\n{out.read_text()[-6000:]}")
        steps = metric_steps(run_dir)
        return bool(steps) and steps[-1] >= step

    wait_for(f"training to reach step {step}", trained, timeout, job, out)


def release_requeued(job: str, out: Path, restarts: int = 1, timeout: float = 90) -> None:
    """Wait until the job is pending again after its `restarts`-th requeue, then let it start now (SLURM
    holds a requeued batch job for about two minutes)."""
    wait_for(f"requeue {restarts}", lambda: job_info(job).get("Restarts") == str(restarts)
             and job_info(job).get("JobState") == "PENDING", timeout, job, out)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)


def node_trainers(node: str) -> dict[int, int]:
    """{rank: pid} of the training processes that SLURM node `node` runs on this machine (torchrun's workers:
    their environment has the node's SLURMD_NODENAME and a RANK; the launcher's has no LOCAL_RANK)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            items = (entry / "environ").read_bytes().split(b"\0")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in items if b"=" in item)
        if env.get(b"SLURMD_NODENAME") == node.encode() and b"LOCAL_RANK" in env and comm.startswith("python"):
            found[int(env[b"RANK"])] = int(entry.name)
    return found


def kill_job(job: str) -> None:
    """scancel, ignoring a job that is gone already."""
    subprocess.run(["scancel", job], timeout=30)
