"""Trackers that can die without taking training with them.

W&B runs a separate service process (`wandb-core`). SLURM's stop signals (`scancel`, `scontrol requeue`,
the time limit, preemption) reach every process of the job step, that service included, so it may be gone
while the trainer still has a checkpoint to save: every later `wandb.log`, `config.update`, `summary` or
`finish` then raises (`ConnectionResetError: Connection lost`, `BrokenPipeError`). An OOM kill or a crash
of the service does the same.

`guard_trackers` wraps each of the accelerator's started trackers in a `GuardedTracker`: the first failure
is one warning line, the tracker is dropped for the rest of the run (later calls do nothing), and training,
checkpoints and RUN_DIR/metrics.jsonl go on. For W&B, the dead service connection is also torn down, so
that wandb's exit hook does not print a traceback when the process ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from accelerate.tracking import GeneralTracker

log = logging.getLogger(__name__)

T = TypeVar("T")


class GuardedTracker(GeneralTracker):
    """An accelerate tracker whose exceptions stop it, never the caller (see the module docstring)."""

    def __init__(self, inner: GeneralTracker, run_dir: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.requires_logging_directory = inner.requires_logging_directory
        self.run_dir = run_dir
        self.failure: str | None = None  # why it stopped, once it has
        super().__init__()

    @property
    def tracker(self) -> Any:
        """The wrapped tracker's own object (the wandb run, the SummaryWriter), as accelerate's `get_tracker`."""
        return self.inner.tracker

    @property
    def alive(self) -> bool:
        return self.failure is None

    def call(self, what: str, fn: Callable[[], T]) -> T | None:
        """`fn()`, unless this tracker has failed; a failure (any Exception) is logged once and stops it.
        BaseExceptions (KeyboardInterrupt, the watcher's StopRequested) pass through."""
        if self.failure is not None:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            self._fail(what, e)
            return None

    def _fail(self, what: str, error: Exception) -> None:
        detail = " ".join(str(error).split())[:200]
        self.failure = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        if self.name == "wandb":
            log.warning("W&B stopped working (%s, in %s; its service process may have been killed with the job): "
                        "training goes on without it. Every value is still written to %s/metrics.jsonl, and "
                        "`wandb sync %s/wandb/offline-run-*` uploads what W&B recorded",
                        self.failure, what, self.run_dir, self.run_dir)
            _forget_wandb_service()
        else:
            log.warning("the %s tracker stopped working (%s, in %s): training goes on without it; every value "
                        "is still written to %s/metrics.jsonl", self.name, self.failure, what, self.run_dir)

    # accelerate's tracker interface, each call guarded
    def start(self) -> None:
        self.call("start", self.inner.start)

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self.call("store_init_configuration", lambda: self.inner.store_init_configuration(values))

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self.call("log", lambda: self.inner.log(values, step=step, **kwargs))

    def log_images(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self.call("log_images", lambda: self.inner.log_images(values, step=step, **kwargs))

    def finish(self) -> None:
        self.call("finish", self.inner.finish)


def _forget_wandb_service() -> None:
    """Drop wandb's connection to its dead service: without this, wandb's exit hook tries to tear it down
    and prints a ConnectionResetError traceback at exit. The teardown itself raises on the dead socket."""
    with contextlib.suppress(Exception):
        import wandb

        wandb.teardown()


def guard_trackers(accelerator: Any, run_dir: str) -> None:
    """Wrap every started tracker of `accelerator` (main process) in a GuardedTracker, in place."""
    accelerator.trackers[:] = [t if isinstance(t, GuardedTracker) else GuardedTracker(t, run_dir)
                               for t in accelerator.trackers]


def guarded(accelerator: Any, name: str) -> GuardedTracker | None:
    """The accelerator's guarded tracker called `name`, if it was started and is still alive."""
    for tracker in getattr(accelerator, "trackers", ()):
        if isinstance(tracker, GuardedTracker) and tracker.name == name and tracker.alive:
            return tracker
    return None
