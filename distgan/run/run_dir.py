"""The run directory: its lock, the saved config, where to resume from, and per-rank reports."""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import torch

from distgan.atomic import write_json_atomic, write_text_atomic
from distgan.collectives import on_main, sync_buffers
from distgan.config import AUTO_RUN_DIR, Config, dump_config
from distgan.errors import UserError
from distgan.hashing import state_dict_sha256
from distgan.locks import DirLock
from distgan.run.checkpoint import complete_checkpoints, latest_checkpoint, resolve_checkpoint
from distgan.run.preemption import slurm_job_id
from distgan.run.resume import check_same_model, describe_conflicts, refuse_all_damaged, saved_config


class RunDir:
    """RUN_DIR: config.yaml, checkpoints/, samples/, ranks/, wandb/ and the W&B run id.

    The main process holds an exclusive lock on it (RUN_DIR/.lock) from here until `close()` or its exit,
    so a second run on the same directory stops at once instead of overwriting this one's checkpoints.
    """

    def __init__(self, path: Path, accelerator: Any) -> None:
        self.path = path
        self.acc = accelerator
        self.rank = accelerator.process_index
        self._lock = DirLock(path, f"run.dir {path}")

        def create_and_lock() -> None:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"run.dir {path}: cannot create it ({e.strerror})") from None
            self._lock.acquire()

        on_main(accelerator, create_and_lock)

    def close(self) -> None:
        """Release the lock (the process's exit does it too)."""
        self._lock.release()

    def resume_point(self, cfg: Config) -> Path | None:
        """The checkpoint to resume from (`resume`: auto | never | a checkpoint path), checked against cfg."""
        if cfg.resume == "never":
            existing = complete_checkpoints(self.path, warn=False)  # damaged ones count too: never is never
            if existing:
                raise UserError(f"resume=never but {self.path} already has checkpoints ({existing[-1][1].name}); "
                                "use another run.dir, or resume=auto")
            return None
        if cfg.resume == "auto":
            ckpt = latest_checkpoint(self.path, warn=self.acc.is_main_process)
            if ckpt is None:
                refuse_all_damaged(self.path)
                return None
            # An automatic resume must continue the same experiment: a new run with other hyperparameters
            # on an old run.dir would otherwise silently pick up its checkpoint (and may stop at once).
            problem = describe_conflicts(self.path, saved_config(ckpt), cfg)
            if problem:
                raise UserError(problem)
        else:  # an explicit checkpoint: only the networks and the loss must match; new values are on purpose
            ckpt = resolve_checkpoint(cfg.resume)
            check_same_model(cfg, saved_config(ckpt), ckpt)
        return ckpt

    def write_config(self, cfg: Config) -> None:
        """The resolved config, next to the checkpoints."""
        if self.acc.is_main_process:
            write_text_atomic(self.path / "config.yaml", dump_config(cfg))

    def write_rank_report(self, step: int, *models: torch.nn.Module) -> None:
        """Every rank: RUN_DIR/ranks/rank_<R>.json with its world size and a hash of G's and D's weights."""
        sync_buffers(self.acc, models)
        g, d = (self.acc.unwrap_model(m) for m in models)
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        report = {"rank": self.acc.process_index, "world_size": self.acc.num_processes, "step": step,
                  "device": str(self.acc.device), "backend": backend, "hostname": socket.gethostname(),
                  "slurm_node": os.environ.get("SLURMD_NODENAME"),  # several SLURM nodes may share a host
                  "g_sha256": state_dict_sha256(g), "d_sha256": state_dict_sha256(d)}
        write_json_atomic(self.path / "ranks" / f"rank_{self.acc.process_index}.json", report)


def resolve_run_path(cfg: Config, accelerator: Any) -> Path:
    """`run.dir`, with `auto` made `runs/<config name>-<SLURM job id, else a timestamp>` (the same on every
    rank: the main process picks it; a requeued SLURM job keeps its id, so it finds its directory again).
    Outside SLURM the directory is created here, so runs started in the same second get distinct ones."""
    if cfg.run.dir != AUTO_RUN_DIR:
        return Path(cfg.run.dir)
    name, job_id = cfg.name or "run", slurm_job_id()
    if job_id:
        return Path(on_main(accelerator, lambda: auto_run_dir(name, job_id, "")))
    return Path(on_main(accelerator, lambda: _claim_new_run_dir(name)))


def _claim_new_run_dir(name: str) -> str:
    """`runs/<name>-<timestamp>`, or `...-2`, `-3`... if taken: claimed by an exclusive mkdir (atomic, so two
    runs started in the same second, even on two hosts sharing the file system, never get the same one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = Path(auto_run_dir(name, None, stamp if n == 1 else f"{stamp}-{n}"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
            except FileExistsError:
                continue
        except OSError as e:
            raise UserError(f"run.dir=auto: cannot create {path} ({e.strerror}); run from a writable "
                            "directory or set run.dir") from None
        return str(path)
    raise AssertionError("unreachable")


def auto_run_dir(config_path_stem: str, job_id: str | None, timestamp: str) -> str:
    """`run.dir: auto` -> `runs/<config name>-<SLURM job id, else timestamp>`.

    Pass the SLURM job id (`SLURM_JOB_ID`, or `<array job id>_<task id>`) so that a requeued job, which keeps
    its id, finds and resumes its own directory; outside SLURM the timestamp makes each run new.
    """
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"

    return f"runs/{clean(config_path_stem)}-{clean(job_id if job_id else timestamp)}"
