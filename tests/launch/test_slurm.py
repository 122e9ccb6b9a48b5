"""launch/slurm/train.sbatch on the real local SLURM cluster: two slurmd nodes (n1, n2) on this machine
(`launch/slurm/local_cluster.sh start --nodes 2`), gloo processes, configs/debug.yaml, W&B offline.

- a 2-node x 2-process job saving a checkpoint at every one of 80 steps (the checkpoint stress test
  for 4 processes), and the same job preempted by SIGUSR1, requeued and resumed: the same final weights;
- `scontrol requeue` and `scancel` (SIGTERM to every process of the step, W&B's service included): a
  checkpoint at the step the signal came, no traceback, and the requeued job resumes from it;
- SIGKILL to one node's training processes: the job ends quickly, the log names the lost ranks, and a
  resubmission resumes from the newest intact checkpoint;
- 2 nodes x 2 processes read every image once, in the order of 1 node x 4 processes;
- the production time-limit warning (`--signal=USR1@60`).
In CI (CI=true) a missing cluster fails these tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, child_env
from slurm_support import (
    job_info,
    kill_job,
    metric_steps,
    node_trainers,
    release_requeued,
    submit,
    train_job,
    wait_for,
    wait_for_training,
    wait_until_done,
)

from distgan.data import build_loader

pytestmark = pytest.mark.slow

STEPS = 80
LOG_EVERY = 5


def rank_reports(run_dir: Path, world: int) -> list[dict]:
    return [json.loads((run_dir / "ranks" / f"rank_{r}.json").read_text()) for r in range(world)]


def wandb_history(offline_dir: Path) -> list[dict]:
    """The history records of one offline W&B run directory (`wandb leet inspect --json`)."""
    proc = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(offline_dir)],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in RUN_DIR/checkpoints, ascending."""
    return sorted(int(p.parent.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))


def assert_no_traceback(log: str) -> None:
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 2000):][:6000]


PROBE_JOB = """#!/usr/bin/env bash
# tests/loader_probe.py on every node of the job, through the same per-node launcher as train.sbatch.
set -euo pipefail
FIRST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
ADDR=$(scontrol show node -o "$FIRST" | sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p')
srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \\
    launch/slurm/node.sh "$ADDR" $((20000 + SLURM_JOB_ID % 10000)) tests/loader_probe.py "$@"
"""


def test_two_nodes_read_every_image_once_in_the_single_node_order(slurm_two_nodes, mnist_shards, tmp_path):
    """2 nodes x 2 processes x 2 loader workers: every image of the epoch once over the 4 ranks, equal batch
    counts (the probe all-reduces per batch), and each rank's batches those of the same rank of 1 node x 4
    processes (the loader's order depends on (seed, epoch, rank, world size) only, not on the nodes)."""
    split, probe_out, out = mnist_shards / "train", tmp_path / "probe", tmp_path / "job.out"
    script = tmp_path / "probe.sbatch"
    script.write_text(PROBE_JOB)
    job = submit(["--job-name=distgan-probe", f"--output={out}", "--time=5", "--nodes=2", "--cpus-per-task=2",
                  str(script), str(split), str(probe_out), "4", "2"])
    try:
        info = wait_until_done(job, out, 180)
    finally:
        kill_job(job)
    assert info.get("JobState") == "COMPLETED", f"{info}\n{out.read_text()[-6000:]}"
    assert "2 node(s) x 2 process(es) (CPU, gloo)" in out.read_text()
    ranks = [json.loads((probe_out / f"rank{r}.json").read_text()) for r in range(4)]
    assert [r["world_size"] for r in ranks] == [4] * 4
    keys = [k for r in ranks for batch in r["batches"] for k in batch]
    assert len(keys) == len(set(keys)) and 10000 - len(keys) < 4 * 64
    for r, rank in enumerate(ranks):
        single_node = build_loader(split, batch_size=64, rank=r, world_size=4, num_workers=0, seed=7, epoch=1)
        assert rank["batches"] == [b["key"] for b in single_node], r


def test_two_nodes_preempted_and_resumed_equal_an_uninterrupted_run(slurm_two_nodes, mnist_shards, tmp_path):
    """Two 2-node jobs at once, one CPU per node each: `stress` saves a checkpoint at every step (4 processes,
    80 saves, no failure allowed); `preempted` gets SIGUSR1 on every process, saves, requeues itself and
    resumes. Both end with the same weights on all 4 ranks."""
    runs = {name: (tmp_path / name, tmp_path / f"{name}.out") for name in ("stress", "preempted")}
    common = (f"train.steps={STEPS}", f"log.every={LOG_EVERY}", "log.grid_every=1000")
    jobs = {
        "stress": train_job(runs["stress"][1], runs["stress"][0], mnist_shards, nodes=2, cpus=1,
                            overrides=(*common, "checkpoint.every=1", "checkpoint.keep=2")),
        "preempted": train_job(runs["preempted"][1], runs["preempted"][0], mnist_shards, nodes=2, cpus=1,
                               overrides=(*common, "checkpoint.every=1000", "checkpoint.keep=10")),
    }
    job, (run_dir, out) = jobs["preempted"], runs["preempted"]
    try:
        wait_for_training(job, out, run_dir, step=LOG_EVERY)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        release_requeued(job, out)  # the main process ran `scontrol requeue`
        infos = {name: wait_until_done(j, runs[name][1], 400) for name, j in jobs.items()}
    finally:
        for j in jobs.values():
            kill_job(j)

    for name, info in infos.items():
        log = runs[name][1].read_text()
        assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{name}: {info}\n{log[-6000:]}"
        assert "2 node(s) x 2 process(es) (CPU, gloo)" in log
        assert_no_traceback(log)
    reports = {name: rank_reports(runs[name][0], 4) for name in runs}
    for name, ranks in reports.items():
        assert [r["world_size"] for r in ranks] == [4] * 4, name
        assert [r["slurm_node"] for r in ranks] == ["n1", "n1", "n2", "n2"], name
        assert [r["step"] for r in ranks] == [STEPS] * 4, name
        assert len({(r["g_sha256"], r["d_sha256"]) for r in ranks}) == 1, f"{name}: ranks differ"
    # Resume equals an uninterrupted run, across nodes.
    assert reports["stress"][0]["g_sha256"] == reports["preempted"][0]["g_sha256"]
    assert reports["stress"][0]["d_sha256"] == reports["preempted"][0]["d_sha256"]
    # The stress run kept only its newest checkpoints, every one intact.
    assert checkpoint_steps(runs["stress"][0]) == [STEPS - 1, STEPS]

    log = out.read_text()
    assert f"job {job} restart 0" in log and f"job {job} restart 1" in log, log[-6000:]
    stopped = {int(s) for s in re.findall(r"rank \d: preempted by SIGUSR1; checkpoint saved at step (\d+)", log)}
    assert len(stopped) == 1, log[-6000:]  # every rank stopped at the same step
    stop = stopped.pop()
    assert 1 <= stop < STEPS
    assert f"scontrol requeue {job}" in log
    assert re.search(rf"resumed from \S*step_{stop:07d} at step {stop}\b", log), log[-6000:]
    assert checkpoint_steps(run_dir) == [stop, STEPS]

    # W&B: one offline directory per attempt, of the same run; together, monotone steps and no scalar step
    # lost before the checkpoint or after it.
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(a.name.endswith(f"-{run_id}") for a in attempts), attempts
    histories = [wandb_history(a) for a in attempts]
    steps = [h["_step"] for hist in histories for h in hist]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), steps
    assert max(h["_step"] for h in histories[0]) <= stop < min(h["_step"] for h in histories[1])
    scalar_steps = [h["_step"] for hist in histories for h in hist if "loss/d" in h]
    assert scalar_steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)), scalar_steps


def test_requeue_and_scancel_save_at_the_signal_with_wandb_killed_too(slurm, mnist_shards, tmp_path):
    """`scontrol requeue`, then `scancel`: SLURM sends SIGTERM to every process of the step, W&B's service
    included. Each time the ranks save a checkpoint at the step they stopped (the last step logged: nothing
    trained is lost), without a traceback; the requeued job resumes from the first one."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    job = train_job(out, run_dir, mnist_shards, overrides=(
        "train.steps=1000000", "log.every=1", "log.grid_every=1000000", "checkpoint.every=1000000"))
    try:
        wait_for_training(job, out, run_dir, step=20)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        release_requeued(job, out)
        first = checkpoint_steps(run_dir)
        wait_for("the resumed job to train", lambda: re.search(r"resumed from \S+ at step \d+", out.read_text())
                 and metric_steps(run_dir)[-1] >= first[-1] + 20, 150, job, out)
        subprocess.run(["scancel", job], check=True, timeout=30)
        info = wait_until_done(job, out, 60)
    finally:
        kill_job(job)
    log = out.read_text()
    assert info.get("JobState") == "CANCELLED" and info.get("Restarts") == "1", info
    assert_no_traceback(log)
    saved = [int(s) for s in re.findall(r"rank 0: preempted by SIGTERM; checkpoint saved at step (\d+)", log)]
    assert len(saved) == 2 and saved[0] < saved[1], log[-6000:]
    assert checkpoint_steps(run_dir) == saved
    assert f"resumed from {run_dir}/checkpoints/step_{saved[0]:07d} at step {saved[0]}" in log
    # No lost steps: each attempt's last logged step is the step of its checkpoint.
    steps = metric_steps(run_dir)
    assert steps == list(range(1, saved[1] + 1)), (steps[:5], steps[-5:], saved)
    assert "scontrol requeue" not in log  # SIGTERM stops without requeueing: SLURM requeued this job itself


def test_a_killed_node_ends_the_job_and_a_resubmission_resumes(slurm_two_nodes, mnist_shards, tmp_path):
    """SIGKILL to node n2's training processes (ranks 2 and 3) of a 2-node job: the job fails well within
    dist.timeout_s (60 s) instead of hanging, torchrun's summary names the lost ranks, and the same
    command submitted again resumes from the newest intact checkpoint."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    common = ("log.every=5", "log.grid_every=1000000", "checkpoint.every=25")
    job = train_job(out, run_dir, mnist_shards, nodes=2, cpus=1, overrides=("train.steps=1000000", *common))
    try:
        wait_for_training(job, out, run_dir, step=60)
        victims = node_trainers("n2")
        assert sorted(victims) == [2, 3], victims
        for pid in victims.values():
            subprocess.run(["kill", "-9", str(pid)], check=True, timeout=10)
        t_kill = time.monotonic()
        info = wait_until_done(job, out, 60)
        elapsed = time.monotonic() - t_kill
    finally:
        kill_job(job)
    log = out.read_text()
    print(f"job {job} ended {elapsed:.1f}s after node n2's ranks were killed: {info.get('JobState')}")
    assert info.get("JobState") == "FAILED", info
    assert elapsed < 60
    assert re.search(r"rank\s*:\s*[23] \(local_rank: [01]\)\s*\n\s*exitcode\s*:\s*-9", log), log[-6000:]
    # slurmd kills the step's processes as the job ends; on a loaded machine the last may take a moment to go
    deadline = time.monotonic() + 30
    while (node_trainers("n1") or node_trainers("n2")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not node_trainers("n1") and not node_trainers("n2")

    newest = checkpoint_steps(run_dir)[-1]
    assert newest >= 50
    out2 = tmp_path / "resubmitted.out"
    job2 = train_job(out2, run_dir, mnist_shards, nodes=2, cpus=1, overrides=(f"train.steps={newest + 10}", *common))
    try:
        info2 = wait_until_done(job2, out2, 200)
    finally:
        kill_job(job2)
    log2 = out2.read_text()
    assert info2.get("JobState") == "COMPLETED", f"{info2}\n{log2[-6000:]}"
    assert f"resumed from {run_dir}/checkpoints/step_{newest:07d} at step {newest}" in log2
    assert [r["step"] for r in rank_reports(run_dir, 4)] == [newest + 10] * 4


def test_time_limit_signal_checkpoints_and_requeues(slurm, mnist_shards, tmp_path):
    """The production path: `--signal=USR1@60`, sent by SLURM itself before the time limit. Once training
    runs, the time limit is cut to 1 minute; slurmctld's next periodic check (every ~30 s) signals the
    step. (Cutting it only then keeps the signal out of start-up: SLURM may send it up to 60 s early.)"""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    job = train_job(out, run_dir, mnist_shards, name="distgan-timelimit", cpus=1, sbatch=("--signal=USR1@60",),
                    overrides=("train.steps=1000000", "log.every=50", "log.grid_every=1000000",
                               "checkpoint.every=1000000"))
    try:
        wait_for_training(job, out, run_dir, step=50)
        t_cut = time.monotonic()
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=1"], check=True, timeout=30)
        wait_for("the time-limit signal and the requeue", lambda: job_info(job).get("Restarts") == "1",
                 100, job, out)
        elapsed = time.monotonic() - t_cut
    finally:
        kill_job(job)
    log = out.read_text()
    print(f"job {job}: requeued {elapsed:.1f}s after the time limit was cut")
    stopped = [int(s) for s in re.findall(r"preempted by SIGUSR1; checkpoint saved at step (\d+)", log)]
    assert stopped, log[-6000:]
    assert (run_dir / "checkpoints" / f"step_{stopped[0]:07d}" / "COMPLETE").exists()
    assert f"scontrol requeue {job}" in log

