"""Training configuration: typed dataclasses loaded from YAML, with `key.sub=value` overrides.

Unknown keys, wrong types and impossible values raise a one-line UserError that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distgan.errors import UserError


@dataclass
class DataConfig:
    dir: str = "data/mnist"  # output of `distgan prepare` (holds train/, test/, manifest.json)
    num_workers: int = 2


@dataclass
class ModelConfig:
    arch: Literal["mlp", "dcgan"] = "mlp"
    z_dim: int = 100
    g_hidden: list[int] = field(default_factory=lambda: [256, 512, 1024])  # mlp only
    d_hidden: list[int] = field(default_factory=lambda: [1024, 512, 256])  # mlp only
    g_width: int = 64  # dcgan: channels of G's widest conv layer
    d_width: int = 64  # dcgan: channels of D's first conv layer
    spectral_norm: bool = False  # on D's layers
    sync_batchnorm: bool = True  # BatchNorm -> SyncBatchNorm when world size > 1 on GPUs


@dataclass
class LossConfig:
    kind: Literal["bce", "hinge", "wgan-gp"] = "bce"
    gp_weight: float = 10.0  # wgan-gp only


@dataclass
class TrainConfig:
    steps: int = 10000  # total G steps
    batch_size: int = 64  # per process
    d_steps: int = 1  # D steps per G step
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    nan_patience: int = 20  # consecutive non-finite losses before the run stops


@dataclass
class EmaConfig:
    decay: float = 0.999
    start_step: int = 0  # before this step the EMA simply copies G


@dataclass
class LogConfig:
    every: int = 50  # scalar metrics every N steps
    grid_every: int = 500  # sample grid every M steps
    grid_size: int = 8  # grid_size x grid_size samples
    progress: bool = True  # progress bar on the main process


@dataclass
class CheckpointConfig:
    every: int = 1000
    keep: int = 3  # keep the last K checkpoints


@dataclass
class EvalConfig:
    every: int = 0  # 0 = off
    n: int = 5000
    classifier: str | None = None  # default: <data.dir>/classifier.pt


@dataclass
class RunConfig:
    dir: str = "runs/default"


@dataclass
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in
    project: str = "distgan"
    entity: str | None = None
    name: str | None = None


@dataclass
class DistConfig:
    timeout_s: int = 600  # process-group timeout: a dead rank fails the job within this bound


@dataclass
class PreemptConfig:
    signals: list[str] = field(default_factory=lambda: ["USR1", "USR2", "TERM"])  # save a checkpoint and stop
    # ...and requeue the SLURM job on these only: TERM also comes from `scancel`, which must not come back
    requeue_signals: list[str] = field(default_factory=lambda: ["USR1", "USR2"])
    check_every: int = 1  # steps between the all-ranks agreement on a pending signal


@dataclass
class Config:
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    resume: str = "auto"  # auto | never | path to a checkpoint directory
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    preempt: PreemptConfig = field(default_factory=PreemptConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for YAML, W&B and comparisons)."""
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the type hint `tp`; return it (ints widen to floats). Raise UserError if wrong."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool) and not value and "no" in typing.get_args(tp):
            value = "no"  # YAML 1.1 reads a bare `no` as false (mixed_precision=no)
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise UserError(f"config key '{key}': {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from `data`, defaults for missing keys, UserError for unknown ones."""
    if not isinstance(data, dict):
        raise UserError(f"config key '{prefix.rstrip('.')}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            known = ", ".join(sorted(names))
            raise UserError(f"unknown config key '{prefix}{key}' (known keys here: {known})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, f"{prefix}{f.name}")
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    """Reject impossible values, naming the key."""
    positive = {
        "train.steps": cfg.train.steps, "train.batch_size": cfg.train.batch_size,
        "train.d_steps": cfg.train.d_steps, "train.nan_patience": cfg.train.nan_patience,
        "model.z_dim": cfg.model.z_dim, "model.g_width": cfg.model.g_width, "model.d_width": cfg.model.d_width,
        "log.every": cfg.log.every, "log.grid_every": cfg.log.grid_every, "log.grid_size": cfg.log.grid_size,
        "checkpoint.every": cfg.checkpoint.every, "checkpoint.keep": cfg.checkpoint.keep,
        "dist.timeout_s": cfg.dist.timeout_s, "preempt.check_every": cfg.preempt.check_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"config key '{key}': must be at least 1, got {value}")
    for key, value in {"train.lr_g": cfg.train.lr_g, "train.lr_d": cfg.train.lr_d}.items():
        if not value > 0:
            raise UserError(f"config key '{key}': must be positive, got {value}")
    if len(cfg.train.betas) != 2 or not all(0 <= b < 1 for b in cfg.train.betas):
        raise UserError(f"config key 'train.betas': expected two numbers in [0, 1), got {cfg.train.betas}")
    if not 0 <= cfg.ema.decay < 1:
        raise UserError(f"config key 'ema.decay': must be in [0, 1), got {cfg.ema.decay}")
    for key, value in {"ema.start_step": cfg.ema.start_step, "eval.every": cfg.eval.every,
                       "data.num_workers": cfg.data.num_workers, "seed": cfg.seed}.items():
        if value < 0:
            raise UserError(f"config key '{key}': must be 0 or more, got {value}")
    if cfg.eval.every and cfg.eval.n < 10:
        raise UserError(f"config key 'eval.n': at least 10 samples are needed, got {cfg.eval.n}")
    if cfg.loss.gp_weight < 0:
        raise UserError(f"config key 'loss.gp_weight': must be 0 or more, got {cfg.loss.gp_weight}")
    if cfg.model.arch == "mlp" and (not cfg.model.g_hidden or not cfg.model.d_hidden
                                    or min(cfg.model.g_hidden + cfg.model.d_hidden) < 1):
        raise UserError("config keys 'model.g_hidden'/'model.d_hidden': need at least one positive width")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` (value in YAML syntax) into (["a","b","c"], value)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a YAML config file (or the defaults when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} not found (see configs/ for examples)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"config file {path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path}: the top level must be a mapping of keys")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise UserError(f"override '{text}': '{k}' is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    cfg = _build(Config, data, "")
    _validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. a checkpoint's saved config)."""
    cfg = _build(Config, data, "")
    _validate(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def model_fingerprint(cfg: Config) -> dict[str, Any]:
    """The parts of a config that must match to resume a run: the models' shapes and the loss."""
    model = dataclasses.asdict(cfg.model)
    model.pop("sync_batchnorm")  # SyncBatchNorm and BatchNorm have the same weights
    return {"model": model, "loss.kind": cfg.loss.kind}
