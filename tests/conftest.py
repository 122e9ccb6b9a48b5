"""Shared test helpers: paths to the real MNIST files, CLI and `accelerate launch` runners with hard
timeouts, and a session-wide set of prepared webdataset shards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_RAW = Path(os.environ.get("DISTGAN_MNIST_RAW", REPO.parent / "shared" / "data" / "mnist"))
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: offline wandb, one thread per process (2-core machines)."""
    env = dict(os.environ)
    env.update(
        WANDB_SILENT="true",
        WANDB_MODE=env.get("WANDB_MODE", "offline"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env


test_env = child_env  # older name; import `child_env` (pytest would collect a `test_*` name in a test module)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], *, timeout: float, cwd: Path | None = None, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m distgan ARGS` with a hard timeout (a hang fails the test)."""
    proc = subprocess.run([PYTHON, "-m", "distgan", *args], cwd=cwd or REPO, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"distgan {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def accelerate_launch(args: list[str], *, num_processes: int = 2, timeout: float, env: dict | None = None,
                      cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `accelerate launch --multi_gpu --num_processes N ARGS` on CPU (gloo) with a hard timeout."""
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), *args]
    proc = subprocess.run(cmd, cwd=cwd or REPO, env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def mnist_raw() -> Path:
    """The real MNIST IDX files beside the repository (../shared/data/mnist)."""
    if not (MNIST_RAW / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST not found at {MNIST_RAW}; set DISTGAN_MNIST_RAW")
    return MNIST_RAW


@pytest.fixture(scope="session")
def mnist_shards(tmp_path_factory, mnist_raw) -> Path:
    """`distgan prepare` output from the real MNIST files, made once per test session."""
    out = tmp_path_factory.mktemp("mnist_shards")
    run_cli(["prepare", "--raw-dir", str(mnist_raw), "--out", str(out)], timeout=300)
    return out


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of every offline W&B run under RUN_DIR/wandb, oldest run first, read back with
    `wandb leet inspect --json` (JSON lines)."""
    import json

    runs = sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {run_dir}/wandb"
    records = []
    for run in runs:
        proc = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(run)], capture_output=True,
                              text=True, timeout=120, env=child_env())
        assert proc.returncode == 0, proc.stderr
        records += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return records


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows (`_step` and logged keys) of the offline W&B runs of RUN_DIR, in logging order."""
    return [r["history"]["item"] for r in wandb_records(run_dir) if r.get("type") == "history"]


@pytest.fixture(scope="session")
def eval_classifier(tmp_path_factory, mnist_shards) -> Path:
    """A feature classifier trained once per session by `distgan train-classifier` on `mnist_shards`."""
    from eval_support import classifier_file

    return classifier_file(tmp_path_factory, mnist_shards)


@pytest.fixture(scope="module")
def slurm() -> None:
    """The local SLURM cluster (launch/slurm/local_cluster.sh), one node at least; skips without it (fails in CI)."""
    from slurm_support import require_cluster

    require_cluster(1)


@pytest.fixture(scope="module")
def slurm_two_nodes() -> None:
    """The local SLURM cluster with two nodes (n1, n2) on this machine; skips without it (fails in CI)."""
    from slurm_support import require_cluster

    require_cluster(2)
