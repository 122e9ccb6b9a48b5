"""Training configuration: pydantic models loaded from YAML, with `key.sub=value` overrides.

Every field carries its type, default and bounds in one place (`Field(ge=..., le=...)`, `Literal`),
so the same checks run for a YAML file, command-line overrides and a checkpoint's saved config.
Unknown keys, wrong types and impossible values raise a one-line UserError that names the dotted key.

Why pydantic v2: it is already installed (wandb depends on it), it replaces the hand-written type
coercion, section builder and table of key-string checks with declarations, and its structured errors
(`type`, `loc`, `ctx`) let `_one_line` below phrase every failure as `config key 'a.b': ...`.
OmegaConf structured configs check types but have no ranges, so a checker table would stay; keeping
dataclasses with per-field metadata would keep the coercion code too. The few YAML 1.1 quirks
(`no` read as false, `1e-4` read as a string) and "an int is not a bool or 2.5" are small annotated
types and validators (`StrictInt`, `Real`, `_no_is_no`).

Bounds are generous for real runs and reject what would crash or allocate absurdly (a checkpoint's
config saying `g_hidden: [3000000000]` must not reach `torch.empty`).
"""

from __future__ import annotations

import copy
import difflib
import errno
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from distgan.errors import UserError

MAX_STEPS = 10**9  # any step count or cadence
MAX_WIDTH = 16384  # an MLP layer: 16384 x 16384 fp32 weights are 1 GiB
MAX_CONV_WIDTH = 1024  # a DCGAN width w: G projects z to 98*w features, its ConvTranspose has 32*w^2 weights
DAY_S = 24 * 3600
MAX_CLUSTERS = 1000  # model.clusters: the exact matching is O(K^3) in Python (1,000: up to 2 minutes a clustering)


def _number(value: Any) -> Any:
    """Float fields: ints widen, `1e-4` (a string in YAML 1.1) parses; bools are not numbers."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    return value


def _conditional(value: Any) -> Any:
    """model.conditional: true, false or clusters (nothing else)."""
    if isinstance(value, bool) or value == "clusters":
        return value
    raise ValueError("expected true, false or clusters")


def _no_is_no(value: Any) -> Any:
    """YAML 1.1 reads a bare `no` as false: `mixed_precision: no` means "no"."""
    return "no" if value is False else value


Real = Annotated[float, BeforeValidator(_number)]  # finite: the models forbid inf/nan (allow_inf_nan=False)
Width = Annotated[StrictInt, Field(ge=1, le=MAX_WIDTH)]
Beta = Annotated[Real, Field(ge=0, lt=1)]
Text = Annotated[str, Field(min_length=1)]  # a path or a name: not empty


class Section(BaseModel):
    """A config section: unknown keys, wrong types, inf/nan and out-of-range values are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True,
                              validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for YAML, W&B and comparisons)."""
        return self.model_dump()


class DataConfig(Section):
    dir: Text = "data/mnist"  # output of `distgan prepare` (holds train/, test/, manifest.json)
    num_workers: StrictInt = Field(2, ge=0, le=64)  # loader processes per rank
    # where the shards of a URL data.dir (http(s)://, file://, s3://, gs://, pipe:) are downloaded to;
    # null: ~/.cache/distgan/<manifest sha256>. Unused for a local data.dir.
    cache_dir: Text | None = None


class ModelConfig(Section):
    # mlp: any image shape; dcgan: 28x28, or 16 to 128 px powers of two; 1 or 3 channels
    arch: Literal["mlp", "dcgan"] = "mlp"
    z_dim: StrictInt = Field(100, ge=1, le=4096)  # size of G's noise input
    g_hidden: list[Width] = Field([256, 512, 1024], min_length=1, max_length=8)  # mlp only: <= 8 layers
    d_hidden: list[Width] = Field([1024, 512, 256], min_length=1, max_length=8)  # mlp only
    g_width: StrictInt = Field(64, ge=1, le=MAX_CONV_WIDTH)  # dcgan: channels of G's widest conv layer / 2
    d_width: StrictInt = Field(64, ge=1, le=MAX_CONV_WIDTH)  # dcgan: channels of D's first conv layer
    spectral_norm: StrictBool = False  # on D's layers
    # Class-conditional G (class embedding + conditional BatchNorm) and projection D. true: on the data's labels
    # (needs labelled data); clusters: on pseudo-labels, k-means clusters of D's features of training images
    # (self-conditioned GAN, Liu et al. 2020; distgan.training.selfcond), which needs no labels.
    conditional: Annotated[StrictBool | Literal["clusters"], BeforeValidator(_conditional)] = False
    clusters: StrictInt | None = Field(None, ge=2, le=MAX_CLUSTERS)  # conditional=clusters: K, the number of clusters
    # conditional=clusters: steps between clusterings, each with a snapshot of the current D
    recluster_every: StrictInt = Field(2000, ge=1, le=MAX_STEPS)
    # conditional=clusters: how many training images are clustered (kept in memory by the main process)
    cluster_images: StrictInt = Field(10000, ge=2, le=1_000_000)
    # K, for conditional models; null: the trainer takes it from the data's manifest (like image_shape).
    # At most 65,536: distgan.data.shards.MAX_CLASSES (uint16 labels).
    num_classes: StrictInt | None = Field(None, ge=2, le=65536)
    sync_batchnorm: StrictBool = True  # BatchNorm -> SyncBatchNorm when world size > 1 on GPUs
    # (C, H, W) of the images; null: the trainer takes it from the data's manifest and saves it with the run,
    # so a checkpoint alone can rebuild G. Set, it must agree with the data.
    image_shape: list[Annotated[StrictInt, Field(ge=1, le=4096)]] | None = Field(None, min_length=3, max_length=3)

    @model_validator(mode="after")
    def _clusters_fit(self) -> ModelConfig:
        if self.conditional == "clusters":
            if self.clusters is None:
                raise ValueError("model.conditional=clusters needs model.clusters: K, the number of clusters (2 or "
                                 "more)")
            if self.num_classes is not None and self.num_classes != self.clusters:
                raise ValueError(f"model.num_classes {self.num_classes} differs from model.clusters {self.clusters}; "
                                 f"remove model.num_classes (it is model.clusters)")
            if self.cluster_images < self.clusters:
                raise ValueError(f"model.cluster_images {self.cluster_images} is fewer than model.clusters "
                                 f"{self.clusters}; cluster at least K images")
        elif self.clusters is not None:
            raise ValueError("model.clusters is set but model.conditional is not clusters; set "
                             "model.conditional=clusters or remove model.clusters")
        return self


class LossConfig(Section):
    # bce: non-saturating, from logits; rpgan: relativistic pairing (R3GAN, Huang et al. 2025), used with
    # r1_gamma and r2_gamma
    kind: Literal["bce", "hinge", "wgan-gp", "rpgan"] = "bce"
    gp_weight: Real = Field(10.0, ge=0, le=1000)  # wgan-gp only; the usual value is 10
    # R1 penalty (gamma / 2) E||grad_x D(x_real)||^2 on real images; 0 = off. Any loss; usual with hinge/bce.
    r1_gamma: Real = Field(0.0, ge=0, le=10000)
    # R2: the same penalty on fake images, (r2_gamma / 2) E||grad_x D(G(z))||^2; 0 = off. R3GAN: r2_gamma = r1_gamma.
    r2_gamma: Real = Field(0.0, ge=0, le=10000)
    r1_every: StrictInt = Field(16, ge=1, le=1000)  # lazy R1 (and R2): every k D steps, weighted by k (StyleGAN2)


AUGMENT_POLICIES = ("color", "translation", "cutout")


class AugmentConfig(Section):
    """Differentiable augmentation (DiffAugment) of every image D sees; distgan.training.augment."""

    policy: str = ""  # comma-separated subset of color, translation, cutout; "" = off
    translation_ratio: Real = Field(0.125, gt=0, le=0.5)  # largest shift, as a fraction of the image size
    cutout_ratio: Real = Field(0.5, gt=0, le=1)  # side of the cut-out square, as a fraction of the size

    @field_validator("policy")
    @classmethod
    def _known_policies(cls, value: str) -> str:
        names = [p.strip() for p in value.split(",") if p.strip()]
        unknown = [p for p in names if p not in AUGMENT_POLICIES]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}; use a comma-separated subset of "
                             f"{', '.join(AUGMENT_POLICIES)} (or \"\" for none)")
        return ",".join(dict.fromkeys(names))

    def policy_list(self) -> list[str]:
        """The policy's names, e.g. ["translation", "cutout"]."""
        return [p for p in self.policy.split(",") if p]


class TrainConfig(Section):
    steps: StrictInt = Field(10000, ge=1, le=MAX_STEPS)  # total G steps
    batch_size: StrictInt = Field(64, ge=1, le=65536)  # per process
    d_steps: StrictInt = Field(1, ge=1, le=100)  # D steps per G step
    lr_g: Real = Field(2e-4, gt=0, le=1)  # Adam: anything above 1 only diverges
    lr_d: Real = Field(2e-4, gt=0, le=1)  # D's learning rate (lr_d > lr_g: TTUR)
    betas: list[Beta] = Field([0.5, 0.999], min_length=2, max_length=2)  # Adam's (beta1, beta2), each in [0, 1)
    nan_patience: StrictInt = Field(20, ge=1, le=MAX_STEPS)  # consecutive non-finite losses before the run stops
    # G, D and the EMA of G in channels-last memory format (the convolutions' fast layout on CPUs and GPUs);
    # the weights, and so checkpoints, samples and exports, are the same numbers either way
    channels_last: StrictBool = True


class EmaConfig(Section):
    decay: Real = Field(0.999, ge=0, lt=1)  # EMA of G's weights, used for grids, sample, eval and export
    start_step: StrictInt = Field(0, ge=0, le=MAX_STEPS)  # before this step the EMA simply copies G


class LogConfig(Section):
    every: StrictInt = Field(50, ge=1, le=MAX_STEPS)  # scalar metrics every N steps
    grid_every: StrictInt = Field(500, ge=1, le=MAX_STEPS)  # sample grid every M steps
    grid_size: StrictInt = Field(8, ge=1, le=32)  # grid_size x grid_size samples (32: a 896 px square image)
    progress: StrictBool = True  # progress bar on the main process
    # Trackers besides RUN_DIR/metrics.jsonl (always written): wandb, tensorboard (RUN_DIR/tensorboard/), both,
    # or none ([]). wandb.mode=disabled still turns W&B off. The YAML key is `with` (a Python keyword).
    with_: list[Literal["wandb", "tensorboard"]] = Field(["wandb"], alias="with")

    @field_validator("with_", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # log.with=tensorboard means [tensorboard]

    @field_validator("with_")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # [wandb, wandb] means [wandb]

    @model_serializer(mode="wrap")
    def _dump_with(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        data["with"] = data.pop("with_")  # dumped (config.yaml, checkpoints, W&B) under its YAML name
        return data


class CheckpointConfig(Section):
    every: StrictInt = Field(1000, ge=1, le=MAX_STEPS)  # save every N steps (and at the end)
    keep: StrictInt = Field(3, ge=1, le=1000)  # keep the last K checkpoints


class EvalConfig(Section):
    every: StrictInt = Field(0, ge=0, le=MAX_STEPS)  # 0 = off
    n: StrictInt = Field(5000, ge=10, le=1_000_000)  # generated samples per evaluation (FID needs >= 10)
    classifier: Text | None = None  # default: <data.dir>/classifier.pt


AUTO_RUN_DIR = "auto"  # run.dir: auto -> runs/<config name>-<SLURM job id or timestamp>, see auto_run_dir()


class RunConfig(Section):
    dir: Text = "runs/default"  # or `auto`: the trainer picks auto_run_dir(...)


class WandbConfig(Section):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in
    project: Text = "distgan"  # W&B project
    entity: str | None = None  # W&B entity (team or user); null: your default
    name: str | None = None  # W&B run name; null: W&B picks one


class DistConfig(Section):
    timeout_s: StrictInt = Field(600, ge=1, le=7 * DAY_S)  # process-group timeout: a dead rank fails the job


class PreemptConfig(Section):
    # names or numbers, checked by distgan.run.preemption.parse_signal
    signals: list[str] = ["USR1", "USR2", "TERM"]  # save a checkpoint and stop
    # ...and requeue the SLURM job on these only: TERM also comes from `scancel`, which must not come back
    requeue_signals: list[str] = ["USR1", "USR2"]
    check_every: StrictInt = Field(1, ge=1, le=MAX_STEPS)  # steps between the all-ranks agreement on a signal


class Config(Section):
    # seed: accelerate's set_seed also seeds numpy's legacy RNG, which takes 0 .. 2**32-1 only
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1)
    # bf16: accelerate's autocast; fp16: with loss scaling, one GradScaler per optimizer
    mixed_precision: Annotated[Literal["no", "bf16", "fp16"], BeforeValidator(_no_is_no)] = "no"
    resume: Text = "auto"  # auto | never | path to a checkpoint directory
    # A label, not a hyperparameter: load_config sets it to the config file's stem unless the YAML sets it;
    # run.dir=auto uses it. None for the built-in defaults. (pydantic's Rust regex: `$` is the end of the text,
    # so "name\n" is refused; tests/test_config.py::test_name_pattern_is_exact.)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)] | None = None
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    ema: EmaConfig = EmaConfig()
    log: LogConfig = LogConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    wandb: WandbConfig = WandbConfig()
    dist: DistConfig = DistConfig()
    preempt: PreemptConfig = PreemptConfig()


# --- one-line errors ------------------------------------------------------------------------------------

_REASONS = {
    "int_type": "expected an integer", "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected true or false", "string_type": "expected a string", "list_type": "expected a list",
    "finite_number": "must be a finite number", "model_type": "expected a mapping of keys",
    "string_pattern_mismatch": "has characters that are not allowed",
}
_BOUNDS = {  # error type -> (ctx key, phrase)
    "greater_than_equal": ("ge", "must be at least {}"), "greater_than": ("gt", "must be greater than {}"),
    "less_than_equal": ("le", "must be at most {}"), "less_than": ("lt", "must be less than {}"),
    "too_short": ("min_length", "needs {} or more items"), "too_long": ("max_length", "takes at most {} items"),
    "string_too_short": ("min_length", "must not be empty"),
    "string_too_long": ("max_length", "takes at most {} characters"),
}


def _dotted(loc: tuple[Any, ...]) -> str:
    """('model', 'g_hidden', 0) -> 'model.g_hidden[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """The keys of the section that holds loc[-1]."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return [field.alias or name for name, field in model.model_fields.items()]  # log.with, not log.with_


def _one_line(err: dict[str, Any]) -> str:
    """One pydantic error as `config key 'a.b': reason, got value`."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    key = _dotted(loc)
    if kind == "extra_forbidden":
        known = sorted(_section_fields(loc))
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{_dotted((*loc[:-1], close[0]))}'?" if close else ""
        return f"unknown config key {key!r} (known keys here: {', '.join(known)}){hint}"
    if kind == "literal_error":
        reason = f"expected one of {ctx['expected']}"
    elif kind in _BOUNDS:
        name, phrase = _BOUNDS[kind]
        bound = ctx[name]
        reason = phrase.format(int(bound) if isinstance(bound, float) and bound.is_integer() else bound)
    elif kind == "value_error":
        reason = str(ctx.get("error", err["msg"]))
    else:
        reason = _REASONS.get(kind, err["msg"][:1].lower() + err["msg"][1:])
    if kind == "value_error" and isinstance(err["input"], dict):
        return f"config key {key!r}: {reason}"  # a check across a section's keys, whose message names them
    got = repr(err["input"])
    return f"config key {key!r}: {reason}, got {got if len(got) <= 60 else got[:57] + '...'}"


def _validated(data: Any, source: str | None = None) -> Config:
    """Config from nested plain data, or a one-line UserError naming the first bad key (typos first)."""
    prefix = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise UserError(f"{prefix}the top level must be a mapping of keys, got {data!r}"[:200])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
        raise UserError(prefix + _one_line(errors[0])) from None


# --- bounded YAML ---------------------------------------------------------------------------------------
# Every YAML text a user hands distgan (config files, overrides, sweep files, a checkpoint's config.yaml)
# is parsed by load_yaml_text. yaml.safe_load alone has no bounds: anchors and aliases (`&a [*b, *b, ...]`
# nested 9 deep) build a value that anything walking it (pydantic, repr) sees as billions of items (45 s and
# 6 GB before the one-line error), an alias inside its own anchor makes a list that contains itself, and
# PyYAML's recursive composer ends 1,000 `[` in a RecursionError traceback. distgan's own files use no
# anchors; aliases stay allowed within MAX_YAML_ALIAS_NODES, so a hand-written `d_hidden: *widths` works.

MAX_YAML_BYTES = 1 << 20  # characters of one YAML text: distgan's configs and sweeps are a few KB
MAX_YAML_DEPTH = 64  # nesting levels, as written and with aliases expanded (a config has 3)
MAX_YAML_ALIAS_NODES = 10_000  # values that expanding the aliases may add to a document
_ALIAS_CHARS = 100  # ...where a scalar counts one more value per this many characters (aliases of a long text)
_MAX_INT_DIGITS = 4000  # YAML integers past this are refused: Python will not print (repr) them (4300 digits)
_SIZE_CAP = 10**9  # expanded sizes are counted up to this (no huge integers for a deep chain of aliases)


class _YamlLimit(Exception):
    """A YAML text over one of the bounds above; load_yaml_text turns it into a UserError."""


class _DuplicateKey(Exception):
    """A mapping that spells one key twice (PyYAML keeps the last silently); load_yaml_text makes it a UserError."""


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that stops composing past MAX_YAML_DEPTH levels (before Python's recursion limit)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        """SafeLoader's compose_node, counting the levels it recurses into."""
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _YamlLimit(f"nests deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """SafeLoader's integers, refusing one too large to print (0x + 4000 digits; a pydantic error shows it)."""
        value = super().construct_yaml_int(node)
        if abs(value).bit_length() > _MAX_INT_DIGITS * 3.32:
            raise _YamlLimit(f"has an integer of over {_MAX_INT_DIGITS} digits")
        return value

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        """SafeLoader's mappings, refusing one that spells a key twice (PyYAML keeps the last silently). Keys
        compare as written, with their resolved tag; the keys a merge (`<<: *base`) brings may be overridden."""
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line, first = key.start_mark.line + 1, seen.get((key.tag, key.value))
            if first is not None:
                where = f"line {line}" if first == line else f"lines {first} and {line}"
                raise _DuplicateKey(f"has key {key.value[:100]!r} twice in one mapping ({where}); keep one")
            seen[(key.tag, key.value)] = line
        return node


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes directly inside `node` (a mapping's keys and values)."""
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_aliases(root: yaml.Node) -> None:
    """Refuse (_YamlLimit) a document whose aliases expand to over MAX_YAML_ALIAS_NODES more nodes than it
    holds, nest deeper than MAX_YAML_DEPTH once expanded, or refer to their own anchor (endless).

    One iterative walk over the distinct nodes (an aliased node is one object, seen once), sizes memoised.
    """
    size: dict[int, int] = {}  # id(node) -> nodes in it, every alias expanded (capped at _SIZE_CAP)
    depth: dict[int, int] = {}
    on_path: set[int] = set()  # the nodes being walked: one met again is inside itself
    stack: list[tuple[yaml.Node, list[yaml.Node] | None]] = [(root, None)]  # kids: set once the node is open
    spelled = 0  # the distinct nodes' own counts: what the text spells out
    while stack:
        node, kids = stack.pop()
        key = id(node)
        if kids is not None:  # all its kids are done
            on_path.discard(key)
            spelled += 1
            size[key] = min(_SIZE_CAP, 1 + sum([size[id(k)] for k in kids]))
            depth[key] = 1 + max([depth[id(k)] for k in kids], default=0)
        elif key in on_path:
            raise _YamlLimit("uses an alias (*name) inside its own anchor (&name), a value without end")
        elif key not in size:
            kids = _children(node)
            if not kids:  # a scalar (or an empty collection): nothing to open; a long scalar counts more
                size[key] = 1 + len(node.value) // _ALIAS_CHARS if isinstance(node, yaml.ScalarNode) else 1
                depth[key] = 1
                spelled += size[key]
                continue
            on_path.add(key)
            stack.append((node, kids))
            stack.extend((kid, None) for kid in kids if id(kid) not in size)
    if size[id(root)] - spelled > MAX_YAML_ALIAS_NODES:
        raise _YamlLimit(f"has aliases (*name) that expand to over {MAX_YAML_ALIAS_NODES} more values than "
                         f"it spells out")
    if depth[id(root)] > MAX_YAML_DEPTH:
        raise _YamlLimit(f"nests deeper than {MAX_YAML_DEPTH} levels once its aliases (*name) are expanded")


def load_yaml_text(text: str, source: str) -> Any:
    """`yaml.safe_load(text)` within bounds: a text over MAX_YAML_BYTES, nested deeper than MAX_YAML_DEPTH,
    whose aliases expand past MAX_YAML_ALIAS_NODES or with a key twice in one mapping is a one-line UserError
    starting with `source` (say, the file's path). A syntax error stays a yaml.YAMLError, for the caller to
    phrase with its remedy.
    """
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{source}: {len(text)} characters of YAML, more than the {MAX_YAML_BYTES} read here; "
                        f"is it the right file?")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    except _YamlLimit as e:
        raise UserError(f"{source}: the YAML {e}; write the values out plainly") from None
    except _DuplicateKey as e:
        raise UserError(f"{source}: the YAML {e}") from None
    # a constructor's: a date 2001-13-45, `!!int abc`, an integer of 5000 digits (ValueError); `!!bool maybe`,
    # `!!int ""` (LookupError); `!!timestamp x` (AttributeError)
    except (ValueError, LookupError, AttributeError, TypeError, ArithmeticError) as e:
        raise yaml.constructor.ConstructorError(problem=(str(e).splitlines() or [""])[0]) from None
    finally:
        loader.dispose()


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # what a path that is no file may be


def _read_head(path: Path, n: int, what: str) -> bytes:
    """At most `n` bytes of regular file `path` (links followed): IsADirectoryError for a directory (as open()
    raises), a one-line UserError naming `what` for a FIFO or device (opened without blocking: a FIFO is refused,
    not waited on). Other OSErrors propagate."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise UserError(f"{what} {path} is {kind}, not a {what}; pass the YAML file itself")
        os.set_blocking(fd, True)
        f = open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return f.read(n)


def read_yaml_file(path: Path, what: str) -> Any:
    """Parse YAML file `path` with load_yaml_text, reading at most MAX_YAML_BYTES + 1 bytes of it (a bigger
    file, a FIFO or a device is a UserError naming `what` and the path). OSError (FileNotFoundError for a missing
    one, IsADirectoryError), UnicodeDecodeError and yaml.YAMLError propagate."""
    data = _read_head(path, MAX_YAML_BYTES + 1, what)  # no more than this, even from a file that grows or lies
    if len(data) > MAX_YAML_BYTES:
        raise UserError(f"{what} {path} is over {MAX_YAML_BYTES} bytes, too big for a YAML {what}; is it the "
                        f"right file?")
    return load_yaml_text(data.decode("utf-8"), f"{what} {path}")


# --- loading --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` (value in YAML syntax) into (["a","b","c"], value)."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r} has an empty key")
    try:
        value = load_yaml_text(raw, f"override {key}=...") if raw != "" else ""
    except yaml.YAMLError:  # not YAML: the text itself (`name=a: b`), as the config's checks then see it
        value = raw
    return key.split("."), value


def _config_name(path: Path) -> str:
    """A file stem usable in a directory name (`name`'s pattern)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-")[:100]
    return name or "config"


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a YAML config file (or the defaults when `path` is None) and apply overrides.

    `name` defaults to the file's stem (e.g. `mnist_dcgan`), for `run.dir=auto`.
    """
    return apply_overrides(read_config_file(path), overrides)


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """The data of a YAML config file, unchecked ({} when `path` is None); one-line UserError if unreadable.
    Read once and pass to `apply_overrides` to check many override lists against one file."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = read_yaml_file(path, "config file") or {}
        except FileNotFoundError:
            raise UserError(f"config file {path} not found (see configs/ for examples)") from None
        except IsADirectoryError:
            raise UserError(f"config file {path} is a directory, not a config file; pass the YAML file itself") \
                from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"config file {path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path}: the top level must be a mapping of keys")
        data.setdefault("name", _config_name(path))
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str] = ()) -> Config:
    """The checked Config of `data` (from read_config_file, left unchanged) with `overrides` applied."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise UserError(f"override {text!r}: {k!r} is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return _validated(data)


def config_from_dict(data: dict[str, Any], source: str | None = "saved config") -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. a checkpoint's saved config), with the same checks.

    Errors start with `source` (say, the checkpoint's path), so the user knows which file to fix.
    """
    return _validated(data, source)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# --- run directories and resuming -----------------------------------------------------------------------


# Not resumable, deliberately: train.lr_g/lr_d/betas/batch_size/d_steps, seed, mixed_precision, ema.*,
# loss.*, model.*. A changed learning rate is the most common "new experiment in an old run.dir", the bug
# this check exists for. To change one on purpose, pass resume=<checkpoint dir>: an explicit resume is
# a decision, not an accident, and the trainer then applies the new config's values (its learning rates).


