"""Unit tests of distgan.run.preemption: signal parsing, the flag-only handler, Ctrl-C, the
interruptible block, the all-ranks agreement (2 gloo processes) and `scontrol requeue` (a fake scontrol on
PATH). The end-to-end Ctrl-C runs are in run/test_signals.py."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import PYTHON, REPO, free_port
from conftest import test_env as child_env  # not collected as a test

from distgan.errors import UserError
from distgan.run.preemption import (
    CTRL_C_MESSAGE,
    PreemptionWatcher,
    StopRequested,
    installed_watcher,
    parse_signal,
    slurm_job_id,
)

ONE_PROCESS = SimpleNamespace(num_processes=1, device=torch.device("cpu"))


@pytest.fixture
def ctrl_c_not_ignored():
    """Run as from a terminal: SIGINT at Python's default, even when pytest itself was started with SIGINT
    ignored (`nohup`, a script's background job), which the watcher deliberately keeps (see below)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _deliver(sig: signal.Signals) -> None:
    """Send `sig` to this process and give Python the chance to run its handler (in this thread)."""
    os.kill(os.getpid(), sig)
    time.sleep(0.05)


@pytest.mark.parametrize("name, expected", [
    ("USR1", signal.SIGUSR1), ("SIGUSR2", signal.SIGUSR2), ("term", signal.SIGTERM),
    (str(int(signal.SIGUSR1)), signal.SIGUSR1),
])
def test_parse_signal(name, expected):
    assert parse_signal(name) is expected


@pytest.mark.parametrize("name", ["KILL", "SIGSTOP", "USR3", "", "999"])
def test_unknown_or_uncatchable_signal_is_a_user_error(name):
    with pytest.raises(UserError, match="signal"):
        PreemptionWatcher([name])


def test_default_and_comma_separated_signals():
    assert PreemptionWatcher().signals == (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
    assert PreemptionWatcher("USR2,TERM").signals == (signal.SIGUSR2, signal.SIGTERM)


def test_handler_only_sets_a_flag_and_remembers_the_first_signal():
    before = signal.getsignal(signal.SIGUSR2)
    w = PreemptionWatcher(["USR2", "USR1"])
    w.install()
    try:
        assert w.signal_name is None
        assert not w.requested(ONE_PROCESS)
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert w.signal_name == "USR2"
        assert w.requested(ONE_PROCESS)
    finally:
        w.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == before


def test_install_outside_main_thread_refused():
    import threading

    errors: list[BaseException] = []

    def target():
        try:
            PreemptionWatcher().install()
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0])


def _python_with_signals_ignored(signals: str, code: str) -> str:
    """Run `python -c code` started with `signals` ignored (as bash's `trap ""` leaves them for its exec); its
    stdout, after asserting exit 0."""
    proc = subprocess.run(["bash", "-c", f'trap "" {signals}; exec "$0" -c "$1"', PYTHON, code],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_handler_overrides_an_inherited_sig_ign():
    """train.sbatch starts the launcher with USR1 ignored; the training process must still catch it."""
    code = ("import os, signal; from distgan.run.preemption import PreemptionWatcher\n"
            "assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN\n"
            "w = PreemptionWatcher(['USR1']); w.install(); os.kill(os.getpid(), signal.SIGUSR1)\n"
            "print('flag', w.requested(None), w.signal_name)\n")
    out = _python_with_signals_ignored("USR1 USR2", code)
    assert "flag True USR1" in out


def test_ctrl_c_is_watched_without_being_listed_and_does_not_requeue(capfd, ctrl_c_not_ignored):
    """The first SIGINT only sets the flag (stop at the next step, no requeue) and says so on stderr."""
    before = signal.getsignal(signal.SIGINT)
    w = PreemptionWatcher(["USR1"], requeue_signals=["USR1"])
    w.install()
    try:
        assert installed_watcher() is w
        _deliver(signal.SIGINT)
        assert w.signal_name == "INT"
        assert w.requested(ONE_PROCESS) and not w.should_requeue
    finally:
        w.uninstall()
    assert installed_watcher() is None
    assert signal.getsignal(signal.SIGINT) == before
    assert CTRL_C_MESSAGE in capfd.readouterr().err


def test_second_ctrl_c_aborts_at_once(ctrl_c_not_ignored):
    w = PreemptionWatcher()
    w.install()
    try:
        _deliver(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)
    finally:
        w.uninstall()


def test_ctrl_c_after_another_stop_signal_still_needs_two_presses(ctrl_c_not_ignored):
    """A SIGTERM first: the first Ctrl-C then still only asks for the stop."""
    w = PreemptionWatcher()
    w.install()
    try:
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGINT)
        assert w.signal_name == "TERM"
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)
    finally:
        w.uninstall()


def test_ctrl_c_listed_in_requeue_signals_requeues():
    w = PreemptionWatcher(["INT"], requeue_signals=["INT"])
    w.install()
    try:
        _deliver(signal.SIGINT)
        assert w.requested(ONE_PROCESS) and w.should_requeue
    finally:
        w.uninstall()


def test_an_inherited_ignored_sigint_stays_ignored_unless_listed():
    """`nohup`/a script's background job starts with SIGINT ignored: that choice is kept, unless INT is listed."""
    code = ("import signal; from distgan.run.preemption import PreemptionWatcher\n"
            "w = PreemptionWatcher(['TERM']); w.install()\n"
            "print('default', signal.getsignal(signal.SIGINT) == signal.SIG_IGN); w.uninstall()\n"
            "w = PreemptionWatcher(['TERM', 'INT']); w.install()\n"
            "print('listed', signal.getsignal(signal.SIGINT) == signal.SIG_IGN)\n")
    out = _python_with_signals_ignored("INT", code)
    assert "default True" in out and "listed False" in out


def test_interrupting_ends_a_blocking_wait_on_a_stop_signal():
    """Inside `interrupting()` a stop signal raises StopRequested at once; the flag stays set for the loop."""
    w = PreemptionWatcher()
    w.install()
    try:
        t0 = time.monotonic()
        with pytest.raises(StopRequested) as caught, w.interrupting():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # stands in for wandb.init waiting for an unreachable server
        assert time.monotonic() - t0 < 10
        assert caught.value.signal_name == "TERM"
        assert w.requested(ONE_PROCESS) and not w.should_requeue
        _deliver(signal.SIGUSR1)  # outside the block: only the flag
        assert w.requested(ONE_PROCESS) and w.should_requeue
        with pytest.raises(StopRequested):  # a stop already pending: the block does not even start
            with w.interrupting():
                raise AssertionError("the block ran although a stop was pending")
    finally:
        w.uninstall()


def test_interrupting_without_a_signal_changes_nothing():
    w = PreemptionWatcher()
    w.install()
    try:
        with w.interrupting():
            time.sleep(0.05)
        _deliver(signal.SIGUSR2)  # after the block: no exception
        assert w.signal_name == "USR2"
    finally:
        w.uninstall()


_AGREE = """
import os, signal, sys
from types import SimpleNamespace
import torch, torch.distributed as dist
from distgan.run.preemption import PreemptionWatcher
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
acc = SimpleNamespace(num_processes=2, device=torch.device("cpu"))
w = PreemptionWatcher(["USR1", "TERM"]); w.install()
answers = [w.requested(acc)]
if rank == 1:
    os.kill(os.getpid(), signal.SIGTERM)
answers.append((w.requested(acc), w.should_requeue))
if rank == 0:
    os.kill(os.getpid(), signal.SIGUSR1)
answers.append((w.requested(acc), w.should_requeue))
print("rank", rank, "answers", answers, "local", w.signal_name, flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_all_ranks_agree_when_one_rank_saw_the_signal():
    """Rank 1 sees TERM: both stop, neither requeues; then rank 0 sees USR1: both requeue (MAX)."""
    port = str(free_port())
    procs = [subprocess.Popen([PYTHON, "-c", _AGREE, str(r), port], cwd=REPO, env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "rank 0 answers [False, (True, False), (True, True)] local USR1" in outs[0][0]
    assert "rank 1 answers [False, (True, False), (True, True)] local TERM" in outs[1][0]


def _fake_scontrol(tmp_path: Path, rc: int = 0) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\necho "denied" >&2\nexit {rc}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _slurm_env(monkeypatch, bin_dir: Path | None, **values: str) -> None:
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    if bin_dir is not None:
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_term_stops_but_does_not_requeue(monkeypatch, tmp_path, caplog):
    """SIGTERM comes with scancel too: requeueing would resurrect a cancelled job."""
    _slurm_env(monkeypatch, _fake_scontrol(tmp_path), SLURM_JOB_ID="4242")
    w = PreemptionWatcher()
    w.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert w.requested(SimpleNamespace(num_processes=1, device=torch.device("cpu")))
    finally:
        w.uninstall()
    assert w.signal_name == "TERM" and not w.should_requeue
    assert w.requeue() is False
    assert not (tmp_path / "calls").exists()
    assert "not requeueing" in caplog.text


def test_requeue_signals_are_configurable(monkeypatch, tmp_path):
    _slurm_env(monkeypatch, _fake_scontrol(tmp_path), SLURM_JOB_ID="4242")
    w = PreemptionWatcher(["TERM"], requeue_signals=["TERM"])
    w.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert w.requested(SimpleNamespace(num_processes=1, device=torch.device("cpu")))
    finally:
        w.uninstall()
    assert w.should_requeue and w.requeue() is True


def test_requeue_outside_slurm_does_nothing(monkeypatch, tmp_path):
    _slurm_env(monkeypatch, _fake_scontrol(tmp_path))
    assert slurm_job_id() is None
    assert PreemptionWatcher().requeue() is False
    assert not (tmp_path / "calls").exists()


def test_requeue_runs_scontrol(monkeypatch, tmp_path):
    _slurm_env(monkeypatch, _fake_scontrol(tmp_path), SLURM_JOB_ID="4242")
    assert PreemptionWatcher().requeue() is True
    assert (tmp_path / "calls").read_text().split() == ["requeue", "4242"]


def test_requeue_of_an_array_task(monkeypatch, tmp_path):
    _slurm_env(monkeypatch, _fake_scontrol(tmp_path), SLURM_JOB_ID="4243", SLURM_ARRAY_JOB_ID="4200",
               SLURM_ARRAY_TASK_ID="3")
    assert PreemptionWatcher().requeue() is True
    assert (tmp_path / "calls").read_text().split() == ["requeue", "4200_3"]


def test_failed_requeue_returns_false(monkeypatch, tmp_path, caplog):
    _slurm_env(monkeypatch, _fake_scontrol(tmp_path, rc=1), SLURM_JOB_ID="7")
    assert PreemptionWatcher().requeue() is False
    assert "denied" in caplog.text


def test_requeue_without_scontrol(monkeypatch, tmp_path):
    _slurm_env(monkeypatch, None, SLURM_JOB_ID="7")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert PreemptionWatcher().requeue() is False

