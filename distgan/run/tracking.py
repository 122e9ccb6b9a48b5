"""Weights & Biases through accelerate's wandb tracker: mode choice, a run id kept in the run directory,
and images logged as uint8 (a float tensor in [0, 1] comes out black in wandb 0.31).

W&B must never stop or stall training. `resolve_mode` refuses `online` without credentials (one line
that says how to log in), before anything starts. `start_tracking` bounds the online `wandb.init` by
WANDB_INIT_TIMEOUT (default 60 s), ends the wait at once on a stop signal (SIGTERM, SIGUSR1, Ctrl-C: the
trainer then saves at its first step boundary), and on either, or any other error, continues with an
offline run in RUN_DIR/wandb, to upload later with `wandb sync`.

TensorBoard (`log.with: [..., tensorboard]`) is a second accelerate tracker writing to RUN_DIR/tensorboard/:
scalars through `accelerator.log`, the sample grid through `log_image`, the config as text. A resumed run
hides the events a dead run logged after the checkpoint it resumes from (SummaryWriter's purge_step).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import netrc
import os
import secrets
import signal
import string
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import yaml
from accelerate.tracking import GeneralTracker, TensorBoardTracker, on_main_process

from distgan.atomic import write_text_atomic
from distgan.errors import UserError
from distgan.run.preemption import PreemptionWatcher, StopRequested, installed_watcher
from distgan.run.tracker_guard import guard_trackers, guarded

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard/: `tensorboard --logdir RUN_DIR` (or runs/ for all)
DEFAULT_INIT_TIMEOUT_S = 60.0  # wandb's own default is 90 s, plus a 10 s grace


def wandb_logged_in() -> bool:
    """True when W&B credentials are configured the ways wandb reads them (WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, or the netrc file at $NETRC or ~/.netrc for the server's host)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.path.expanduser(os.environ.get("NETRC") or "~/.netrc")  # explicit, as wandb reads it
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def init_timeout() -> float:
    """Seconds the online `wandb.init` may wait for the server: WANDB_INIT_TIMEOUT, else 60."""
    text = os.environ.get("WANDB_INIT_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_INIT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"WANDB_INIT_TIMEOUT must be a positive number of seconds, got {text!r}")
    return value


def check_wandb_login(mode: str) -> None:
    """UserError (one line, says how to fix it) when `mode` is online but no W&B credentials are set."""
    if mode == "online" and not wandb_logged_in():
        raise UserError("wandb.mode=online but W&B is not logged in on this machine: run `wandb login` (or set "
                        "WANDB_API_KEY), or train with wandb.mode=offline and `wandb sync` the run later")


def resolve_mode(config_mode: str) -> str:
    """The W&B mode: the config's, unless it is `auto`; then WANDB_MODE, else online iff logged in.

    Checks it can work, before anything starts: UserError for online without credentials, or for a bad
    WANDB_INIT_TIMEOUT.
    """
    mode = _mode(config_mode)
    check_wandb_login(mode)
    if mode == "online":
        init_timeout()
    return mode


def _mode(config_mode: str) -> str:
    if config_mode != "auto":
        return config_mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if wandb_logged_in() else "offline"


def run_id(run_dir: Path) -> str:
    """The run's W&B id, created once and kept in RUN_DIR/wandb_run_id so a resume continues the same run."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    write_text_atomic(path, new_id + "\n")
    return new_id


def start_tracking(accelerator: Any, *, mode: str, project: str, entity: str | None, name: str | None,
                   run_dir: Path, config: dict[str, Any], watcher: PreemptionWatcher | None = None,
                   resume_step: int = 0) -> str:
    """Start the trackers (see `_start_trackers`), each guarded: a tracker that fails later (W&B's service
    killed with the job) is dropped with one warning instead of stopping training. Returns the W&B mode."""
    mode = _start_trackers(accelerator, mode=mode, project=project, entity=entity, name=name, run_dir=run_dir,
                           config=config, watcher=watcher, resume_step=resume_step)
    if accelerator.is_main_process:
        guard_trackers(accelerator, str(run_dir))
    return mode


def _start_trackers(accelerator: Any, *, mode: str, project: str, entity: str | None, name: str | None,
                    run_dir: Path, config: dict[str, Any], watcher: PreemptionWatcher | None,
                    resume_step: int) -> str:
    """Start the accelerator's trackers on the main process (accelerate's trackers log from the main process
    only): wandb unless `mode` is disabled, and TensorBoard in RUN_DIR/tensorboard when `log_with` has it
    (events past `resume_step` from an earlier run are hidden).

    Returns the W&B mode the run got: "disabled" (also on other ranks), "online", or "offline" (asked for,
    or the fallback when the online start failed, timed out, or was cut short by a stop signal of `watcher`,
    by default the installed one).
    """
    if not accelerator.is_main_process:
        return "disabled"
    board = _tensorboard_tracker(accelerator)
    if board is not None:
        board.logging_dir_param = str(run_dir)
        board.init_kwargs = {**board.init_kwargs, "purge_step": resume_step + 1}
        board.start()  # before W&B: its offline fallback below starts the trackers again, this one stays open
    if mode == "disabled":
        if board is not None:  # TensorBoard alone, as init_trackers would add it; never a W&B run
            accelerator.trackers.append(board)
            board.store_init_configuration(config)
        return "disabled"
    init = {"id": run_id(run_dir), "resume": "allow", "dir": str(run_dir), "mode": mode,
            "name": name or run_dir.name, "entity": entity}
    if mode != "online":
        accelerator.init_trackers(project, config=config, init_kwargs={"wandb": init})
        return mode

    import wandb

    timeout = init_timeout()
    # wandb's own error reporting posts to the same server at exit and waits up to 10 s a try when it
    # does not answer; a training job gains nothing from it (set WANDB_ERROR_REPORTING=true to keep it).
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    watcher = watcher or installed_watcher()
    started = len(accelerator.trackers)
    try:
        with watcher.interrupting() if watcher is not None else contextlib.nullcontext():
            accelerator.init_trackers(project, config=config, init_kwargs={
                "wandb": {**init, "settings": wandb.Settings(init_timeout=timeout)}})
        return "online"
    except StopRequested as e:
        why = f"SIG{e.signal_name} asked to stop before the online W&B run had started"
    except Exception as e:  # noqa: BLE001 - any failure to go online falls back to offline, said in one line
        why = f"the online W&B run did not start ({type(e).__name__}: {_one_line(e)}; timeout {timeout:g} s)"
    del accelerator.trackers[started:]  # the failed tracker; init_trackers would start it again
    _end_wandb_service()  # frees the run id held by wandb's service, so the offline run can use it
    accelerator.init_trackers(project, config=config, init_kwargs={"wandb": {**init, "mode": "offline"}})
    log.warning("%s; continuing with W&B offline: upload it later with `wandb sync %s/wandb/offline-run-*`",
                why, run_dir)
    return "offline"


def tracker_list(log_with: Sequence[str], wandb_mode: str) -> list[Any] | None:
    """accelerate's `log_with` for `log.with` and the resolved W&B mode: "wandb" first (the offline fallback
    of `start_tracking` relies on it), then a `RunTensorBoard`; None for neither.

    UserError (one line) when TensorBoard is asked for but not installed: accelerate would drop it silently.
    """
    trackers: list[Any] = []
    if "wandb" in log_with and wandb_mode != "disabled":
        trackers.append("wandb")
    if "tensorboard" in log_with:
        if not is_tensorboard_available():
            raise UserError("log.with has tensorboard but the tensorboard package is not installed: "
                            "pip install 'distgan[tensorboard]' (or pip install tensorboard), or drop it from log.with")
        trackers.append(RunTensorBoard())
    return trackers or None


def is_tensorboard_available() -> bool:
    """Whether a TensorBoard writer can start: torch.utils.tensorboard (needs `tensorboard`) or tensorboardX."""
    for module in ("torch.utils.tensorboard", "tensorboardX"):
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            continue
    return False


class RunTensorBoard(TensorBoardTracker):
    """accelerate's TensorBoard tracker, writing to RUN_DIR/tensorboard: `start_tracking` sets the directory
    once the run directory is known (the accelerator exists before it) and starts it. The config is stored as
    YAML text: TensorBoard's hparams take flat scalars only and add a directory per start."""

    def __init__(self) -> None:
        GeneralTracker.__init__(self)  # not TensorBoardTracker's: before accelerate 1.8 it opened the writer there
        self.run_name = TENSORBOARD_DIR
        self.logging_dir_param = "."
        self.init_kwargs: dict[str, Any] = {}
        self.writer: Any = None

    @on_main_process
    def start(self) -> None:
        """Open the writer in <logging dir>/tensorboard, once (accelerate >= 1.8 calls this again in
        `init_trackers`; older versions never do, so `start_tracking` calls it first)."""
        if self.writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from tensorboardX import SummaryWriter
        self.logging_dir = os.path.join(self.logging_dir_param, self.run_name)
        self.writer = SummaryWriter(self.logging_dir, **self.init_kwargs)

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        text = yaml.safe_dump(values, sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))  # a code block
        self.writer.flush()


def _tensorboard_tracker(accelerator: Any) -> RunTensorBoard | None:
    return next((t for t in getattr(accelerator, "log_with", None) or () if isinstance(t, RunTensorBoard)), None)


def log_image(accelerator: Any, key: str, image: np.ndarray, *, step: int, caption: str) -> None:
    """Log a uint8 image, (H, W) or (H, W, C), to the started trackers: a wandb.Image to W&B (as before), an
    image to TensorBoard. Does nothing without trackers (other ranks, or neither W&B nor TensorBoard)."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.log({key: wandb_image(image, caption)}, step=step)
        elif tracker.name == "tensorboard":
            batch = image[None, None] if image.ndim == 2 else image[None]
            tracker.log_images({key: batch}, step=step, dataformats="NCHW" if image.ndim == 2 else "NHWC")
            if getattr(tracker, "alive", True):
                tracker.tracker.flush()


def describe_wandb_run(accelerator: Any, classifier_sha256: str | None) -> None:
    """Main process: the evaluation classifier's sha256 in the W&B run's summary (other classifiers' scores
    don't compare) and FID summarised as its minimum (the run's, and a W&B sweep's, FID is its best one)."""
    tracker = guarded(accelerator, "wandb")
    if tracker is None or classifier_sha256 is None:
        return

    def describe() -> None:
        run = tracker.tracker
        run.summary["eval/classifier_sha256"] = classifier_sha256
        run.define_metric("eval/fid", summary="min")

    tracker.call("summary", describe)


def _end_wandb_service(wait_s: float = 3.0) -> None:
    """`wandb.teardown()`, bounded. Teardown forgets the service at once (a new `wandb.init` starts a new
    one), then waits for the service process to exit. After a stop signal that process keeps waiting for
    the server until the init timeout, SIGTERM or not, even after this process exits (holding its stdout
    and stderr open, so `distgan train | tee log` would hang): after `wait_s` it is killed. It is our own
    child and holds only the run that failed to start."""
    import wandb

    stale = set(_own_children("wandb-core"))  # before the offline run starts a new service
    teardown = threading.Thread(target=wandb.teardown, name="distgan-wandb-teardown", daemon=True)
    teardown.start()
    teardown.join(wait_s)
    if teardown.is_alive():
        for pid in stale.intersection(_own_children("wandb-core")):
            log.info("wandb's service (pid %d) is still waiting for the server; killing it", pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        teardown.join(wait_s)


def _own_children(name: str) -> list[int]:
    """Pids of this process's children whose command name is `name` (Linux /proc; [] elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
            if comm == name and int(rest[1]) == os.getpid():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def wandb_image(image: np.ndarray, caption: str) -> Any:
    """A wandb.Image from a uint8 array (never a float tensor: those render black in wandb 0.31)."""
    import wandb

    assert image.dtype == np.uint8
    return wandb.Image(image, caption=caption)
