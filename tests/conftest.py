"""Shared test helpers: paths to the real MNIST files, CLI and `accelerate launch` runners with hard
timeouts, and a session-wide set of prepared webdataset shards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file

from distgan.run.checkpoint import complete_checkpoints


def threads_per_worker() -> int:
    """The CPU cores of this machine shared out among the pytest-xdist workers (1 with two workers on two
    cores): more threads than that make every worker's OpenMP threads wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


torch.set_num_threads(threads_per_worker())  # the in-process tests of this worker

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


def missing(what: str, how: str) -> None:
    """An optional part of the test environment is missing: skip with the reason, except in CI (CI=true),
    where .ci/run installs everything and a missing part must fail."""
    message = f"{what} not available: {how}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_module(name: str, how: str) -> None:
    """Skip (fail in CI) unless module `name` imports."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        missing(f"the {name} package", how)


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


def cap_address_space(limit: int = 2 << 30):
    """A subprocess preexec_fn capping the child's address space (RLIMIT_AS) at `limit` bytes: a runaway
    allocation fails there (MemoryError) instead of taking the machine's memory."""
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


_TIMED_CALL = """
import json, sys, time
from distgan.errors import UserError
from {module} import {func} as f
start = time.monotonic()
try:
    f(*{args!r})
    error = None
except UserError as e:
    error = str(e)
print(json.dumps({{"error": error, "seconds": time.monotonic() - start}}))
"""


def timed_call(module: str, func: str, *args, limit: int = 2 << 30, timeout: float = 120) -> tuple[str | None, float]:
    """(UserError message or None, seconds) of `module.func(*args)` (args: Python literals) in a fresh
    process whose address space is capped at `limit` bytes; any other exception fails the test."""
    code = _TIMED_CALL.format(module=module, func=func, args=args)
    proc = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap_address_space(limit))
    assert proc.returncode == 0, f"exited {proc.returncode}\n{proc.stderr[-3000:]}"
    import json

    out = json.loads(proc.stdout.splitlines()[-1])
    return out["error"], out["seconds"]


def yaml_alias_bomb(levels: int, width: int = 9) -> str:
    """A one-line YAML flow list of `width` items whose first item anchors the level below and the others
    alias it, `levels` deep: a few hundred bytes that expand to width**levels values (9 levels: 387 million)."""
    value = "&a0 [" + ", ".join(["1"] * width) + "]"
    for k in range(1, levels):
        value = f"&a{k} [{value}, " + ", ".join([f"*a{k - 1}"] * (width - 1)) + "]"
    return value


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


# Session fixtures that cost a minute or more of CPU: a test that uses one belongs to the slow tier.
SLOW_FIXTURES = {"eval_classifier"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that needs a SLOW_FIXTURES fixture (the unit tier never trains the classifier)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_raw() -> Path:
    """The real MNIST IDX files beside the repository (../shared/data/mnist)."""
    if not (MNIST_RAW / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST not found at {MNIST_RAW}; set DISTGAN_MNIST_RAW")
    return MNIST_RAW


def make_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """`make(PATH)` once per test run, shared by every pytest-xdist worker of the run (the first to take the
    lock makes it, the others wait and reuse it); PATH is returned. Without xdist: once per session."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's own folder either way
    path, made = root / name, root / f"{name}.made"
    with FileLock(str(root / f"{name}.lock")):
        if not made.exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            made.touch()
    return path


@pytest.fixture(scope="session")
def mnist_shards(tmp_path_factory, mnist_raw) -> Path:
    """`distgan prepare` output from the real MNIST files, made once per test run."""
    return make_once(tmp_path_factory, "mnist_shards", lambda out: run_cli(
        ["prepare", "--raw-dir", str(mnist_raw), "--out", str(out)], timeout=300))


@pytest.fixture(scope="session")
def small_mnist_shards(tmp_path_factory, mnist_raw) -> Path:
    """The first 2,000 real training digits and 1,000 real test digits as shards of 500 (through `prepare
    --npz`), made once per test run: an epoch in 10 batches of 200, for tests that cross epochs."""
    import numpy as np

    from distgan.data.idx import parse_idx

    def make(out: Path) -> None:
        arrays = {f"{split}_{kind}": parse_idx(mnist_raw / f"{prefix}-{kind}-idx{dims}-ubyte.gz", kind=kind)[:n]
                  for split, prefix, n in (("train", "train", 2000), ("test", "t10k", 1000))
                  for kind, dims in (("images", 3), ("labels", 1))}
        out.mkdir(parents=True)
        np.savez(out / "small.npz", **arrays)
        run_cli(["prepare", "--npz", str(out / "small.npz"), "--out", str(out / "data"), "--shard-size", "500"],
                timeout=300)

    return make_once(tmp_path_factory, "small_mnist_shards", make) / "data"


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


# -- helpers shared by test files -------------------------------------------------------------------------


def final_weights(run_dir):
    """G, D and EMA tensors of the newest checkpoint."""
    ckpt = complete_checkpoints(run_dir)[-1][1]
    return {name: load_file(str(ckpt / name)) for name in
            ("model.safetensors", "model_1.safetensors", "ema_generator.safetensors")}


def assert_same_weights(a, b):
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}:{key} differs"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `path` (skips where mounting is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a genuinely full / read-only file system) needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in this sandbox: {proc.stderr.strip()[:200]}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


# Paths that are no regular file, each made at `path`: what a user may pass where a file is expected.
NOT_A_FILE: dict[str, Callable[[Path], object]] = {
    "fifo": os.mkfifo,
    "dir": Path.mkdir,
    "dev_zero": lambda path: path.symlink_to("/dev/zero"),
}
