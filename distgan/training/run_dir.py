"""The run directory: resume decisions, the saved config, per-rank reports, and cross-rank checks."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch
import yaml

from distgan.atomic import write_json_atomic, write_text_atomic
from distgan.collectives import sync_buffers
from distgan.config import Config, config_from_dict, dump_config, model_fingerprint
from distgan.errors import UserError
from distgan.hashing import state_dict_sha256
from distgan.training.checkpoint import latest_checkpoint, read_checkpoint_config, resolve_checkpoint


class DivergedError(UserError):
    """Training produced NaN/inf for longer than the configured patience."""


class RunDir:
    """RUN_DIR: config.yaml, checkpoints/, samples/, ranks/, wandb/ and the W&B run id."""

    def __init__(self, path: Path, accelerator: Any) -> None:
        self.path = path
        self.acc = accelerator
        self.rank = accelerator.process_index
        if accelerator.is_main_process:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"run.dir {path}: cannot create it ({e.strerror})") from None
        accelerator.wait_for_everyone()

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
                  "device": str(self.acc.device), "backend": backend,
                  "g_sha256": state_dict_sha256(g), "d_sha256": state_dict_sha256(d), "hostname": socket.gethostname()}
        write_json_atomic(self.path / "ranks" / f"rank_{self.acc.process_index}.json", report)


def _check_same_model(cfg: Config, saved_yaml: str, where: Path) -> None:
    saved = model_fingerprint(config_from_dict(yaml.safe_load(saved_yaml)))
    wanted = model_fingerprint(cfg)
    if saved != wanted:
        diffs = [k for k in wanted["model"] if wanted["model"][k] != saved["model"].get(k)]
        if wanted["loss.kind"] != saved["loss.kind"]:
            diffs.append("loss.kind")
        keys = ", ".join(k if k == "loss.kind" else f"model.{k}" for k in diffs)
        raise UserError(f"cannot resume {where}: it was trained with a different {keys}; "
                        "use a new run.dir (or the original config)")


def resolve_resume(cfg: Config, run: RunDir) -> Path | None:
    """The checkpoint to resume from (`resume`: auto | never | a checkpoint path), checked against cfg."""
    if cfg.resume == "never":
        existing = latest_checkpoint(run.path, warn=False)
        if existing is not None:
            raise UserError(f"resume=never but {run.path} already has checkpoints ({existing.name}); "
                            "use another run.dir, or resume=auto")
        return None
    if cfg.resume == "auto":
        ckpt = latest_checkpoint(run.path, warn=run.acc.is_main_process)
        if ckpt is None:
            return None
    else:
        ckpt = resolve_checkpoint(cfg.resume)
    _check_same_model(cfg, read_checkpoint_config(ckpt), ckpt)
    return ckpt
