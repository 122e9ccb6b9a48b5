"""Two runs on one run directory: the second stops at once with one line naming the holder; the lock
dies with its process (kill -9 included), so the next run resumes without any clean-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, child_env, run_cli

from distgan.run.checkpoint import complete_checkpoints

pytestmark = pytest.mark.slow  # real training runs (the unit tier is `-m "not slow"`)


def start_training(shards, run_dir) -> subprocess.Popen:
    """A long debug run in the background, in its own process group."""
    return subprocess.Popen(
        [PYTHON, "-m", "distgan", "train", "--config", "configs/debug.yaml", f"data.dir={shards}",
         f"run.dir={run_dir}", "train.steps=100000", "checkpoint.every=5", "log.grid_every=100000",
         "wandb.mode=disabled", "log.progress=false"],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_checkpoint(run_dir, proc, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not complete_checkpoints(run_dir, warn=False):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)


def test_second_run_on_a_run_dir_fails_at_once_and_the_lock_dies_with_its_process(mnist_shards, tmp_path):
    run = tmp_path / "run"
    first = start_training(mnist_shards, run)
    try:
        wait_for_checkpoint(run, first)
        t0 = time.monotonic()
        second = run_cli(["train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}", f"run.dir={run}",
                          "wandb.mode=disabled"], timeout=120, check=False)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert lines == [f"distgan train: error: run.dir {run} is in use by pid {first.pid} on host "
                         f"{socket.gethostname()}; wait for it to finish or use another directory"], second.stderr
        assert time.monotonic() - t0 < 60
        assert first.poll() is None, "the first run must be untouched"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no clean-up at all: the kernel drops the flock
        first.communicate(timeout=60)
    steps = [s for s, _ in complete_checkpoints(run)]
    resumed = run_cli(["train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}", f"run.dir={run}",
                       f"train.steps={steps[-1] + 5}", "wandb.mode=disabled"], timeout=180)
    assert f"resumed from {run / 'checkpoints'}" in resumed.stdout + resumed.stderr
    assert f"finished at step {steps[-1] + 5}" in resumed.stdout


def test_python_api_trains_samples_and_releases_the_lock(mnist_shards, tmp_path):
    """`from distgan import load_config, train, load_generator, sample_images` as in the README."""
    import distgan

    cfg = distgan.load_config(REPO / "configs" / "debug.yaml", [f"data.dir={mnist_shards}", f"run.dir={tmp_path / 'r'}",
                                                                "wandb.mode=disabled", "log.progress=false"])
    before = signal.getsignal(signal.SIGUSR1)
    result = distgan.train(cfg)
    assert (result.status, result.step) == ("finished", 20)
    assert signal.getsignal(signal.SIGUSR1) == before, "train() must give the caller its handlers back"
    g, saved = distgan.load_generator(result.run_dir)
    assert saved.model.z_dim == cfg.model.z_dim
    images = distgan.sample_images(g, 6, seed=3)
    assert images.dtype.is_floating_point is False and tuple(images.shape) == (6, 28, 28)
    assert distgan.sample_images(g, 6, seed=3).equal(images)
    # the lock was released when train() returned: a second train() in the same process resumes and finishes
    cfg.train.steps = 25
    assert distgan.train(cfg).step == 25


def test_resume_auto_refuses_another_experiment_and_run_dir_auto_survives_a_requeue(mnist_shards, tmp_path):
    """A new run with other hyperparameters on an old run.dir stops with one line listing the differences;
    run.dir=auto names the directory after the config and the SLURM job id, so a requeue finds it again."""
    env = child_env(SLURM_JOB_ID="4242")
    env.pop("SLURM_ARRAY_JOB_ID", None)
    env.pop("SLURM_ARRAY_TASK_ID", None)
    base = ["train", "--config", str(REPO / "configs" / "debug.yaml"), f"data.dir={mnist_shards}", "run.dir=auto",
            "wandb.mode=disabled"]
    first = run_cli([*base, "train.steps=10"], timeout=180, cwd=tmp_path, env=env)
    run = tmp_path / "runs" / "debug-4242"
    assert f"run directory: {run.relative_to(tmp_path)}" in first.stdout
    assert [s for s, _ in complete_checkpoints(run)] == [10]
    refused = run_cli([*base, "train.steps=20", "train.lr_d=0.001", "seed=7"], timeout=120, cwd=tmp_path, env=env,
                      check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "distgan train: error: cannot resume runs/debug-4242: the config differs in seed (0 -> 7), train.lr_d "
        "(0.0002 -> 0.001); use a new run.dir, or resume=<checkpoint dir> to continue from it with the new "
        "values on purpose"]
    again = run_cli([*base, "train.steps=20"], timeout=180, cwd=tmp_path, env=env)  # the requeued job
    assert "finished at step 20" in again.stdout and "resumed from" in again.stdout + again.stderr


def test_run_dir_auto_is_new_for_runs_started_in_the_same_second(tmp_path, monkeypatch):
    """Outside SLURM two runs started within one second got the same runs/<name>-<timestamp> (the second then
    hit the lock or resumed the first); each now claims its own with an exclusive mkdir. Under SLURM the
    name is the job id, unchanged, so a requeued job finds its directory again."""
    from accelerate import Accelerator

    from distgan.config import load_config
    from distgan.run.run_dir import resolve_run_path

    acc = Accelerator(cpu=True)
    monkeypatch.chdir(tmp_path)
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(REPO / "configs" / "debug.yaml", ["run.dir=auto"])
    for _ in range(5):  # until both resolutions fall within one second (the first try, but for a tick)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        first, second = resolve_run_path(cfg, acc), resolve_run_path(cfg, acc)
        if time.strftime("%Y%m%d-%H%M%S") == stamp:
            break
    assert (first, second) == (Path(f"runs/debug-{stamp}"), Path(f"runs/debug-{stamp}-2"))
    assert first.is_dir() and second.is_dir() and not any(first.iterdir())
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert resolve_run_path(cfg, acc) == resolve_run_path(cfg, acc) == Path("runs/debug-4242")
