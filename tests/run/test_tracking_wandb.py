"""W&B faults with real wandb: online without a login, and a server that accepts connections and never
answers (a real TCP server on 127.0.0.1, given to wandb as WANDB_BASE_URL). Training must neither die nor
hang: a one-line error before anything starts, or an offline run that `wandb sync` uploads later, and
stop signals honoured while wandb.init waits."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, child_env, run_cli, wandb_history

pytestmark = pytest.mark.slow  # real processes, signals, servers or file systems (unit tier: -m "not slow")

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters: the shape of a real key


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never reads or answers: an unreachable W&B server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connected = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)  # held open, never answered
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A child environment with a fresh HOME (no ~/.netrc, no wandb settings) and no other credentials."""
    env = child_env(HOME=str(tmp_path / "home"), **extra)
    for key in ("NETRC", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_INIT_TIMEOUT",
                "WANDB_ERROR_REPORTING"):
        if key not in extra:
            env.pop(key, None)
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def _train_args(shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    return ["train", "--config", "configs/debug.yaml", f"data.dir={shards}", f"run.dir={run_dir}",
            "wandb.mode=online", "log.progress=false", *overrides]


def _service_of(pid: int) -> list[int]:
    """Pids of wandb-core processes started for process `pid` (wandb passes `--pid PID`)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"wandb-core") and b"--pid" in args \
                and args[args.index(b"--pid") + 1:args.index(b"--pid") + 2] == [str(pid).encode()]:
            found.append(int(cmdline.parent.name))
    return found


def _assert_no_service_left(pid: int, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while _service_of(pid):
        assert time.monotonic() < deadline, f"wandb-core of process {pid} still running {within} s after it exited"
        time.sleep(0.2)


def test_login_is_found_where_wandb_looks(tmp_path, monkeypatch):
    """WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or a netrc entry for the server's host ($NETRC or ~/.netrc,
    whatever its permissions, as wandb reads it); `auto` falls back to offline without one."""
    from distgan.errors import UserError
    from distgan.run.tracking import resolve_mode

    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="wandb login"):
        resolve_mode("online")
    assert resolve_mode("auto") == "offline" and resolve_mode("offline") == "offline"
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {API_KEY}\n")
    netrc_file.chmod(0o644)
    assert resolve_mode("online") == "online" and resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # another server: that entry does not count
    with pytest.raises(UserError):
        resolve_mode("online")
    monkeypatch.setenv("NETRC", str(tmp_path / "other"))
    (tmp_path / "other").write_text(f"machine 127.0.0.1 login user password {API_KEY}\n")
    assert resolve_mode("online") == "online"
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    assert resolve_mode("online") == "online"


def test_online_without_login_is_one_line_error(mnist_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(_train_args(mnist_shards, run_dir), env=_env(tmp_path), timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distgan train: error: wandb.mode=online"), proc.stderr
    assert "`wandb login`" in lines[0] and "wandb.mode=offline" in lines[0]
    assert not run_dir.exists()  # refused before anything started


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_bad_init_timeout_is_one_line_error(mnist_shards, tmp_path, value):
    proc = run_cli(_train_args(mnist_shards, tmp_path / "run"), timeout=120, check=False,
                   env=_env(tmp_path, WANDB_API_KEY=API_KEY, WANDB_INIT_TIMEOUT=value))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert f"WANDB_INIT_TIMEOUT must be a positive number of seconds, got '{value}'" in proc.stderr


def test_unreachable_server_continues_offline(mnist_shards, tmp_path, silent_server):
    """A key and a server that never answers: after WANDB_INIT_TIMEOUT the run goes on offline, logs every
    step there, says how to sync it, and exits promptly (wandb's service does not hold the exit)."""
    run_dir = tmp_path / "run"
    env = _env(tmp_path, WANDB_BASE_URL=silent_server.url, WANDB_API_KEY=API_KEY, WANDB_INIT_TIMEOUT="5")
    t0 = time.monotonic()
    proc = subprocess.Popen([PYTHON, "-m", "distgan", *_train_args(mnist_shards, run_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=150)  # wandb alone would wait 90 s, then raise CommError
    finally:
        proc.kill()
    took = time.monotonic() - t0
    assert proc.returncode == 0, stderr[-4000:]
    assert silent_server.connected.is_set()  # wandb really tried the server
    assert "Traceback" not in stderr
    assert re.search(r"the online W&B run did not start \(\w+: .*; timeout 5 s\); continuing with W&B offline",
                     stderr), stderr[-4000:]
    assert f"`wandb sync {run_dir}/wandb/offline-run-*`" in stderr
    assert "finished at step 20" in stdout
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert [h["_step"] for h in wandb_history(run_dir) if "loss/d" in h] == [5, 10, 15, 20]
    print(f"took {took:.1f} s")
    assert took < 100
    _assert_no_service_left(proc.pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_during_hanging_init_stops_promptly(mnist_shards, tmp_path, silent_server, sig):
    """WANDB_INIT_TIMEOUT=300 and a server that never answers: a SIGTERM (or Ctrl-C) while wandb.init waits
    ends the wait at once; the run continues offline only to save a checkpoint at step 1 and stop."""
    run_dir = tmp_path / "run"
    env = _env(tmp_path, WANDB_BASE_URL=silent_server.url, WANDB_API_KEY=API_KEY, WANDB_INIT_TIMEOUT="300")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as out_f, err.open("w") as err_f:
        proc = subprocess.Popen([PYTHON, "-m", "distgan", *_train_args(mnist_shards, run_dir, "train.steps=100000")],
                                cwd=REPO, env=env, stdout=out_f, stderr=err_f, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert silent_server.connected.wait(timeout=180), "wandb never contacted the server"
        time.sleep(1)  # well inside the wait for the server's answer
        t_signal = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 90 s after SIG{sig.name}\n{err.read_text()[-4000:]}") from None
        took = time.monotonic() - t_signal
    finally:
        proc.kill()
        proc.wait(timeout=30)
    stdout, stderr = out.read_text(), err.read_text()
    name = sig.name.removeprefix("SIG")
    assert proc.returncode == 0, stderr[-4000:]
    assert f"SIG{name} asked to stop before the online W&B run had started; continuing with W&B offline" in stderr
    assert f"preempted by SIG{name}; checkpoint saved at step 1" in stdout, stdout[-3000:]
    assert (run_dir / "checkpoints" / "step_0000001" / "COMPLETE").exists()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert "Traceback" not in stderr
    print(f"stopped {took:.1f} s after SIG{name}")
    assert took < 60  # not the 300 s init timeout
    _assert_no_service_left(proc.pid)


def test_wandb_service_killed_mid_run_costs_no_step(mnist_shards, tmp_path):
    """W&B's service dies while training runs (SLURM's SIGTERM reaches it too; OOM; a crash): the next W&B
    call is one warning, training goes on with metrics.jsonl, and a SIGTERM after that still saves a
    checkpoint at the step it came, with no traceback and exit 0."""
    run_dir = tmp_path / "run"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    args = ["train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}", f"run.dir={run_dir}",
            "wandb.mode=offline", "log.progress=false", "train.steps=1000000", "log.every=1",
            "log.grid_every=1000000", "checkpoint.every=1000000"]
    metrics = run_dir / "metrics.jsonl"

    def logged_steps() -> int:
        return metrics.read_text().count("\n") if metrics.is_file() else 0

    with out.open("w") as out_f, err.open("w") as err_f:
        proc = subprocess.Popen([PYTHON, "-m", "distgan", *args], cwd=REPO, env=child_env(), stdout=out_f,
                                stderr=err_f, text=True)
    try:
        deadline = time.monotonic() + 120
        while logged_steps() < 20:
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-4000:]
            time.sleep(0.1)
        [service] = _service_of(proc.pid)
        subprocess.run(["kill", "-TERM", str(service)], check=True, timeout=10)
        while not re.search(r"W&B stopped working", err.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-4000:]
            time.sleep(0.1)
        after_warning = logged_steps()
        while logged_steps() < after_warning + 50:  # training goes on, metrics.jsonl too
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-4000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    stdout, stderr = out.read_text(), err.read_text()
    assert proc.returncode == 0, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    warnings = re.findall(r"W&B stopped working \((\w+): [^\n]*\): training goes on without it", stderr)
    assert warnings in (["ConnectionResetError"], ["BrokenPipeError"]), stderr[-4000:]  # once, not per step
    [stop] = [int(s) for s in re.findall(r"preempted by SIGTERM; checkpoint saved at step (\d+)", stdout)]
    assert (run_dir / "checkpoints" / f"step_{stop:07d}" / "COMPLETE").exists()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, stop + 1))  # every step logged up to the checkpoint: nothing lost
    assert stop > after_warning
