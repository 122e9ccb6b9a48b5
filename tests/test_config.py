"""Config loading: overrides, bounds, one-line errors that name the key, --print-config, resume rules."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import time
import typing

import annotated_types
import pytest
import yaml
from conftest import PYTHON, REPO, cap_address_space, child_env, run_cli, timed_call, yaml_alias_bomb
from pydantic.fields import FieldInfo

from distgan.config import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    Config,
    Section,
    config_from_dict,
    dump_config,
    load_config,
    load_yaml_text,
    parse_override,
)
from distgan.errors import UserError
from distgan.run.resume import RESUMABLE_KEYS, describe_conflicts, model_fingerprint, resume_conflicts
from distgan.run.run_dir import auto_run_dir

DEBUG = REPO / "configs" / "debug.yaml"


def test_shipped_configs_load():
    for name in ("debug", "mnist_mlp", "mnist_dcgan", "mnist_cgan", "fashion_mnist_cgan"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.train.steps > 0


def test_seed_config_is_the_classic_mlp_gan():
    cfg = load_config(REPO / "configs" / "mnist_mlp.yaml")
    assert (cfg.model.arch, cfg.model.z_dim, cfg.model.g_hidden, cfg.model.d_hidden) == \
        ("mlp", 100, [256, 512, 1024], [1024, 512, 256])
    assert (cfg.loss.kind, cfg.train.lr_g, cfg.train.lr_d, cfg.train.betas) == ("bce", 2e-4, 2e-4, [0.5, 0.999])


def test_overrides_any_key_with_yaml_values():
    cfg = load_config(REPO / "configs" / "debug.yaml",
                      ["train.steps=7", "seed=3", "mixed_precision=bf16", "wandb.mode=disabled",
                       "train.betas=[0.0, 0.9]", "eval.classifier=null", "run.dir=/tmp/x"])
    assert (cfg.train.steps, cfg.seed, cfg.mixed_precision, cfg.wandb.mode) == (7, 3, "bf16", "disabled")
    assert cfg.train.betas == [0.0, 0.9] and cfg.eval.classifier is None and cfg.run.dir == "/tmp/x"
    # YAML 1.1 reads `1e-3` (no dot) as a string; the override keeps it, and a float field parses it.
    assert parse_override("a.b=1e-3") == (["a", "b"], "1e-3")
    lr = load_config(DEBUG, ["train.lr_d=1e-3"]).train.lr_d
    assert lr == 1e-3 and type(lr) is float


@pytest.mark.parametrize("override, key", [
    ("train.stepz=5", "train.stepz"),
    ("trian.steps=5", "trian"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=0", "train.steps"),
    ("train.batch_size=2.5", "train.batch_size"),
    ("mixed_precision=fp8", "mixed_precision"),
    ("loss.kind=wgan", "loss.kind"),
    ("ema.decay=1.5", "ema.decay"),
    ("model.spectral_norm=maybe", "model.spectral_norm"),
    ("train.lr_d=-1", "train.lr_d"),
    # reliability issue: each of these once gave a traceback or was accepted
    ("model.g_hidden=[3000000000]", "model.g_hidden[0]"),
    ("model.d_hidden=[64, 16385]", "model.d_hidden[1]"),
    ("seed=18446744073709551616", "seed"),  # 2**64
    ("seed=4294967296", "seed"),  # 2**32: numpy's legacy seed (accelerate's set_seed) would raise
    ("seed=-1", "seed"),
    ("dist.timeout_s=1e15", "dist.timeout_s"),  # a string in YAML 1.1: not an integer
    ("dist.timeout_s=1000000000000000", "dist.timeout_s"),
    ("dist.timeout_s=604801", "dist.timeout_s"),  # 7 days + 1 s
    ("model.z_dim=1e9", "model.z_dim"),
    ("model.z_dim=1000000000", "model.z_dim"),
    ("log.grid_size=1e5", "log.grid_size"),
    ("log.grid_size=100000", "log.grid_size"),
    ("train.lr_d=.inf", "train.lr_d"),
    ("train.lr_g=1e400", "train.lr_g"),  # overflows to inf
    ("train.lr_g=1.5", "train.lr_g"),
    ("loss.gp_weight=.nan", "loss.gp_weight"),
    ("loss.gp_weight=-1", "loss.gp_weight"),
    ("train.batch_size=65537", "train.batch_size"),
    ("train.steps=1000000001", "train.steps"),
    ("train.betas=[0.5, 1.0]", "train.betas[1]"),
    ("train.betas=[0.5]", "train.betas"),
    ("eval.n=1000001", "eval.n"),
    ("model.g_width=1025", "model.g_width"),
    ("model.g_hidden=[]", "model.g_hidden"),
    ("train.steps=true", "train.steps"),  # a bool is not an integer
    ("train.lr_g=true", "train.lr_g"),  # ...nor a number
    ("train.d_steps=2.0", "train.d_steps"),
    ("run.dir=", "run.dir"),
    ("train=5", "train"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError, match=rf"^(unknown )?config key '{re.escape(key)}'"):
        load_config(REPO / "configs" / "debug.yaml", [override])


def test_errors_are_one_line_and_say_what_is_allowed():
    def error(override: str) -> str:
        with pytest.raises(UserError) as e:
            load_config(DEBUG, [override])
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error("train.stepz=5") == ("unknown config key 'train.stepz' (known keys here: batch_size, betas, "
                                      "channels_last, d_steps, lr_d, lr_g, nan_patience, steps); did you mean "
                                      "'train.steps'?")
    assert error("model.g_hidden=[3000000000]") == \
        "config key 'model.g_hidden[0]': must be at most 16384, got 3000000000"
    assert error("train.lr_d=.inf") == "config key 'train.lr_d': must be a finite number, got inf"
    assert error("train.steps=2.5") == "config key 'train.steps': expected an integer, got 2.5"
    assert error("loss.kind=wgan") == ("config key 'loss.kind': expected one of 'bce', 'hinge', 'wgan-gp' or 'rpgan', "
                                       "got 'wgan'")


def test_yaml_11_quirks_in_files(tmp_path):
    path = tmp_path / "quirks.yaml"
    path.write_text("mixed_precision: no\ntrain:\n  lr_g: 1e-4\n  lr_d: 1\nloss:\n  gp_weight: 5\n")
    cfg = load_config(path)
    assert cfg.mixed_precision == "no"  # YAML 1.1 read `no` as false
    assert (cfg.train.lr_g, cfg.train.lr_d, cfg.loss.gp_weight) == (1e-4, 1.0, 5.0)  # string / ints -> floats
    assert all(type(v) is float for v in (cfg.train.lr_g, cfg.train.lr_d, cfg.loss.gp_weight))
    assert "mixed_precision: 'no'" in dump_config(cfg)  # quoted, so it reads back as "no"


def test_checkpoint_configs_get_the_same_checks():
    good = load_config(DEBUG).to_dict()
    assert config_from_dict(good) == load_config(DEBUG)
    assert config_from_dict(yaml.safe_load(dump_config(load_config(DEBUG)))) == load_config(DEBUG)
    for key, value, named in [("model.g_hidden", [3000000000], "model.g_hidden[0]"),
                              ("train.lr_d", float("inf"), "train.lr_d"), ("seed", 2**64, "seed"),
                              ("model.z_dim", 10**9, "model.z_dim"), ("loss.gp_weight", float("nan"), "loss.gp_weight"),
                              ("train.stepz", 1, "train.stepz")]:
        data = load_config(DEBUG).to_dict()
        *sections, last = key.split(".")
        node = data
        for part in sections:
            node = node[part]
        node[last] = value
        with pytest.raises(UserError, match=rf"^runs/x/config\.yaml: (unknown )?config key '{re.escape(named)}'"):
            config_from_dict(data, "runs/x/config.yaml")
    with pytest.raises(UserError, match="mapping"):
        config_from_dict(None)


def _constraints(meta: list) -> list:
    """Flatten metadata (annotated_types.Ge/Le/..., FieldInfo holding them) into the constraint objects."""
    out = []
    for m in meta:
        out += _constraints(m.metadata) if isinstance(m, FieldInfo) else [m]
    return out


def _numeric_fields(model: type[Section], prefix: str = ""):
    """(dotted key, constraints) of every int/float field and list item, recursively."""
    for name, info in model.model_fields.items():
        tp = info.annotation
        if isinstance(tp, type) and issubclass(tp, Section):
            yield from _numeric_fields(tp, f"{prefix}{name}.")
        elif typing.get_origin(tp) is list:  # list[Annotated[int, ..., Field(...)]]: the items' metadata
            (item,) = typing.get_args(tp)
            if typing.get_origin(item) is typing.Annotated and typing.get_args(item)[0] in (int, float):
                yield f"{prefix}{name}[]", _constraints(list(item.__metadata__))
        elif tp in (int, float):
            yield f"{prefix}{name}", _constraints(info.metadata)


def test_every_numeric_field_has_both_bounds():
    fields = dict(_numeric_fields(Config))
    assert len(fields) > 25 and "model.g_hidden[]" in fields and "train.betas[]" in fields, fields
    for key, constraints in fields.items():
        lower = [c for c in constraints if isinstance(c, (annotated_types.Ge, annotated_types.Gt))]
        upper = [c for c in constraints if isinstance(c, (annotated_types.Le, annotated_types.Lt))]
        assert lower and upper, f"{key} needs a lower and an upper bound next to its field"


def test_int_and_float_fields_are_strict_where_it_matters():
    assert load_config(None, ["train.lr_g=1"]).train.lr_g == 1.0  # floats accept ints
    cfg = load_config(None, ["wandb.name=2024", "run.dir=123"])  # YAML reads these as numbers
    assert (cfg.wandb.name, cfg.run.dir) == ("2024", "123")
    for override in ("train.steps=true", "train.steps=2.5", "train.steps='7'", "model.g_hidden=[1.5]",
                     "seed=false", "log.progress=1", "train.lr_g=abc"):
        with pytest.raises(UserError, match="config key"):
            load_config(None, [override])


def test_defaults_and_shipped_configs_are_valid():
    assert Config() == config_from_dict(Config().to_dict())
    assert load_config(None) == Config() and Config().name is None


def test_load_config_remembers_the_file_name(tmp_path):
    assert load_config(REPO / "configs" / "mnist_dcgan.yaml").name == "mnist_dcgan"
    assert load_config(DEBUG, ["name=exp1"]).name == "exp1"
    odd = tmp_path / "my config!.yaml"
    odd.write_text("train: {steps: 3}\n")
    assert load_config(odd).name == "my-config-"
    with pytest.raises(UserError, match="'name'"):
        load_config(DEBUG, ["name=../x"])


def test_auto_run_dir():
    assert auto_run_dir("mnist_dcgan", "12345", "20240101-120000") == "runs/mnist_dcgan-12345"
    assert auto_run_dir("mnist_dcgan", None, "20240101-120000") == "runs/mnist_dcgan-20240101-120000"
    assert auto_run_dir("mnist_dcgan", "", "t1") == "runs/mnist_dcgan-t1"
    assert auto_run_dir("a/../b", "7_3", "t") == "runs/a-..-b-7_3"  # one directory under runs/, always
    assert auto_run_dir("..", "../1", "t") == "runs/x-1"


def test_resume_conflicts_ignore_only_the_resumable_keys():
    saved = load_config(REPO / "configs" / "mnist_dcgan.yaml")
    same_experiment = load_config(REPO / "configs" / "mnist_dcgan.yaml", [
        "train.steps=20000", "log.every=10", "checkpoint.keep=9", "eval.every=100", "eval.n=1000",
        "wandb.mode=offline", "data.num_workers=4", "data.dir=/scratch/mnist", "run.dir=elsewhere",
        "resume=never", "dist.timeout_s=1200", "preempt.check_every=5", "model.sync_batchnorm=false",
        "train.nan_patience=5", "name=other"])
    assert resume_conflicts(saved, same_experiment) == []
    assert describe_conflicts("runs/x", saved, same_experiment) is None

    other = load_config(REPO / "configs" / "mnist_dcgan.yaml", ["train.lr_d=2e-4", "loss.kind=bce", "seed=1",
                                                                "train.betas=[0.5, 0.999]", "train.steps=5"])
    assert resume_conflicts(saved, other) == ["seed", "loss.kind", "train.lr_d", "train.betas"]
    assert describe_conflicts("runs/x", saved, other) == (
        "cannot resume runs/x: the config differs in seed (0 -> 1), loss.kind (hinge -> bce), "
        "train.lr_d (0.0004 -> 0.0002), train.betas ([0.0, 0.9] -> [0.5, 0.999]); use a new run.dir, "
        "or resume=<checkpoint dir> to continue from it with the new values on purpose")
    for key in ("train.lr_g=1e-3", "train.batch_size=32", "train.d_steps=2", "mixed_precision=bf16",
                "ema.decay=0.99", "ema.start_step=1", "loss.gp_weight=1", "model.z_dim=8", "model.spectral_norm=false"):
        assert resume_conflicts(saved, load_config(REPO / "configs" / "mnist_dcgan.yaml", [key])) == \
            [key.split("=")[0]], key


def test_conflict_summary_stays_one_short_line():
    saved = Config()
    new = load_config(None, [f"model.g_hidden=[{i}]" for i in (8,)] + [
        "seed=1", "train.lr_g=0.1", "train.lr_d=0.1", "train.d_steps=3", "ema.decay=0.5", "loss.kind=hinge",
        "model.z_dim=7", "model.d_hidden=[9]"])
    line = describe_conflicts("runs/y", saved, new)
    assert "\n" not in line and line.count(" -> ") == 6 and "and 3 more" in line


def test_resumable_keys_name_real_keys():
    flat = set()

    def walk(model, prefix=""):
        for name, info in model.model_fields.items():
            tp = info.annotation
            if isinstance(tp, type) and issubclass(tp, Section):
                walk(tp, f"{prefix}{name}.")
            else:
                flat.add(f"{prefix}{name}")

    walk(Config)
    for pattern in RESUMABLE_KEYS:
        assert fnmatch.filter(flat, pattern), f"RESUMABLE_KEYS entry {pattern!r} matches no config key"
    assert "train.lr_d" in flat and not any(fnmatch.fnmatchcase("train.lr_d", p) for p in RESUMABLE_KEYS)


def test_model_fingerprint_ignores_sync_batchnorm():
    a, b = load_config(DEBUG), load_config(DEBUG, ["model.sync_batchnorm=false", "train.lr_g=0.1"])
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(load_config(DEBUG, ["model.z_dim=8"]))


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="key.sub=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_cli_prints_one_line_without_traceback(tmp_path):
    proc = run_cli(["train", "--config", "configs/debug.yaml", "train.stepz=5"], timeout=60, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown config key 'train.stepz'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_print_config_prints_the_resolved_yaml_and_touches_nothing(tmp_path):
    overrides = ["train.steps=7", "mixed_precision=no", "model.g_hidden=[8, 16]", "train.lr_g=1e-4"]
    env = child_env(PYTHONPROFILEIMPORTTIME="1")  # stderr lists every module the command imported
    proc = run_cli(["train", "--config", str(DEBUG), *overrides, "--print-config"], timeout=60, cwd=tmp_path, env=env)
    printed = yaml.safe_load(proc.stdout)
    assert printed == load_config(DEBUG, overrides).to_dict()
    assert printed["train"]["steps"] == 7 and printed["mixed_precision"] == "no" and printed["name"] == "debug"
    assert printed["model"]["d_hidden"] == [64, 32] and printed["train"]["nan_patience"] == 20  # file + defaults
    assert config_from_dict(printed) == load_config(DEBUG, overrides)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line]
    assert "distgan.config" in imported
    assert not [m for m in imported if m.startswith(("distgan.training", "torch", "accelerate", "wandb"))]
    assert list(tmp_path.iterdir()) == []  # no run directory, no files


def test_print_config_reports_bad_keys_in_one_line(tmp_path):
    proc = run_cli(["train", "--config", str(DEBUG), "train.lr_d=.inf", "--print-config"], timeout=60,
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "distgan train: error: config key 'train.lr_d': must be a finite number, got inf"]


# -- bounded YAML: alias bombs, self-referring anchors, deep nesting, huge files ---------------------------

@pytest.mark.slow  # child processes capped at 2 GB of address space: without the bound a bomb fails there
@pytest.mark.parametrize("levels", [9, 10])
def test_yaml_alias_bombs_are_refused_at_once(tmp_path, levels):
    """Before the fix, 9 levels in model.g_hidden took 45 s and 6 GB (pydantic and repr walk 387 million
    values) before the one-line error."""
    bomb = yaml_alias_bomb(levels)
    path = tmp_path / "bomb.yaml"
    path.write_text(f"model:\n  g_hidden: {bomb}\n")
    for args, source in (((str(path),), f"config file {path}: "),
                         ((None, [f"model.g_hidden={bomb}"]), "override model.g_hidden=...: ")):
        error, seconds = timed_call("distgan.config", "load_config", *args)
        assert error and "\n" not in error and error.startswith(source) and "aliases (*name)" in error, error
        assert seconds < 2, f"{seconds:.1f} s to refuse a {levels}-level alias bomb"
    proc = subprocess.run([PYTHON, "-m", "distgan", "train", "--config", str(path), "--print-config"], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=cap_address_space())
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("distgan train: error: config file")


def test_yaml_bounds(tmp_path):
    """Aliases within the bound still work; an alias inside its own anchor, nesting past MAX_YAML_DEPTH
    (a RecursionError traceback before) and a text over MAX_YAML_BYTES are one-line UserErrors."""
    path = tmp_path / "widths.yaml"
    path.write_text("model:\n  g_hidden: &w [8, 16]\n  d_hidden: *w\n")
    assert load_config(path).model.d_hidden == [8, 16]
    cases = {"model: {g_hidden: &a [*a, 1]}": "inside its own anchor",
             "model:\n  g_hidden: " + "[" * 3000 + "]" * 3000: f"nests deeper than {MAX_YAML_DEPTH} levels",
             "a0: &a0 [1]\n" + "".join(f"a{k}: &a{k} [*a{k - 1}]\n" for k in range(1, 100)):
                 "once its aliases (*name) are expanded",
             "x: " + "1" * MAX_YAML_BYTES: f"is over {MAX_YAML_BYTES} bytes"}
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(UserError) as exc:
            load_config(path)
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith(f"config file {path}") and message in msg, msg
    with pytest.raises(UserError, match=f"more than the {MAX_YAML_BYTES} read here"):
        load_yaml_text("1" * (MAX_YAML_BYTES + 1), "checkpoint config.yaml")
    with pytest.raises(UserError, match="the YAML uses an alias"):
        load_yaml_text("&a [*a]", "checkpoint config.yaml")
    with pytest.raises(yaml.YAMLError):  # a syntax error is left to the caller to phrase
        load_yaml_text("train: [unclosed", "x")
    with pytest.raises(UserError, match="nests deeper"):
        parse_override("model.g_hidden=" + "[" * 3000)


def test_duplicate_keys_are_refused(tmp_path):
    """Before the fix `seed: 1` then `seed: 2` was accepted silently (the last won); now config files, sweep
    files and overrides (one loader) name the key and its lines. Keys a merge (`<<: *base`) brings may still
    be overridden, and the same key in two mappings is no duplicate."""
    from distgan.sweep import load_sweep

    path = tmp_path / "dup.yaml"
    cases = {"seed: 1\nseed: 2\n": ("seed", "lines 1 and 2"),
             "train:\n  steps: 5\n  lr_g: 0.1\n  'steps': 6\n": ("steps", "lines 2 and 4"),
             "model: {z_dim: 8, z_dim: 9}\n": ("z_dim", "line 1")}
    for text, (key, lines) in cases.items():
        path.write_text(text)
        with pytest.raises(UserError) as exc:
            load_config(path)
        assert str(exc.value) == f"config file {path}: the YAML has key {key!r} twice in one mapping ({lines}); " \
                                 f"keep one"
    path.write_text("name: s\nbase: configs/debug.yaml\ngrid: {seed: [1, 2]}\nbase: configs/debug.yaml\n")
    with pytest.raises(UserError, match=f"^sweep file {path}: the YAML has key 'base' twice .*lines 2 and 4"):
        load_sweep(path)
    with pytest.raises(UserError, match="^override model=...: the YAML has key 'z_dim' twice"):
        load_config(None, ["model={z_dim: 8, z_dim: 9}"])
    merged = load_yaml_text("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\nc: {x: 4}\n", "t")
    assert merged == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}, "c": {"x": 4}}


@pytest.mark.timeout(30)  # a FIFO opened for reading waits for a writer: before the fix, forever (sweep files)
def test_config_path_that_is_no_regular_file(tmp_path):
    """Before the fix a directory, a FIFO or /dev/zero given as the config was "not found"; now the message
    says what it is, without waiting on the FIFO or reading the device; a sweep file gets the same."""
    from distgan.sweep import load_sweep

    (tmp_path / "dir.yaml").mkdir()
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    start = time.monotonic()
    for name, kind in (("dir", "a directory"), ("fifo", "a FIFO (named pipe)"), ("zero", "a character device")):
        path = tmp_path / f"{name}.yaml"
        with pytest.raises(UserError) as exc:
            load_config(path)
        assert str(exc.value) == f"config file {path} is {kind}, not a config file; pass the YAML file itself"
        with pytest.raises(UserError) as exc:
            load_sweep(path)
        assert str(exc.value) == (f"cannot read sweep file {path}: Is a directory" if name == "dir" else
                                  f"sweep file {path} is {kind}, not a sweep file; pass the YAML file itself")
    assert time.monotonic() - start < 2
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "dangling.yaml")


def test_name_pattern_is_exact():
    """`name` goes into run directory names: a trailing newline must not pass its pattern (pydantic's Rust
    regex reads `$` as the end of the text; Python's re with match would let "abc\\n" through)."""
    for name in ("abc\n", "abc\ndef", "abc/def"):
        with pytest.raises(UserError, match="config key 'name': has characters that are not allowed"):
            config_from_dict({"name": name})
    assert config_from_dict({"name": "mnist_dcgan-2.1"}).name == "mnist_dcgan-2.1"
