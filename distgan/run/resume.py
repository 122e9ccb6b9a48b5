"""The whole resume policy: which config keys may change when a run resumes, the model's fingerprint, the
config a checkpoint was saved with, and the refusals (another model, every checkpoint damaged)."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import yaml

from distgan.config import Config, config_from_dict, load_yaml_text
from distgan.errors import UserError
from distgan.run.checkpoint import CONFIG_FILE, checkpoint_problem, complete_checkpoints


def model_fingerprint(cfg: Config) -> dict[str, Any]:
    """The parts of a config that must match to resume a run: the models' shapes and the loss."""
    model = cfg.model.to_dict()
    model.pop("sync_batchnorm")  # SyncBatchNorm and BatchNorm have the same weights
    return {"model": model, "loss.kind": cfg.loss.kind}


# Keys that may differ between a run's saved config and the config that resumes it (fnmatch patterns on
# dotted keys). Everything else shapes the trained weights' trajectory, so a difference means "this is
# another experiment" and resume=auto must refuse it (see resume_conflicts). Why each one may change:
RESUMABLE_KEYS: tuple[str, ...] = (
    "train.steps",  # extend (or shorten) a run: the point of resuming
    "train.nan_patience",  # when to give up on non-finite losses; not a training value
    "log.*",  # what, where (log.with) and how often to log; the grid noise only draws pictures
    "checkpoint.*",  # how often to save and how many to keep
    "eval.*",  # evaluation reads G, never changes it (note: FIDs at other n/classifier are not comparable)
    "wandb.*",  # where the metrics go
    "data.dir",  # the same shards may live at another path on another cluster or node
    "data.num_workers",  # the global sample order does not depend on the worker count
    "data.cache_dir",  # where remote shards are cached: the same verified bytes wherever they are
    "run.dir",  # the run may have been moved, or resumed from elsewhere with resume=<path>
    "resume",  # how to find the checkpoint
    "name",  # a label (the config file's stem)
    "dist.timeout_s",  # infrastructure
    "preempt.*",  # infrastructure
    "model.sync_batchnorm",  # same weights; it follows the world size, which may change on requeue
    "train.channels_last",  # memory layout only; a resume gives the optimizer state the new layout
)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resumable(key: str) -> bool:
    """Whether dotted `key` may change when a run resumes (it matches RESUMABLE_KEYS)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


def resume_conflicts(saved: Config, new: Config) -> list[str]:
    """The dotted keys, in config order, whose values differ between `saved` and `new` outside RESUMABLE_KEYS."""
    old, now = _flatten(saved.to_dict()), _flatten(new.to_dict())
    return [key for key in now if old.get(key) != now[key] and not resumable(key)]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value or "''"  # an empty text shown as nothing read as a missing value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def describe_conflicts(where: str | Path, saved: Config, new: Config, limit: int = 6) -> str | None:
    """One line for a refused resume, or None when nothing conflicts:

    `cannot resume runs/x: the config differs in train.lr_d (0.0004 -> 0.0002), loss.kind (hinge -> bce); ...`
    """
    keys = resume_conflicts(saved, new)
    if not keys:
        return None
    old, now = _flatten(saved.to_dict()), _flatten(new.to_dict())
    parts = [f"{k} ({_show(old.get(k))} -> {_show(now[k])})" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return (f"cannot resume {where}: the config differs in {', '.join(parts)}; use a new run.dir, "
            f"or resume=<checkpoint dir> to continue from it with the new values on purpose")


def refuse_all_damaged(path: Path) -> None:
    """UserError if `path` has sealed checkpoints but none is intact: starting from step 0 over them would
    quietly throw a run away, so a fresh start must be asked for."""
    existing = complete_checkpoints(path, warn=False)
    if not existing:
        return
    newest = existing[-1][1]
    problem = checkpoint_problem(newest, warn=False) or "it cannot be verified"
    raise UserError(f"cannot resume {path}: none of its {len(existing)} checkpoint(s) is intact (the newest, "
                    f"{newest.name}: {problem}); to start from step 0 on purpose, use a new run.dir (resume=never "
                    f"makes sure it is new), or delete the damaged checkpoints in {newest.parent}")


def check_same_model(cfg: Config, saved: Config, where: Path) -> None:
    wanted, had = model_fingerprint(cfg), model_fingerprint(saved)
    if had != wanted:
        diffs = [k for k in wanted["model"] if wanted["model"][k] != had["model"].get(k)]
        if wanted["loss.kind"] != had["loss.kind"]:
            diffs.append("loss.kind")
        keys = ", ".join(k if k == "loss.kind" else f"model.{k}" for k in diffs)
        raise UserError(f"cannot resume {where}: it was trained with a different {keys}; "
                        "use a new run.dir (or the original config)")


def saved_config(path: Path) -> Config:
    """The config a checkpoint was trained with (its `model.image_shape` filled in), validated like any config."""
    file = Path(path) / CONFIG_FILE
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from e
    try:
        data = load_yaml_text(text, str(file))  # bounded: a checkpoint's config.yaml is user input too
    except yaml.YAMLError:
        raise UserError(f"{file} is not valid YAML; use an earlier checkpoint") from None
    cfg = config_from_dict(data, source=str(file))
    if cfg.model.image_shape is None:
        raise UserError(f"{file} has no model.image_shape: it was not written by this version of distgan's "
                        f"trainer; use a checkpoint it wrote")
    return cfg
