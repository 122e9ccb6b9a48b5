"""Checkpoints: `accelerator.save_state` plus distgan's own state, written atomically with a marker.

Layout of `RUN_DIR/checkpoints/step_0001000/`:
- accelerate's files: both models, both optimizers, and every process's RNG states;
- `ema_generator.safetensors`: the EMA of G;
- `trainer_state.json`: step, epoch, data position (`start_sample`), best FID, fp16 loss scalers;
- `config.yaml`: the resolved config the run was trained with;
- `COMPLETE`: written last; a directory without it is ignored on resume.
The directory is filled under a temporary name and renamed into place, so a crash never leaves a
checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from distgan.atomic import write_json_atomic, write_text_atomic
from distgan.errors import UserError

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step_(\d+)$")
EMA_FILE = "ema_generator.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
BEST = "best"


@dataclass
class TrainState:
    """Where training stands: G steps done, epoch, samples of this epoch consumed globally, best FID."""

    step: int = 0
    epoch: int = 0
    start_sample: int = 0
    best_fid: float | None = None


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def complete_checkpoints(run_dir: str | Path, warn: bool = True) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. Incomplete ones (no marker) are skipped with a warning."""
    root = checkpoints_dir(run_dir)
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            m = STEP_DIR.match(entry.name)
            if not m or not entry.is_dir():
                continue
            if (entry / MARKER).is_file():
                found.append((int(m.group(1)), entry))
            elif warn:
                log.warning("ignoring incomplete checkpoint %s (no %s marker)", entry, MARKER)
    return sorted(found)


def latest_checkpoint(run_dir: str | Path, warn: bool = True) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = complete_checkpoints(run_dir, warn)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (then its latest complete checkpoint)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    if path.is_dir() and (path / STATE_FILE).is_file():
        raise UserError(f"checkpoint {path} is incomplete (no {MARKER} marker); use an earlier one")
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise UserError(f"{path} is neither a complete checkpoint nor a run directory with one "
                        "(expected RUN_DIR/checkpoints/step_*/COMPLETE)")
    return latest


def save_checkpoint(accelerator: Any, run_dir: Path, *, state: TrainState, ema: Any, precision: Any,
                    config_yaml: str, keep: int, name: str | None = None) -> Path:
    """Collective: every rank calls it. Save everything for an exact resume into `checkpoints/<name>`."""
    root = checkpoints_dir(run_dir)
    name = name or step_dir_name(state.step)
    final = root / name
    tmp = root / f".tmp_{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # models and optimizers from the main process, RNG from every rank
    accelerator.wait_for_everyone()  # every rank's files are in tmp before the main process renames it
    if accelerator.is_main_process:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}, str(tmp / EMA_FILE))
        extra = {"state": asdict(state), "scalers": precision.state_dict(),
                 "world_size": accelerator.num_processes}
        write_json_atomic(tmp / STATE_FILE, extra)
        write_text_atomic(tmp / CONFIG_FILE, config_yaml)
        write_text_atomic(tmp / MARKER, f"{state.step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if name != BEST:
            prune_checkpoints(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete step checkpoints (never `best`)."""
    for _, path in complete_checkpoints(run_dir, warn=False)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(accelerator: Any, path: Path, *, ema: Any, precision: Any) -> TrainState:
    """Collective: restore models, optimizers, RNG states, EMA and scalers; return the training state."""
    # accelerate loads its own files (models, optimizers, RNG states); distgan's files are safetensors and JSON.
    accelerator.load_state(str(path))
    ema.load_state_dict(load_file(str(path / EMA_FILE)))  # copied onto the EMA's device
    extra = json.loads((path / STATE_FILE).read_text())
    precision.load_state_dict(extra.get("scalers", {}))
    return TrainState(**extra["state"])


def read_checkpoint_config(path: Path) -> str:
    """The config YAML saved inside a checkpoint."""
    return (path / CONFIG_FILE).read_text()
