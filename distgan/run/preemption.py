"""Preemption: a signal sets a flag; all ranks agree on it at a step boundary; the main process requeues.

Signal handlers only set a flag (checkpointing inside a handler can hang). The trainer calls
`requested(accelerator)` on every rank at the same step boundary; it all-reduces the flag (MAX), so
a signal seen by any rank stops all of them at the same step. Then every rank saves, and the main
process calls `requeue()` (`scontrol requeue $SLURM_JOB_ID`) before all exit 0.

Only the warning signals (USR1, USR2 by default: `--signal=USR1@120`) requeue. SIGTERM also stops
training with a checkpoint, but does not requeue: SLURM sends it for `scancel` (a requeue would bring a
cancelled job back: `scontrol requeue` accepts a cancelled job), at the time limit, and when it
preempts a job itself (then SLURM requeues it or not, by its own PreemptMode).

Ctrl-C (SIGINT) is always watched, whatever `preempt.signals` says, and never requeues unless INT is
listed in `preempt.requeue_signals`: the first one prints a line and stops with a checkpoint at the next
step boundary (the run exits 0); a second one raises KeyboardInterrupt at once (the CLI exits 130). An
inherited SIG_IGN for SIGINT (`nohup`, a background job of a script) is kept unless INT is listed.

A blocking call that must not outlive a stop signal (wandb.init waiting for an unreachable server) runs
inside `with watcher.interrupting():`; there a stop signal, after setting the flag, raises StopRequested.

Under `accelerate launch` (torchrun) the launcher must not die of SIGUSR1/2: launch/slurm/train.sbatch
runs it with those signals ignored, and SLURM delivers the signal to every process of the step.
torchrun starts its workers in their own session, so a Ctrl-C at the terminal reaches torchrun only,
which forwards one SIGINT to each worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from distgan.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[str, ...] = ("USR1", "USR2", "TERM")
DEFAULT_REQUEUE_SIGNALS: tuple[str, ...] = ("USR1", "USR2")
# What the ranks agree on (all-reduce MAX): nothing, stop, or stop and requeue.
_NONE, _STOP, _REQUEUE = 0, 1, 2
# Signals a job may sensibly be warned with; KILL and STOP cannot be caught.
ALLOWED_SIGNALS: tuple[str, ...] = ("USR1", "USR2", "TERM", "INT", "HUP", "QUIT", "CONT", "URG", "XCPU")
CTRL_C_MESSAGE = "Ctrl-C: saving a checkpoint at the next step and stopping; press Ctrl-C again to abort now"

_installed: PreemptionWatcher | None = None  # the watcher whose handlers are installed now


class StopRequested(BaseException):
    """Raised by a stop signal inside `PreemptionWatcher.interrupting()`, to end a blocking wait.

    A BaseException (like KeyboardInterrupt), so that library code catching Exception lets it through.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"SIG{name}")
        self.signal_name = name


def installed_watcher() -> PreemptionWatcher | None:
    """The watcher whose handlers are installed in this process now (like `signal.getsignal`), or None."""
    return _installed


def parse_signal(name: str) -> signal.Signals:
    """`"USR1"`, `"SIGUSR1"` or `"10"` -> `signal.SIGUSR1`; UserError for anything else."""
    text = str(name).strip().upper()
    if text.isdigit():
        try:
            sig = signal.Signals(int(text))
        except ValueError:
            raise UserError(f"unknown signal number {name!r} in preempt.signals") from None
        text = sig.name
    short = text.removeprefix("SIG")
    if short not in ALLOWED_SIGNALS:
        raise UserError(f"preempt.signals: cannot use signal {name!r}; choose from {', '.join(ALLOWED_SIGNALS)}")
    return signal.Signals[f"SIG{short}"]


class PreemptionWatcher:
    """Watches for preemption signals and coordinates the stop across ranks."""

    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS,
                 requeue_signals: Sequence[str] = DEFAULT_REQUEUE_SIGNALS) -> None:
        self.signals = _parse_list(signals)
        self.requeue_signals = frozenset(_parse_list(requeue_signals))
        self._flag = False
        self._wants_requeue = False
        self._signal: signal.Signals | None = None
        self._ctrl_c = 0  # SIGINTs received
        self._interrupting = False
        self._agreed = _NONE
        self._previous: dict[signal.Signals, Any] = {}

    # -- local side ---------------------------------------------------------------------------
    def install(self) -> None:
        """Install the handlers (main thread only): the configured signals, overriding an inherited SIG_IGN,
        and SIGINT (Ctrl-C) unless it is inherited as SIG_IGN and not configured."""
        global _installed
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionWatcher.install() must be called from the main thread")
        handled = list(self.signals)
        if signal.SIGINT not in handled and signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            handled.append(signal.SIGINT)
        for sig in handled:
            self._previous[sig] = signal.signal(sig, self._handle)
        _installed = self

    def uninstall(self) -> None:
        """Restore the handlers that were there before `install()`."""
        global _installed
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if _installed is self:
            _installed = None

    def _handle(self, signum: int, frame: object) -> None:
        # Only set flags: no locks, no collectives, no checkpoint in a signal handler. The Ctrl-C line goes
        # straight to fd 2 (os.write), not through sys.stderr's buffer that the interrupted code may hold.
        sig = signal.Signals(signum)
        if sig is signal.SIGINT:
            self._ctrl_c += 1
            if self._ctrl_c > 1:
                raise KeyboardInterrupt
            if os.environ.get("RANK", "0") == "0":
                with contextlib.suppress(OSError):
                    os.write(2, (CTRL_C_MESSAGE + "\n").encode())
        if not self._flag:
            self._signal = sig
        self._wants_requeue = self._wants_requeue or sig in self.requeue_signals
        self._flag = True
        if self._interrupting:
            self._interrupting = False  # once: the caller's clean-up must not be interrupted again
            raise StopRequested(sig.name.removeprefix("SIG"))

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """Within this block a stop signal (or one that already came) raises StopRequested after setting
        the flag, so that a blocking wait ends now; `requested()` still reports the stop afterwards."""
        if self._signal is not None:
            raise StopRequested(self.signal_name or "")
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    @property
    def seen(self) -> bool:
        """Local, no collective: has this process received a stop signal?"""
        return self._flag

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal received here, without the SIG prefix (e.g. "USR1"), or None."""
        return self._signal.name.removeprefix("SIG") if self._signal is not None else None

    # -- collective side ----------------------------------------------------------------------
    def requested(self, accelerator: Any) -> bool:
        """Collective: True on every rank if any rank saw a signal. Call on all ranks at one step."""
        local = _REQUEUE if self._wants_requeue else _STOP if self._flag else _NONE
        if int(getattr(accelerator, "num_processes", 1)) <= 1:
            self._agreed = local
        else:
            import torch
            import torch.distributed as dist

            code = torch.tensor([local], dtype=torch.int32, device=accelerator.device)
            dist.all_reduce(code, op=dist.ReduceOp.MAX)
            self._agreed = int(code.item())
            if self._agreed and not self._flag:
                log.info("preemption requested by another rank")
        return self._agreed != _NONE

    @property
    def should_requeue(self) -> bool:
        """After `requested()`: False when the ranks stopped for a signal that does not requeue (TERM)."""
        return self._agreed != _STOP

    # -- main process -------------------------------------------------------------------------
    def requeue(self) -> bool:
        """Main process only: `scontrol requeue` this SLURM job. False when not under SLURM, after a
        stop signal that does not requeue (SIGTERM: scancel, time limit), or if scontrol fails."""
        if not self.should_requeue:
            log.warning("preemption: stopped by a signal that does not requeue (SIG%s); not requeueing",
                        self.signal_name or "TERM")
            return False
        job = slurm_job_id()
        if job is None:
            log.info("preemption: not a SLURM job (no SLURM_JOB_ID), not requeueing")
            return False
        cmd = ["scontrol", "requeue", job]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("preemption: %s failed: %s", " ".join(cmd), e)
            return False
        if proc.returncode != 0:
            log.error("preemption: %s exited %d: %s", " ".join(cmd), proc.returncode,
                      (proc.stderr or proc.stdout).strip())
            return False
        how = f"SIG{self.signal_name}" if self.signal_name else "a signal seen by another rank"
        log.warning("preemption: ran %s after %s; the job will restart and resume", " ".join(cmd), how)
        return True


def _parse_list(signals: Sequence[str] | str) -> tuple[signal.Signals, ...]:
    if isinstance(signals, str):
        signals = [s for s in signals.replace(",", " ").split() if s]
    return tuple(dict.fromkeys(parse_signal(s) for s in signals))


def slurm_job_id() -> str | None:
    """The id to requeue: `ARRAYJOB_TASK` for an array task, else SLURM_JOB_ID; None outside SLURM."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None
