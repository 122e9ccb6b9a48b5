"""Faults a user causes by hand: Ctrl-C during `distgan train` (a real SIGINT to a real training process),
and bad numbers in the environment of launch/slurm/train.sbatch (the real script, run by bash with fake
srun/scontrol/accelerate on PATH)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, PYTHON, REPO, child_env

from distgan.run.preemption import CTRL_C_MESSAGE

pytestmark = pytest.mark.slow  # real processes, signals, servers or file systems (unit tier: -m "not slow")


# -- Ctrl-C --------------------------------------------------------------------------------------------------
def _fake_scontrol(bin_dir: Path, calls: Path) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "scontrol"
    tool.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def _start_training(tmp_path: Path, shards: Path, *overrides: str) -> tuple[subprocess.Popen, Path, Path]:
    """`distgan train` on configs/debug.yaml for (almost) ever, as a SLURM job would see it (SLURM_JOB_ID and
    a recording scontrol), with SIGINT at its default: a shell's background job would inherit it ignored."""
    run_dir = tmp_path / "run"
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    _fake_scontrol(bin_dir, calls)
    env = child_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="777")
    with (tmp_path / "stdout").open("w") as out, (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(
            [PYTHON, "-m", "distgan", "train", "--config", "configs/debug.yaml", f"data.dir={shards}",
             "train.steps=100000", "checkpoint.every=1000", f"run.dir={run_dir}", "wandb.mode=disabled",
             "log.progress=false", "log.grid_every=1000000", *overrides],
            cwd=REPO, env=env, stdout=out, stderr=err, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, run_dir, calls


def _wait_until(what: str, predicate, proc: subprocess.Popen, tmp_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=30)
            raise AssertionError(f"gave up waiting for {what} (exit {proc.returncode})\n"
                                 f"--- stderr\n{(tmp_path / 'stderr').read_text()[-4000:]}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, timeout: float) -> float:
    """Wait for the process to exit (kill it past `timeout`); return how long it took."""
    t0 = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise AssertionError(f"still running {timeout} s after the signal") from None
    return time.monotonic() - t0


def test_ctrl_c_saves_a_checkpoint_at_the_next_step_and_stops(mnist_shards, tmp_path):
    """One Ctrl-C: a complete checkpoint at the step where it stopped (checkpoint.every=1000 would have lost
    them all), the line that says what happens, exit 0, and no requeue even inside a SLURM job."""
    proc, run_dir, calls = _start_training(tmp_path, mnist_shards)
    _wait_until("the first step", lambda: (run_dir / "samples" / "step_0000001.png").exists(), proc, tmp_path, 180)
    proc.send_signal(signal.SIGINT)
    took = _finish(proc, 60)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, stderr[-4000:]
    assert CTRL_C_MESSAGE in stderr
    stopped = [int(s) for s in re.findall(r"preempted by SIGINT; checkpoint saved at step (\d+)", stdout)]
    assert len(stopped) == 1, stdout[-3000:]
    step = stopped[0]
    assert 1 <= step < 1000
    assert (run_dir / "checkpoints" / f"step_{step:07d}" / "COMPLETE").exists()
    assert "not requeueing" in stderr and not calls.exists()
    assert "Traceback" not in stderr and took < 60
    # The next run resumes from it.
    resumed = subprocess.run(
        [PYTHON, "-m", "distgan", "train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}",
         f"train.steps={step + 2}", f"run.dir={run_dir}", "wandb.mode=disabled", "log.progress=false"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"at step {step}" in resumed.stdout and f"finished at step {step + 2}" in resumed.stdout


def test_second_ctrl_c_aborts_at_once(mnist_shards, tmp_path):
    """Two Ctrl-C: the second one aborts before the stop step (preempt.check_every=1000 keeps the first
    one pending for a while), the CLI says `interrupted` and exits 130."""
    proc, run_dir, _ = _start_training(tmp_path, mnist_shards, "preempt.check_every=1000")
    _wait_until("the first step", lambda: (run_dir / "samples" / "step_0000001.png").exists(), proc, tmp_path, 180)
    proc.send_signal(signal.SIGINT)
    # Python runs the handler for two quick SIGINTs only once: wait until the first one was handled.
    _wait_until("the Ctrl-C line", lambda: CTRL_C_MESSAGE in (tmp_path / "stderr").read_text(), proc, tmp_path, 30)
    proc.send_signal(signal.SIGINT)
    took = _finish(proc, 30)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 130, stderr[-4000:]
    assert "distgan train: interrupted" in stderr and "Traceback" not in stderr
    assert "preempted" not in stdout and not (run_dir / "checkpoints").exists()
    assert took < 30


def _metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_sigterm_during_evaluation_abandons_it_saves_and_stops(mnist_shards, eval_classifier, tmp_path):
    """SIGTERM while an in-training evaluation of 30,000 samples runs (it would take half a minute or more):
    the evaluation is abandoned (one line, no scores), a checkpoint is saved at that step and the run exits 0
    within seconds, inside SLURM's 30 s before SIGKILL."""
    proc, run_dir, _ = _start_training(tmp_path, mnist_shards, "eval.every=5", "eval.n=30000",
                                       f"eval.classifier={eval_classifier}")
    # log.every=5 (configs/debug.yaml): the step-5 row is written just before the step-5 evaluation starts
    _wait_until("the step-5 row", lambda: any(r["step"] == 5 for r in _metrics_rows(run_dir)), proc, tmp_path, 180)
    proc.send_signal(signal.SIGTERM)
    took = _finish(proc, 60)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, stderr[-4000:]
    assert "evaluation at step 5 abandoned: SIGTERM" in stderr and "Traceback" not in stderr
    assert "preempted by SIGTERM; checkpoint saved at step 5" in stdout
    assert (run_dir / "checkpoints" / "step_0000005" / "COMPLETE").exists()
    assert not (run_dir / "checkpoints" / "best").exists()
    assert not [r for r in _metrics_rows(run_dir) if any(k.startswith("eval/") for k in r)]
    assert took < 15, f"took {took:.1f} s after SIGTERM"
# -- train.sbatch: numbers from the environment ---------------------------------------------------------------
FAKE_SRUN = """#!/usr/bin/env bash
echo called >> "$FAKE_DIR/srun_called"
while [[ $1 == -* ]]; do shift; done
SLURM_NODEID=0 "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && { echo node0; exit 0; }
exit 1
"""
FAKE_ACCELERATE = """#!PYTHON
import json, os, sys
with open(os.path.join(os.environ["FAKE_DIR"], "accelerate_calls"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _run_sbatch(tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("accelerate", FAKE_ACCELERATE)):
        tool = bin_dir / name
        tool.write_text(text.replace("PYTHON", str(BIN / "python")))
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in child_env().items()
           if not k.startswith(("SLURM_", "CUDA_VISIBLE", "DISTGAN_", "ACCELERATE_", "OMP_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", FAKE_DIR=str(tmp_path), VIRTUAL_ENV="fake",
               SLURM_JOB_ID="4321", SLURM_JOB_NODELIST="node0", SLURM_SUBMIT_DIR=str(REPO))
    env.update(env_extra)
    return subprocess.run(["bash", str(REPO / "launch/slurm/train.sbatch"), "configs/debug.yaml", "train.steps=7"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name, value, message", [
    ("DISTGAN_PROCS_PER_NODE", "a[$(touch {marker})]", "must be a positive integer"),
    ("DISTGAN_PROCS_PER_NODE", "HOME[$(touch {marker})]", "must be a positive integer"),  # a set variable
    ("DISTGAN_PROCS_PER_NODE", "0", "must be a positive integer"),
    ("DISTGAN_PROCS_PER_NODE", "-2", "must be a positive integer"),
    ("DISTGAN_PROCS_PER_NODE", "08", "must be a positive integer"),  # bash would read it as octal
    ("DISTGAN_PROCS_PER_NODE", "2 ", "must be a positive integer"),
    ("SLURM_JOB_ID", "HOME[$(touch {marker})]", "must be a positive integer"),
    ("SLURM_JOB_NUM_NODES", "HOME[$(touch {marker})]", "must be a positive integer"),
    ("SLURM_CPUS_PER_TASK", "HOME[$(touch {marker})]", "must be a positive integer"),
    ("SLURM_GPUS_ON_NODE", "HOME[$(touch {marker})]", "must be a non-negative integer"),
    ("DISTGAN_MASTER_PORT", "70000", "must be an integer from 1 to 65535"),
])
def test_sbatch_refuses_a_number_that_is_not_one(tmp_path, name, value, message):
    """Bash arithmetic runs the command substitution hidden in `NAME[$(cmd)]` (at once when NAME is set, like
    HOME; under `set -u` an unset `a` fails first): the script must refuse such a value in one line, before
    any arithmetic, and launch nothing."""
    marker = tmp_path / "X"
    value = value.format(marker=marker)
    proc = _run_sbatch(tmp_path, **{name: value})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"train.sbatch: error: {name} {message}, got '{value}'"], proc.stderr
    assert not marker.exists(), "a command in the variable's value ran"
    assert not (tmp_path / "srun_called").exists()


def test_sbatch_uses_a_valid_procs_per_node(tmp_path):
    proc = _run_sbatch(tmp_path, DISTGAN_PROCS_PER_NODE="3", SLURM_CPUS_PER_TASK="6", SLURM_GPUS_ON_NODE="0",
                       DISTGAN_MASTER_PORT="29555")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [argv] = [json.loads(line) for line in (tmp_path / "accelerate_calls").read_text().splitlines()]
    assert argv[argv.index("--num_processes") + 1] == "3"
    assert argv[argv.index("--main_process_port") + 1] == "29555"
    assert "1 node(s) x 3 process(es) (CPU, gloo)" in proc.stdout
