"""launch/slurm/train.sbatch on the real local SLURM cluster (launch/slurm/local_cluster.sh start).

One job covers the launch and the preemption path: 2 CPU processes (gloo) train configs/debug.yaml;
once training runs, `scancel --signal=USR1` hits every process of the step; the ranks agree, save a
checkpoint, the main process requeues the job; the same job id restarts, resumes from that checkpoint,
continues the same W&B run and finishes all steps. In CI (CI=true) a missing cluster fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO
from conftest import test_env as child_env  # not collected as a test

pytestmark = pytest.mark.slow

STEPS = 300
LOG_EVERY = 5


def _cluster_problem() -> str | None:
    """Why the local SLURM cluster can't run jobs, or None when it can."""
    for tool in ("sbatch", "scontrol", "scancel", "sinfo"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out (slurmctld not answering)"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
                                       for s in states):
        return f"no usable SLURM node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    message = f"SLURM cluster unavailable: {problem}; start it with `bash launch/slurm/local_cluster.sh start`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def job_info(job: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, ...); {} once the job is purged."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))


def wait_for(what: str, predicate, timeout: float, job: str, out: Path, interval: float = 0.2):
    """Poll `predicate()` until it returns something truthy; fail with the job's state and log if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    subprocess.run(["scancel", job], timeout=30)
    log = out.read_text()[-6000:] if out.exists() else "(no job output)"
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; job {job}: {job_info(job)}\n{log}")


def wandb_history(offline_dir: Path) -> list[dict]:
    """The history records of one offline W&B run directory (`wandb leet inspect --json`)."""
    proc = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(offline_dir)],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_sbatch_trains_preempts_requeues_and_resumes(slurm, mnist_shards, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    env = child_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DISTGAN_PROCS_PER_NODE="2")
    submit = subprocess.run(
        ["sbatch", "--parsable", "--job-name=distgan-test", f"--output={out}", "--time=10", "--cpus-per-task=2",
         "launch/slurm/train.sbatch", "configs/debug.yaml", f"data.dir={mnist_shards}", f"run.dir={run_dir}",
         f"train.steps={STEPS}", f"log.every={LOG_EVERY}", "log.grid_every=1000", "checkpoint.every=1000",
         "checkpoint.keep=10", "wandb.mode=offline", "dist.timeout_s=60"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    t0 = time.monotonic()
    try:
        # Training runs once the step-1 sample grid exists (the handlers are installed before step 1).
        def training() -> bool:
            info = job_info(job)
            if info.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING"):
                pytest.fail(f"job {job} ended before it was signalled: {info}\n{out.read_text()[-6000:]}")
            return (run_dir / "samples" / "step_0000001.png").exists()

        wait_for("training to start", training, 120, job, out)
        t_signal = time.monotonic()
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)

        # The main process ran `scontrol requeue`: the job is pending again with Restarts=1.
        wait_for("the requeue", lambda: job_info(job).get("Restarts") == "1"
                 and job_info(job).get("JobState") == "PENDING", 90, job, out)
        t_requeued = time.monotonic()
        # SLURM holds a requeued batch job for ~2 minutes (BeginTime); let it start now.
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        wait_for("the job to finish", lambda: job_info(job).get("JobState") in
                 ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"), 180, job, out)
    except BaseException:
        subprocess.run(["scancel", job], timeout=30)
        raise
    t_end = time.monotonic()
    info, log = job_info(job), out.read_text()
    print(f"job {job}: start->signal {t_signal - t0:.1f}s, signal->requeued {t_requeued - t_signal:.1f}s, "
          f"restart->done {t_end - t_requeued:.1f}s")
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{log[-6000:]}"
    assert info.get("Restarts") == "1"

    # The same batch script ran twice, each time 2 CPU processes on one node.
    assert f"job {job} restart 0" in log and f"job {job} restart 1" in log, log[-6000:]
    assert "1 node(s) x 2 process(es) (CPU, gloo)" in log
    stopped = [int(s) for s in re.findall(r"preempted by SIGUSR1; checkpoint saved at step (\d+)", log)]
    assert stopped, log[-6000:]
    stop = stopped[0]
    assert 1 <= stop < STEPS
    assert f"scontrol requeue {job}" in log
    assert re.search(rf"resumed from \S*step_{stop:07d} at step {stop}\b", log), log[-6000:]

    # Checkpoints: the one written at the signal and the final one, both complete.
    for step in (stop, STEPS):
        assert (run_dir / "checkpoints" / f"step_{step:07d}" / "COMPLETE").exists(), step
    # Both ranks finished the configured steps with identical weights.
    reports = [json.loads((run_dir / "ranks" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["step"] for r in reports] == [STEPS, STEPS]
    assert reports[0]["g_sha256"] == reports[1]["g_sha256"] and reports[0]["d_sha256"] == reports[1]["d_sha256"]

    # W&B: two offline directories (one per attempt) of the same run; together, monotone steps and no
    # scalar step lost before the checkpoint or after it.
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(a.name.endswith(f"-{run_id}") for a in attempts), attempts
    histories = [wandb_history(a) for a in attempts]
    steps = [h["_step"] for hist in histories for h in hist]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), steps
    assert max(h["_step"] for h in histories[0]) <= stop < min(h["_step"] for h in histories[1])
    scalar_steps = [h["_step"] for hist in histories for h in hist if "loss/d" in h]
    assert scalar_steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), scalar_steps


def test_time_limit_signal_checkpoints_and_requeues(slurm, mnist_shards, tmp_path):
    """The production path: `--signal=USR1@60`, sent by SLURM itself before the time limit. Once training
    runs, the time limit is cut to 1 minute; slurmctld's next periodic check (every ~30 s) signals the
    step. (Cutting it only then keeps the signal out of start-up: SLURM may send it up to 60 s early.)"""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    env = child_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DISTGAN_PROCS_PER_NODE="2")
    submit = subprocess.run(
        ["sbatch", "--parsable", "--job-name=distgan-timelimit", f"--output={out}", "--time=10",
         "--signal=USR1@60", "--cpus-per-task=2", "launch/slurm/train.sbatch", "configs/debug.yaml",
         f"data.dir={mnist_shards}", f"run.dir={run_dir}", "train.steps=1000000", "log.every=50",
         "log.grid_every=1000000", "checkpoint.every=1000000", "wandb.mode=offline", "dist.timeout_s=60"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    try:
        wait_for("training to start", lambda: (run_dir / "samples" / "step_0000001.png").exists(), 120, job, out)
        t_cut = time.monotonic()
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=1"], check=True, timeout=30)
        wait_for("the time-limit signal and the requeue", lambda: job_info(job).get("Restarts") == "1",
                 100, job, out)
        elapsed = time.monotonic() - t_cut
    finally:
        subprocess.run(["scancel", job], timeout=30)
    log = out.read_text()
    print(f"job {job}: requeued {elapsed:.1f}s after the time limit was cut")
    stopped = [int(s) for s in re.findall(r"preempted by SIGUSR1; checkpoint saved at step (\d+)", log)]
    assert stopped, log[-6000:]
    assert (run_dir / "checkpoints" / f"step_{stopped[0]:07d}" / "COMPLETE").exists()
    assert f"scontrol requeue {job}" in log
