"""Preemption: a signal sets a flag; all ranks agree on it at a step boundary; the main process requeues.

Signal handlers only set a flag (checkpointing inside a handler can hang). The trainer calls
`requested(accelerator)` on every rank at the same step boundary; it all-reduces the flag (MAX), so
a signal seen by any rank stops all of them at the same step. Then every rank saves, and the main
process calls `requeue()` (`scontrol requeue $SLURM_JOB_ID`) before all exit 0.

Under `accelerate launch` (torchrun) the launcher must not die of SIGUSR1/2: launch/slurm/train.sbatch
runs it with those signals ignored, and SLURM delivers the signal to every process of the step.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from distgan.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[str, ...] = ("USR1", "USR2", "TERM")
# Signals a job may sensibly be warned with; KILL and STOP cannot be caught.
ALLOWED_SIGNALS: tuple[str, ...] = ("USR1", "USR2", "TERM", "INT", "HUP", "QUIT", "CONT", "URG", "XCPU")


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

    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS) -> None:
        if isinstance(signals, str):
            signals = [s for s in signals.replace(",", " ").split() if s]
        self.signals: tuple[signal.Signals, ...] = tuple(dict.fromkeys(parse_signal(s) for s in signals))
        self._flag = False
        self._signal: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    # -- local side ---------------------------------------------------------------------------
    def install(self) -> None:
        """Install the handlers (main thread only). Overrides an inherited SIG_IGN."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionWatcher.install() must be called from the main thread")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers that were there before `install()`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        # Only set a flag: no I/O, no locks, no collectives in a signal handler.
        if not self._flag:
            self._signal = signal.Signals(signum)
        self._flag = True

    @property
    def local_flag(self) -> bool:
        """Whether this process received one of the signals."""
        return self._flag

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal received here, without the SIG prefix (e.g. "USR1"), or None."""
        return self._signal.name.removeprefix("SIG") if self._signal is not None else None

    # -- collective side ----------------------------------------------------------------------
    def requested(self, accelerator: Any) -> bool:
        """Collective: True on every rank if any rank saw a signal. Call on all ranks at one step."""
        if int(getattr(accelerator, "num_processes", 1)) <= 1:
            return self._flag
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if self._flag else 0], dtype=torch.int32, device=accelerator.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = bool(flag.item())
        if agreed and not self._flag:
            log.info("preemption requested by another rank")
        return agreed

    # -- main process -------------------------------------------------------------------------
    def requeue(self) -> bool:
        """Main process only: `scontrol requeue` this SLURM job. False when not under SLURM or on failure."""
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


def slurm_job_id() -> str | None:
    """The id to requeue: `ARRAYJOB_TASK` for an array task, else SLURM_JOB_ID; None outside SLURM."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None
