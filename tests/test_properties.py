"""Property-based tests (hypothesis) for every parser of user input: config files and `key=value` overrides,
sweep files, shard manifests (local and served), IDX files, .npz files, image folders and `--labels`.

The property is the same for each: whatever the input, the parser returns, or raises one UserError whose
message is one line, within BUDGET_S seconds and under an address-space cap (ADDRESS_SPACE more than the
test process already maps) - never another exception (a traceback), a hang or a runaway allocation. The
few inputs where a bomb is plausible (an alias-expanded YAML text, a gzip that inflates to gigabytes, an
.npz whose zip lies about its sizes) also run in a fresh process capped at 2 GB (conftest.timed_call).

Profiles: the default ("ci") runs few, derandomized examples (the whole file in well under 30 s on one
core); DISTGAN_HYPOTHESIS_PROFILE=nightly runs many random ones, and DISTGAN_HYPOTHESIS_MAX_EXAMPLES=N
sets the base number of examples of either profile (each test runs a multiple of it, see _settings).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import os
import struct
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import MNIST_RAW, REPO, timed_call
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image

from distgan.config import Config, load_config, load_yaml_text, parse_override
from distgan.data.idx import FILES as IDX_FILES
from distgan.data.idx import load_pair, parse_idx
from distgan.data.imaging import Transform
from distgan.data.prepare import prepare
from distgan.data.remote import FetchPolicy, open_dataset
from distgan.data.shards import MANIFEST, read_manifest
from distgan.data.sources import NPZ_ARRAYS, check_npz_arrays, npz_source
from distgan.errors import UserError
from distgan.generator.sampling import parse_labels
from distgan.sweep import load_sweep

# -- profiles --------------------------------------------------------------------------------------------

PROFILE_ENV = "DISTGAN_HYPOTHESIS_PROFILE"
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
# (named distgan-*: hypothesis has a built-in "ci" profile of its own, left alone)
settings.register_profile("distgan-ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("distgan-nightly", max_examples=2000, derandomize=False, **_COMMON)
PROFILE = os.environ.get(PROFILE_ENV, "ci") or "ci"
if PROFILE not in ("ci", "nightly"):
    raise pytest.UsageError(f"{PROFILE_ENV}={PROFILE!r}: use ci (default) or nightly")
_BASE = settings.get_profile(f"distgan-{PROFILE}")
_EXAMPLES = int(os.environ.get("DISTGAN_HYPOTHESIS_MAX_EXAMPLES") or _BASE.max_examples)


def _settings(scale: float = 1.0) -> settings:
    """The profile's settings with scale x its number of examples: cheap parsers run more, prepare runs fewer."""
    return settings(_BASE, max_examples=max(1, round(_EXAMPLES * scale)))


# a hung example fails the test (pytest-timeout) long before the suite's 600 s, in the default profile
pytestmark = pytest.mark.timeout(300 if PROFILE == "ci" and _EXAMPLES <= 100 else 6 * 3600)

# -- the property ----------------------------------------------------------------------------------------

BUDGET_S = 5.0  # one parser call
ADDRESS_SPACE = 2 << 30  # what one parser call may map on top of the test process


@contextlib.contextmanager
def _address_space_cap(extra: int = ADDRESS_SPACE) -> Iterator[None]:
    """Cap this process's address space (soft RLIMIT_AS) at what it maps now plus `extra` bytes for the
    block: a runaway allocation raises MemoryError (and fails the test) instead of taking the machine."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):  # not Linux: no cap, the time budget still holds
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def one_line(error: BaseException) -> str:
    """The message of a UserError, checked: not empty, one line."""
    assert isinstance(error, UserError), f"{type(error).__name__} is not distgan.errors.UserError"
    msg = str(error)
    assert msg.strip(), "empty UserError message"
    assert len(msg.splitlines()) == 1, f"UserError message of more than one line: {msg!r}"
    return msg


def check(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs): its result, or its UserError (checked: one line); within BUDGET_S seconds and
    the address-space cap. Any other exception propagates: hypothesis reports it with the input."""
    start = time.monotonic()
    with _address_space_cap():
        try:
            result = call(*args, **kwargs)
        except UserError as e:
            result = e
    seconds = time.monotonic() - start
    assert seconds < BUDGET_S, f"{getattr(call, '__name__', call)} took {seconds:.1f}s (budget {BUDGET_S}s)"
    if isinstance(result, UserError):
        one_line(result)
    name = getattr(call, "__name__", "call").strip("_")
    with contextlib.suppress(InvalidArgument):  # outside a hypothesis test: no statistics
        event(f"{name}: {'UserError' if isinstance(result, UserError) else 'returned'}")  # --hypothesis-show-statistics
    return result


def quiet(_: str) -> None:
    """A `log` for prepare that prints nothing."""


# -- shared strategies -----------------------------------------------------------------------------------

NASTY_TEXT = ["", " ", "\n", "a\nb", "\r\n", "\t", "\x00", "\x1b[31m", "\x85", "\u2028", "\ufeff", "é", "日本語",
              "🎉", "\u202e", "..", "../..", "/", "/etc/passwd", "a/b", "a\\b", "~", "-", "--help", "$HOME", "%s",
              "{}", "{0}", "'", '"', "`", "a" * 300, "nan", "NaN", "inf", "-inf", "1e999", "-0", "0x10", "1_000"]
nasty_text = st.sampled_from(NASTY_TEXT)
any_text = st.one_of(nasty_text, st.text(max_size=40))
HUGE_INTS = [0, 1, -1, 2, 255, 256, 4096, 4097, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1,
             2**63, 2**64, -(2**63), 10**30, 10**400]
any_int = st.one_of(st.sampled_from(HUGE_INTS), st.integers(min_value=-(2**70), max_value=2**70))
any_float = st.floats(allow_nan=True, allow_infinity=True)
json_scalar = st.one_of(st.none(), st.booleans(), any_int, any_float, any_text)
json_value = st.recursive(json_scalar, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                              st.dictionaries(any_text, kids, max_size=4)),
                          max_leaves=12)


# -- config files and overrides --------------------------------------------------------------------------


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


DEFAULTS = _flatten(Config().to_dict())  # every leaf key of the config (`train.lr_g`, `log.with`...) -> default
SECTIONS = sorted({key.split(".")[0] for key in DEFAULTS if "." in key})
CONFIG_KEYS = [*DEFAULTS, *SECTIONS]
YAML_VALUES = [
    "0", "-1", "1", "2.5", "1e-4", "1.0e999", "-1.0e999", ".nan", ".NaN", ".inf", "-.inf", "nan", "inf", "1e999",
    "0x1F", "0o17", "017", "0b101", "1_000", "1:30", "190:20:30", "~", "null", "", "yes", "no", "on", "off",
    "true", "True", "2001-12-14", "2001-13-45", "0000-01-01", "2001-12-14t21:59:43.10-05:00",
    "2001-01-01T25:00:00", "!!int abc", "!!float x", "!!int 0x", "!!binary aGk=", "!!binary !", "!!set {a, b}",
    "!!omap [a: 1]", "!!pairs [a: 1]", "!!python/object:os.system x", "!!python/name:os.system", "!!str 1",
    "!!null x", "!!bool maybe",
    "!!timestamp x", '!!int ""', '!!float ""', "!!timestamp 2001-01-01 1:00:00+99",
    "!<tag:x> 1", "!local 1", "'quoted'", '"es\\x00caped"',
    '"\\ud800"', '"a\\nb"', "|\n  block", ">\n  folded", "[1, [2, [3, [4]]]]", "{a: {b: {c: 1}}}", "[]", "{}",
    "[256, 512]", "[0.5, 0.999]", "[wandb, tensorboard]", "[1, 2, 3]", "&a [*a]", "*undefined", "&a 1",
    "[&a 1, *a]", "? a", ": x", "- -", "---", "...", "--- a\n--- b", "%YAML 1.1\n--- 1", "%TAG ! x\n--- 1",
    "@", "`", "#comment", "9" * 5000, "-" + "9" * 5000, "0x" + "f" * 4000, "0b" + "1" * 14000, "1:" * 3000 + "1",
    "3000000000", "[" * 100, "]" * 3, "{" * 70 + "}" * 70, "a: b: c", "\t", "\x00", "\x85", "\u2028", "é",
    "日本", "🎉", "\ufeff1", "x" * 2000, "hinge", "wgan-gp", "dcgan", "bf16", "fp16", "auto", "USR1", "SIGTERM",
    "color,translation", "cutout,,color", "a\nb: 1", "[a, b]: 1", "!!merge <<", "<<: {a: 1}", "<<: *x",
    "[" + ", ".join(["*a"] * 50) + "]",
]
yaml_value_text = st.one_of(st.sampled_from(YAML_VALUES), any_text, any_int.map(str), any_float.map(repr))


def _nearby(value: Any) -> st.SearchStrategy[Any]:
    """Values near a valid one: the same, at the bounds or past them, or of the next type over."""
    if isinstance(value, bool):
        return st.sampled_from([value, not value, 0, 1, "yes", None])
    if isinstance(value, int):
        return st.one_of(st.just(value), st.integers(-2, 2).map(lambda d: value + d), st.sampled_from(HUGE_INTS),
                         st.just(float(value)), st.just(str(value)))
    if isinstance(value, float):
        return st.one_of(st.just(value), st.sampled_from([0.0, -0.0, 1.0, -value, value * 10, 1e-300, 1e300]),
                         any_float, st.just(str(value)))
    if isinstance(value, list):
        return st.one_of(st.just(value), st.lists(st.one_of(st.sampled_from(value), _nearby(value[0])), max_size=9))
    if isinstance(value, str):
        return st.one_of(st.just(value), st.sampled_from([value.upper(), value + " ", "", "no", "mlp", "dcgan", "hinge",
                                                          "wgan-gp", "bf16", "fp16", "runs/x", "auto", "never"]),
                         any_text)
    return st.one_of(st.none(), st.sampled_from([2, 10, [1, 28, 28], [3, 32, 32], "x", "a.b-c", "/tmp/x"]))


def _leaf(key: str) -> st.SearchStrategy[Any]:
    """A value for config key `key`: mostly its default or a near one, sometimes anything."""
    return st.one_of(st.just(DEFAULTS[key]), st.just(DEFAULTS[key]), _nearby(DEFAULTS[key]), _any_value())


def _any_value() -> st.SearchStrategy[Any]:
    """A plain YAML value: anything safe_dump can write."""
    scalars = st.one_of(st.none(), st.booleans(), any_int, any_float, any_text)
    return st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                        st.dictionaries(any_text, kids, max_size=3)), max_leaves=8)


def _flow(value: Any) -> str:
    """`value` as one line of YAML (an override's value)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip() \
        .removesuffix("...").strip()


@st.composite
def overrides(draw: st.DrawFn) -> str:
    """A `key=value` override: a real key with a valid or nearby value (YAML), or junk keys and values."""
    how = draw(st.sampled_from(["leaf", "leaf", "leaf", "text", "junk-key", "junk", "fixed"]))
    if how == "leaf":
        key = draw(st.sampled_from(list(DEFAULTS)))
        return f"{key}={_flow(draw(_leaf(key)))}"
    if how == "text":
        return f"{draw(st.sampled_from(CONFIG_KEYS))}={draw(yaml_value_text)}"
    if how == "junk-key":
        key = draw(st.one_of(any_text, st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(CONFIG_KEYS), any_text),
                             st.builds(lambda a, b: f"{a}.{b}", any_text, st.sampled_from(CONFIG_KEYS))))
        return f"{key}={draw(yaml_value_text)}"
    if how == "junk":
        return draw(any_text)
    return draw(st.sampled_from(["=", "==", "a=", "=1", ".=1", "a..b=1", "train.=1", ".train=1", "train.steps.x=1",
                                 "seed.x.y=1", "train=5", "train={}", "log.with=", "model.g_hidden=[3000000000]",
                                 "name=a\nb", "train.lr_g\n=1", "log.with=tensorboard", "mixed_precision=no"]))


@st.composite
def config_documents(draw: st.DrawFn) -> bytes:
    """A config file's bytes: a config-shaped mapping (real keys with valid or nearby values, some unknown
    keys) dumped as YAML in some style, raw YAML fragments, or arbitrary text or bytes."""
    kind = draw(st.sampled_from(["shaped", "shaped", "shaped", "shaped", "fragments", "text", "bytes"]))
    if kind == "shaped":
        data: dict[Any, Any] = {}
        for key in draw(st.lists(st.sampled_from(list(DEFAULTS)), max_size=5)):
            node = data
            *sections, last = key.split(".")
            for part in sections:
                node = node.setdefault(part, {})
            node[last] = draw(_leaf(key))
        if draw(st.integers(0, 3)) == 0:  # an unknown or non-string key somewhere
            where = data if not data or draw(st.booleans()) else data.setdefault(draw(st.sampled_from(SECTIONS)), {})
            if isinstance(where, dict):
                where[draw(st.one_of(any_text, st.none(), st.booleans(), any_int, any_float))] = draw(_any_value())
        if draw(st.integers(0, 5)) == 0 and data:  # a section that is not a mapping
            data[draw(st.sampled_from(SECTIONS))] = draw(_any_value())
        text = yaml.safe_dump(data, default_flow_style=draw(st.sampled_from([None, True, False])),
                              allow_unicode=draw(st.booleans()), sort_keys=False)
    elif kind == "fragments":
        lines = draw(st.lists(st.builds(lambda k, v, i: f"{'  ' * i}{k}: {v}", st.sampled_from(CONFIG_KEYS),
                                        yaml_value_text, st.integers(0, 2)), max_size=8))
        text = "\n".join(lines)
    elif kind == "text":
        text = draw(st.one_of(st.sampled_from(YAML_VALUES), st.text(max_size=200)))
    else:
        return draw(st.binary(max_size=200))
    if draw(st.integers(0, 9)) == 0:
        return b"\xff\xfe" + text.encode("utf-16-le", "surrogatepass")  # UTF-16: not a config file
    return text.encode("utf-8", "surrogatepass")


@_settings(4)
@given(text=st.one_of(st.sampled_from(YAML_VALUES), st.text(max_size=200)))
@example(text="[" * 5000)
@example(text="- " * 3000 + "1")
@example(text="a: " + "&x [" * 60 + "1" + "]" * 60)
def test_load_yaml_text(text: str) -> None:
    """load_yaml_text returns, or raises a one-line UserError (a bound) or yaml.YAMLError (its contract: the
    caller phrases syntax errors)."""
    with contextlib.suppress(yaml.YAMLError):
        check(load_yaml_text, text, "test")


@_settings(4)
@given(text=overrides())
@example(text="seed=" + "9" * 5000)
@example(text="seed=0x" + "f" * 4000)
@example(text="seed=2001-13-45")
@example(text="a\nb")
@example(text="train.x\n.y=1")
@example(text="train.steps=5")
def test_overrides(text: str) -> None:
    """parse_override and load_config(None, [override]): a value and a Config, or one line."""
    check(parse_override, text)
    check(load_config, None, [text])


@_settings(4)
@given(document=config_documents(), extra=st.lists(overrides(), max_size=3))
@example(document=b"seed: 0x" + b"f" * 4000, extra=[])
@example(document=b"seed: 2001-13-45", extra=[])
@example(document=b"{1: a, b: c, ~: d}", extra=["train.steps=1"])
@example(document=b'"a\\nb": 1', extra=[])
@example(document=b"train: 5", extra=["train.steps=1"])
@example(document=b"[" * 200_000, extra=[])
@example(document=b"data: {dir: &s " + b"x" * 100_000 + b"}\nmodel: {g_hidden: [" + b", ".join([b"*s"] * 9000)
         + b"]}", extra=[])
def test_config_files(document: bytes, extra: list[str]) -> None:
    """load_config on any file and overrides: a Config, or one line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(document)
        check(load_config, path, extra)


# -- sweep files -----------------------------------------------------------------------------------------

DEBUG_CONFIG = REPO / "configs" / "debug.yaml"
SWEEP_KEYS = [key for key in DEFAULTS if key != "run.dir"]
_LONG = "x" * 20_000  # a sweep value that takes ~30 ms to render: once per trial, 400 trials took 12 s


@st.composite
def sweep_documents(draw: st.DrawFn) -> str:
    """A sweep file's text: a valid-looking sweep (base, grid or trials over real keys with valid or nearby
    values) with a few parts of any shape, or arbitrary text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.sampled_from(YAML_VALUES), st.text(max_size=200)))
    key = st.sampled_from(SWEEP_KEYS)
    junk_key = st.one_of(st.sampled_from([*SECTIONS, "run.dir", "a..b", "1x", "train.lr_g "]), any_text, any_int)
    data: dict[Any, Any] = {}
    if draw(st.booleans()):
        data["name"] = draw(st.one_of(st.sampled_from(["s", "lr-sweep", "a.b_c", "x" * 101, ".s", "s\n"]), json_value))
    data["base"] = draw(st.sampled_from([str(DEBUG_CONFIG)] * 4 + ["configs/debug.yaml", "nope.yaml",
                                                                    str(REPO / "configs"), "", "a\nb"]))
    if draw(st.booleans()):
        data["overrides"] = draw(st.lists(overrides(), max_size=3))
    if draw(st.booleans()):
        grid = {}
        for k in draw(st.lists(key, min_size=1, max_size=3)):
            grid[k] = draw(st.lists(_leaf(k), min_size=1, max_size=3))
        data["grid"] = grid
    else:
        trials = []
        for _ in range(draw(st.integers(1, 3))):
            trials.append({k: draw(_leaf(k)) for k in draw(st.lists(key, max_size=3))})
        data["trials"] = trials
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):  # break one part
        part = draw(st.sampled_from(["name", "base", "overrides", "grid", "trials", "grid-key", "unknown"]))
        if part == "grid-key" and isinstance(data.get("grid"), dict):
            data["grid"][draw(junk_key)] = draw(st.one_of(st.lists(_any_value(), max_size=2), _any_value()))
        elif part == "unknown":
            data[draw(junk_key)] = draw(_any_value())
        else:
            data[part] = draw(json_value)
    return yaml.safe_dump(data, default_flow_style=draw(st.sampled_from([None, True, False])),
                          allow_unicode=draw(st.booleans()), sort_keys=False)


def _use_sweep(path: Path, root: Path) -> None:
    """load_sweep, then what `distgan sweep list` and `distgan sweep overrides --index 0` do with it."""
    sweep = load_sweep(path)
    for i in range(min(len(sweep.trials), 3)):
        sweep.trial_dir(i, root)
        sweep.trial_overrides(i)
    sweep.train_args(0, root)
    sweep.manifest(root)


@_settings(3)
@given(document=sweep_documents())
@example(document="{1: a, b: c}")
@example(document=f"base: {DEBUG_CONFIG}\ngrid: {{train.lr_g: [2001-13-45]}}")
@example(document='base: "a\\nb"\ngrid: {train.lr_g: [1]}')
@example(document=f"base: {DEBUG_CONFIG}\ngrid: {{seed: [" + "9" * 4400 + "]}")
@example(document=f"base: {DEBUG_CONFIG}\ngrid: {{name: [&s {_LONG}], seed: [{', '.join(map(str, range(400)))}]}}")
@example(document=f"base: {DEBUG_CONFIG}\ntrials: [&t {{name: {_LONG}}}, {', '.join(['*t'] * 400)}]")
@example(document=f"base: {DEBUG_CONFIG}\ngrid: {{train.lr_g: [0.0001, 0.0002], loss.kind: [bce, hinge]}}")
def test_sweep_files(document: str) -> None:
    """load_sweep (and the trials' overrides and directories): a Sweep, or one line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(document, encoding="utf-8", errors="surrogatepass")
        check(_use_sweep, path, Path(tmp) / "runs")


# -- manifests -------------------------------------------------------------------------------------------

SHARD_NAMES = ["../train-000000.tar", "train/../../etc/passwd", "/abs/train-000000.tar", "train-000000.tar\n",
               "train-\u0660\u0660\u0660\u0660\u0660\u0660.tar", "train-000000.tar\x00", "test-000000.tar",
               "train-0000001.tar", "TRAIN-000000.tar", "train-000000.TAR", "./train-000000.tar",
               "train\\000000.tar", "train-000001.tar", "train-99999999999999999999.tar", "train-.tar"]
_KEEP: list[tempfile.TemporaryDirectory] = []  # module-lifetime temporary directories


@functools.cache
def real_manifest() -> str:
    """The manifest.json text of a real `distgan prepare` output (labelled, several shards per split) of a
    small .npz, made once per process."""
    tmp = tempfile.TemporaryDirectory(prefix="distgan-properties-")
    _KEEP.append(tmp)
    root = Path(tmp.name)
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, (40, 6, 5), dtype=np.uint8),
             labels=rng.integers(0, 3, 40), class_names=np.array(["a", "b", "c"]))
    prepare(root / "out", npz=root / "data.npz", test_fraction=0.3, shard_size=7, progress=False, log=quiet)
    read_manifest(root / "out")  # valid as made
    return (root / "out" / MANIFEST).read_text()


def _paths(obj: Any, at: tuple = ()) -> Iterator[tuple]:
    """Every path (tuple of keys and indices) into a JSON value, itself first."""
    yield at
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*at, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*at, i))


def _mutate(draw: st.DrawFn, doc: Any) -> Any:
    """One mutation of a JSON value at a random place: drop, replace, rename, duplicate, wrap, a number, a name."""
    at = draw(st.sampled_from(list(_paths(doc))))
    op = draw(st.sampled_from(["replace", "replace", "drop", "rename", "duplicate", "wrap", "number", "name"]))
    if not at:
        return draw(json_value) if op == "replace" else [doc] if op == "wrap" else doc
    parent = doc
    for part in at[:-1]:
        parent = parent[part]
    last = at[-1]
    if op == "replace":
        parent[last] = draw(json_value)
    elif op == "drop":
        del parent[last]
    elif op == "rename" and isinstance(parent, dict):
        parent[draw(any_text)] = parent.pop(last)
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(last, json.loads(json.dumps(parent[last])))
    elif op == "wrap":
        parent[last] = draw(st.sampled_from([[parent[last]], {"value": parent[last]}, str(parent[last])]))
    elif op == "number":
        parent[last] = draw(st.one_of(any_int, any_float))
    elif op == "name":
        parent[last] = draw(st.one_of(st.sampled_from(SHARD_NAMES), nasty_text))
    return doc


@st.composite
def manifest_texts(draw: st.DrawFn) -> bytes:
    """A manifest.json: the real one, a few JSON mutations of it, or a mangled text."""
    original = real_manifest()
    kind = draw(st.sampled_from(["json", "json", "json", "json", "text"]))
    if kind == "json":
        doc = json.loads(original)
        for _ in range(draw(st.integers(0, 3))):
            doc = _mutate(draw, doc)
        return json.dumps(doc, indent=draw(st.sampled_from([None, 2]))).encode("utf-8", "surrogatepass")
    raw = original.encode()
    cut = draw(st.integers(0, len(raw)))
    return draw(st.sampled_from([raw[:cut], raw[:cut] + draw(st.binary(max_size=20)) + raw[cut:],
                                 raw.replace(b'"', b"'"), b"\xef\xbb\xbf" + raw, raw.decode().encode("utf-16")]))


def _remote_manifest(server: Path, cache: Path) -> Path:
    """open_dataset on a file:// URL serving `server` (one try, short limits)."""
    policy = FetchPolicy(attempts=1, backoff_s=0.01, max_backoff_s=0.01, connect_s=2, stall_s=2, deadline_s=4)
    return open_dataset(server.as_uri(), cache, policy=policy)


def _variant(old: str, new: str) -> bytes:
    return real_manifest().replace(old, new, 1).encode()


@_settings(4)
@given(text=manifest_texts())
@example(text=b"[" * 100_000)
@example(text=b'{"format": "distgan-shards", "version": 2, "splits": ' + b"[" * 100_000)
@example(text=b"\xff\xfe")
@example(text=b'{"format": "distgan-shards", "version": 99999' + b"9" * 5000 + b"}")
@example(text=b'{"format": "distgan-shards", "version": 2, "incomplete": true}')
def test_manifests(text: bytes) -> None:
    """read_manifest (a local prepare output) and open_dataset (the same served at a file:// URL, read
    in-process) on mutated real manifests: a validated manifest, or one line."""
    with tempfile.TemporaryDirectory() as tmp:
        server = Path(tmp) / "server"
        server.mkdir()
        (server / MANIFEST).write_bytes(text)
        check(read_manifest, server)
        check(_remote_manifest, server, Path(tmp) / "cache")


def test_manifest_variants() -> None:
    """Hand-picked manifest edits: a float or bool version, a shard named with a path, counts that lie (a
    version of 2.0 reads as 2)."""
    for old, new in (('"version": 2', '"version": 2.0'), ('"version": 2', '"version": true'),
                     ('"version": 2', '"version": 1'), ('"name": "train-000000.tar"', '"name": "../train-000000.tar"'),
                     ('"name": "train-000000.tar"', '"name": "train-000000.tar\\n"'), ('"count": 7', '"count": -7'),
                     ('"count": 7', '"count": 1e400'), ('"count": 7', '"count": NaN'), ('"shape": [', '"shape": [[')):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / MANIFEST).write_bytes(_variant(old, new))
            check(read_manifest, tmp)


# -- IDX files -------------------------------------------------------------------------------------------

IMAGE_MAGIC, LABEL_MAGIC = 0x803, 0x801
DIMS = [0, 1, 2, 3, 27, 28, 29, 4096, 4097, 10_000_000, 10_000_001, 2**31 - 1, 2**31, 2**32 - 1]


@functools.cache
def mnist_heads() -> tuple[bytes, bytes]:
    """The first bytes of the real MNIST test images and labels, as IDX files of their first 3 items."""
    if not (MNIST_RAW / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST not found at {MNIST_RAW}; set DISTGAN_MNIST_RAW")
    with gzip.open(MNIST_RAW / "t10k-images-idx3-ubyte.gz") as f:
        images = f.read(16 + 3 * 28 * 28)
    with gzip.open(MNIST_RAW / "t10k-labels-idx1-ubyte.gz") as f:
        labels = f.read(8 + 3)
    return images[:4] + (3).to_bytes(4, "big") + images[8:], labels[:4] + (3).to_bytes(4, "big") + labels[8:]


def _idx_file(draw: st.DrawFn, kind: str) -> bytes:
    """An IDX file (gzipped or not): arbitrary bytes, or the real header and items, as they are or with the
    magic, the dims, the body's length or all of them mutated."""
    real = mnist_heads()[0 if kind == "images" else 1]
    ndim = 3 if kind == "images" else 1
    how = draw(st.sampled_from(["real", "real", "magic", "dims", "body", "all", "bytes"]))
    if how == "bytes":
        data = draw(st.binary(max_size=64))
    else:
        magic, dims = real[:4], list(struct.unpack(f">{ndim}I", real[4:4 + 4 * ndim]))
        body = real[4 + 4 * ndim:]
        if how in ("magic", "all"):
            magic = draw(st.one_of(st.sampled_from([IMAGE_MAGIC, LABEL_MAGIC, 0x0C03, 0x0D03, 0x0B03, 0x0804, 0x0800,
                                                    0, 2**32 - 1]), st.integers(0, 2**32 - 1))).to_bytes(4, "big")
        if how in ("dims", "all"):
            dims = [draw(st.one_of(st.just(d), st.sampled_from(DIMS), st.integers(0, 2**32 - 1))) for d in dims]
        if how in ("body", "all"):
            size = int(np.prod(dims, dtype=object))
            body_len = draw(st.sampled_from(["exact", "exact", "short", "long", "random"]))
            if body_len == "exact" and size <= 100_000:
                body = draw(st.binary(min_size=size, max_size=size)) if size <= 64 else bytes(size)
            elif body_len == "short":
                body = body[:draw(st.integers(0, len(body)))]
            elif body_len == "long":
                body = body + draw(st.binary(min_size=1, max_size=8))
            elif body_len == "random":
                body = draw(st.binary(max_size=64))
            if draw(st.integers(0, 7)) == 0:  # a header cut short
                magic, dims = magic[:draw(st.integers(0, 4))], []
        data = magic + b"".join(d.to_bytes(4, "big") for d in dims) + body
    pack = draw(st.sampled_from(["plain", "plain", "plain", "gzip", "gzip", "gzip", "gzip-truncated", "gzip-flipped"]))
    if pack == "plain":
        return data
    packed = gzip.compress(data, mtime=0)
    if pack == "gzip-truncated":
        return packed[:draw(st.integers(0, len(packed) - 1))]
    if pack == "gzip-flipped":
        i = draw(st.integers(0, len(packed) - 1))
        return packed[:i] + bytes([packed[i] ^ draw(st.integers(1, 255))]) + packed[i + 1:]
    return packed


@st.composite
def idx_quadruples(draw: st.DrawFn) -> dict[str, bytes]:
    """The four IDX files of a --raw-dir (file name -> bytes): train and test each an images/labels pair."""
    files = {}
    for role, name in IDX_FILES.items():
        content = _idx_file(draw, "images" if role.endswith("images") else "labels")
        files[name if content[:2] == b"\x1f\x8b" else name.removesuffix(".gz")] = content
    return files


def _prepare_idx(raw: Path, out: Path) -> dict:
    return prepare(out, raw_dir=raw, shard_size=2, progress=False, log=quiet)


@_settings(4)
@given(files=idx_quadruples())
def test_idx_files(files: dict[str, bytes]) -> None:
    """parse_idx on arbitrary and mutated real IDX files (gzipped or not), load_pair on a pair of them, and
    `prepare --raw-dir` on the quadruple: arrays and shards, or one line."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        for name, content in files.items():
            (raw / name).write_bytes(content)
        paths = {p.name.split("-")[0] + "-" + p.name.split("-")[1]: p for p in raw.iterdir()}
        check(parse_idx, paths["train-images"], kind="images")
        check(parse_idx, paths["train-labels"], kind="labels")
        check(parse_idx, paths["train-labels"], kind="images")
        check(load_pair, paths["t10k-images"], paths["t10k-labels"])
        check(_prepare_idx, raw, Path(tmp) / "out")


# -- npz files -------------------------------------------------------------------------------------------

DESCRS = ["|u1", "<u1", "|i1", "<i8", ">i8", "<u2", ">u2", "<f4", "<f8", "|b1", "<c8", "<U3", "|S2", "|V3", "|O",
          "<M8[s]", "<m8", "<U0", "|V0", "u1", "uint8", "<u16", "x", "", "<i99999999999", "|V999999999999",
          [("a", "|u1")], [("a", "|u1", (2,))], [("a", "|u1", (2**40,))], [("", "|u1")], [("a", "|O")], [],
          [("a",)], [1], 1, None, {"a": 1}]
SHAPES = [(), (0,), (1,), (3,), (0, 2, 2), (2, 3, 3), (2, 3, 3, 1), (2, 3, 3, 3), (2, 1, 3, 3), (2, 3, 3, 2),
          (1, 1, 1), (10_000_001, 1, 1), (1, 4097, 1), (1, 2**31, 2**31), (-1,), (-1, -1), (-3, 2, 2), (2**63,),
          (2, 2, 2, 2, 2), [2, 2, 2], (2.0, 2, 2), ("2", 2, 2), (True, 1, 1)]
HEADER_TEXTS = ["{[]: 1}", "-" * 3000 + "1", "(" * 300 + ")" * 300, "1" * 5000, "[1, 2]", "{'descr': '|u1'}",
                "{1, [2]}", "{'a': " * 150 + "1" + "}" * 150, "", "\x00\xff", "{", "{\n  1\n 2}", "\\", "'",
                "{'descr': '|u1', 'fortran_order': False, 'shape': (1,) * 100}",
                "{'descr': '|u1', 'fortran_order': False, 'shape': (1,), 'x': 1}"]


def _npy(arr: np.ndarray, fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asfortranarray(arr) if fortran else arr, allow_pickle=False)
    return buf.getvalue()


def _npy_member(draw: st.DrawFn) -> bytes:
    """A .npy member: a real array of some dtype and shape, a hand-made header (any descr, fortran_order,
    shape, or another literal) followed by some data, or arbitrary bytes after the magic."""
    how = draw(st.sampled_from(["array", "array", "header", "header", "raw"]))
    if how == "array":
        dtype = np.dtype(draw(st.sampled_from(["u1", "u1", "u1", "i8", "u2", "i1", "f4", "b1", "<U4", "S2", ">u2",
                                               "V2"])))
        shape = draw(st.sampled_from([(0,), (3,), (4, 3, 2), (4, 2, 3, 1), (4, 2, 3, 3), (3, 1, 2, 2), (5, 4, 4),
                                      (4, 0, 3), (0, 2, 2), (2,), (), (4, 3)]))
        count = int(np.prod(shape))
        if dtype.kind == "U":
            arr = np.array(draw(st.lists(st.text(max_size=4), min_size=count, max_size=count)), dtype).reshape(shape)
        else:
            arr = np.frombuffer(draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize)),
                                dtype).reshape(shape)
        return _npy(arr, draw(st.booleans()))
    magic = np.lib.format.magic(*draw(st.sampled_from([(1, 0), (1, 0), (2, 0), (3, 0), (0, 0), (9, 9)])))
    if how == "raw":
        return magic + draw(st.binary(max_size=80))
    shapes = st.one_of(st.sampled_from(SHAPES), st.tuples(*[st.integers(-2, 5)] * draw(st.integers(0, 4))))
    header = {"descr": draw(st.sampled_from(DESCRS)), "fortran_order": draw(st.sampled_from([False, True, 0, "no"])),
              "shape": draw(shapes)}
    text = "{" + "".join(f"'{k}': {v!r}, " for k, v in header.items()) + "}"
    if draw(st.integers(0, 4)) == 0:
        text = draw(st.sampled_from(HEADER_TEXTS))
    body = text.encode("latin-1", "replace")
    body += b" " * (-(len(magic) + 2 + len(body) + 1) % 64) + b"\n"
    length = len(body) if draw(st.integers(0, 5)) else draw(st.integers(0, 2**16 - 1))
    prefix = magic + (struct.pack("<H", length) if magic[6] < 2 else struct.pack("<I", length))
    return prefix + body + bytes(draw(st.sampled_from([0, 1, 3, 4, 9, 12, 18, 36, 54])))


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    """An .npz file: mostly a valid dataset (images N x H x W [x C] uint8, labels, class names, a split of
    its own or not) with a member or two replaced by any .npy member or added, stored or deflated; sometimes
    its zip mangled (truncated, a byte flipped, sizes that lie) or arbitrary bytes."""
    members: dict[str, bytes] = {}
    n = draw(st.integers(0, 6))
    shape = draw(st.sampled_from([(n, 4, 4), (n, 3, 5), (n, 4, 4, 1), (n, 4, 4, 3), (n, 3, 4, 4), (n, 1, 1)]))
    images = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    labels = np.arange(n) % draw(st.sampled_from([1, 2, 3, 300]))
    if draw(st.booleans()):
        members["images"] = _npy(images)
        if draw(st.booleans()):
            members["labels"] = _npy(labels.astype(draw(st.sampled_from(["i8", "u1", "u2", "i4", "f4"]))))
    else:
        members["train_images"] = _npy(images)
        if draw(st.booleans()):
            members["test_images"] = _npy(images[: n // 2])
        if draw(st.booleans()):
            members["train_labels"] = _npy(labels)
            if "test_images" in members and draw(st.integers(0, 3)):
                members["test_labels"] = _npy(labels[: n // 2])
    if draw(st.integers(0, 2)) == 0:
        members["class_names"] = _npy(np.array(draw(st.lists(st.text(max_size=5), max_size=4)), dtype="<U5")) \
            if draw(st.booleans()) else _npy_member(draw)
    names = st.one_of(st.sampled_from(NPZ_ARRAYS), st.sampled_from(["other", "images.npy.npy", "a/b", ""]), any_text)
    for _ in range(draw(st.integers(0, 2))):  # replace or add members
        members[draw(names)] = _npy_member(draw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, content in members.items():
            member = name + (".npy" if draw(st.integers(0, 5)) else "")
            method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
            with contextlib.suppress(UnicodeEncodeError, ValueError):
                zf.writestr(zipfile.ZipInfo(member, (2000, 1, 1, 0, 0, 0)), content, compress_type=method)
    data = buf.getvalue()
    mangle = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip", "sizes", "bytes"]))
    if mangle == "truncate":
        return data[:draw(st.integers(0, len(data)))]
    if mangle == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    if mangle == "sizes":  # every central-directory record claims another uncompressed size
        claim = draw(st.sampled_from([0, 1, 2**20, 2**31 - 1, 2**32 - 1]))
        out = bytearray(data)
        start = 0
        while (i := out.find(b"PK\x01\x02", start)) >= 0:
            out[i + 24:i + 28] = struct.pack("<I", claim)
            start = i + 4
        return bytes(out)
    if mangle == "bytes":
        return draw(st.binary(max_size=100))
    return data


def _zip_variant(how: str) -> bytes:
    """A one-member .npz (`images`, 4 x 3 x 3 uint8, deflated) with its zip damaged: the deflate stream
    ("deflate"), the member flagged encrypted ("encrypted"), an unknown compression method ("method"), or
    a member name that is not UTF-8 though flagged so ("name")."""
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.arange(36, dtype=np.uint8).reshape(4, 3, 3))
    data = bytearray(buf.getvalue())
    central = data.find(b"PK\x01\x02")
    if how == "deflate":
        start = 30 + struct.unpack("<H", data[26:28])[0] + struct.unpack("<H", data[28:30])[0]
        data[start + 2:start + 12] = bytes(range(0xF0, 0xFA))
    elif how == "encrypted":
        data[6] |= 1
        data[central + 8] |= 1
    elif how == "method":
        data[8:10] = data[central + 10:central + 12] = struct.pack("<H", 99)
    elif how == "name":  # a member name flagged UTF-8 (it is not ASCII) whose bytes are not UTF-8
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("images\u00e9.npy", _npy(np.zeros((1, 2, 2), np.uint8)))
        data = bytearray(buf.getvalue())
        data[data.find("\u00e9".encode(), data.find(b"PK\x01\x02"))] = 0xFF
    return bytes(data)


def _npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_of(**members: bytes) -> bytes:
    """An .npz of the given .npy members' bytes, as they are."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name + ".npy", content)
    return buf.getvalue()


def _npz_source(path: Path, resolution: int | None, channels: int | None, test_fraction: float) -> Any:
    return npz_source(path, Transform(resolution, channels), test_fraction).load(quiet)


def _prepare_npz(path: Path, out: Path, resolution: int | None, channels: int | None, test_fraction: float) -> dict:
    return prepare(out, npz=path, resolution=resolution, channels=channels, test_fraction=test_fraction,
                   shard_size=3, progress=False, log=quiet)


def _check_npz_contract(path: Path) -> None:
    """check_npz_arrays: UserError for a bad member; the zip's own errors propagate for the caller to phrase
    (zipfile.BadZipFile and OSError, its docstring says; also a damaged deflate stream, an unknown compression
    method, an encrypted member or a member name flagged UTF-8 that is not: the --npz source and eval's reader
    catch these too)."""
    with contextlib.suppress(zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError,
                             UnicodeDecodeError):
        check_npz_arrays(path)


def _eval_samples(path: Path) -> None:
    """`distgan eval --samples FILE.npz`'s reader (any image size)."""
    from distgan.evaluation.report import load_labelled_samples

    load_labelled_samples(path, None, None)


@_settings(4)
@given(data=npz_files(), resolution=st.sampled_from([None, None, 1, 4]), channels=st.sampled_from([None, None, 1, 3]),
       test_fraction=st.sampled_from([0.0, 0.3, 0.99]))
@example(data=_zip_variant("deflate"), resolution=None, channels=None, test_fraction=0.3)
@example(data=_zip_variant("encrypted"), resolution=None, channels=None, test_fraction=0.3)
@example(data=_zip_variant("method"), resolution=None, channels=None, test_fraction=0.3)
@example(data=_zip_variant("name"), resolution=None, channels=None, test_fraction=0.3)
@example(data=_npz_bytes(images=np.zeros((4, 3, 3), np.uint8), labels=np.arange(4), class_names=np.array("abcd")),
         resolution=None, channels=None, test_fraction=0.3)
@example(data=_zip_of(images=_npy(np.zeros(1, np.uint8)).replace(b"'shape': (1,), }   ", b"'shape': (True,), }")),
         resolution=None, channels=None, test_fraction=0.3)  # a bool dim: numpy's reshape refuses it (TypeError)
def test_npz_files(data: bytes, resolution: int | None, channels: int | None, test_fraction: float) -> None:
    """check_npz_arrays, the --npz source and `prepare --npz`, and eval's samples reader, on any .npz: data,
    or one line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        path.write_bytes(data)
        check(_check_npz_contract, path)
        check(_npz_source, path, resolution, channels, test_fraction)
        check(_prepare_npz, path, Path(tmp) / "out", resolution, channels, test_fraction)
        check(_eval_samples, path)


# -- image folders ---------------------------------------------------------------------------------------

MODES = ["L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "1", "CMYK"]
SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
SUFFIXES = [".png", ".png", ".PNG", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".txt", ""]


def _file_name(draw: st.DrawFn) -> str:
    """A file or folder name the OS accepts: any characters but '/' and NUL, 1..200 UTF-8 bytes, not . or ..;
    sometimes bytes that are not UTF-8 (which Python reads back as surrogate escapes). Newlines included: error
    messages show control characters escaped (see test_a_newline_in_a_file_name)."""
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.binary(min_size=1, max_size=20)).translate(bytes.maketrans(b"/\0", b"__"))
        return os.fsdecode(raw if raw not in (b".", b"..") else b"x")
    name = draw(st.one_of(st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                                  min_size=1, max_size=30),
                          st.sampled_from(["a", "b", "train", "test", " ", " x ", "...", ".hidden", "a.b.c", "x" * 200,
                                           "é", "日本", "🎉", "a\rb", "a\nb", "-", "--", "\t", "\x85", "\u2028"])))
    return "x" if name in (".", "..") or len(os.fsencode(name)) > 200 else name


def _image_bytes(draw: st.DrawFn, suffix: str, size: tuple[int, int], mode: str) -> bytes:
    """An image file's bytes: a small image of `mode` in the suffix's format (else whatever format takes the
    mode), zero bytes, a truncated encoding or random bytes."""
    how = draw(st.sampled_from(["image"] * 12 + ["empty", "truncated", "bytes"]))
    if how == "empty":
        return b""
    if how == "bytes":
        return draw(st.binary(max_size=64))
    img = Image.new(mode, size)
    raw = len(img.tobytes())
    if mode != "P" and draw(st.booleans()):  # some content
        img = Image.frombytes(mode, size, (bytes(range(256)) * (raw // 256 + 1))[:raw])
    data = b""
    for fmt in (SUFFIX_FORMAT.get(suffix.lower(), "PNG"), "PNG", "TIFF"):
        try:
            buf = io.BytesIO()
            img.save(buf, fmt)
            data = buf.getvalue()
            break
        except (OSError, ValueError, KeyError):
            continue
    return data[:draw(st.integers(0, max(0, len(data) - 1)))] if how == "truncated" else data


@st.composite
def image_folders(draw: st.DrawFn) -> list[tuple[tuple[str, ...], bytes | None]]:
    """A folder's entries (relative path parts, file bytes or None for a folder): flat, class folders, train/
    and test/ splits of either, or a broken layout; images mostly of one size and mode (valid), sometimes not."""
    layout = draw(st.sampled_from(["flat", "flat", "classes", "classes", "classes", "splits-classes", "splits-classes",
                                   "splits-flat", "mixed", "nested"]))
    size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    mode = draw(st.sampled_from(["L", "L", "RGB", "RGB", *MODES]))
    entries: list[tuple[tuple[str, ...], bytes | None]] = []

    def images(where: tuple[str, ...], k: int) -> None:
        for _ in range(k):
            suffix = draw(st.sampled_from(SUFFIXES))
            own_size = size if draw(st.integers(0, 7)) else (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
            own_mode = mode if draw(st.integers(0, 7)) else draw(st.sampled_from(MODES))
            entries.append(((*where, _file_name(draw) + suffix), _image_bytes(draw, suffix, own_size, own_mode)))

    def classes(where: tuple[str, ...], names: list[str]) -> None:
        for name in names:
            entries.append(((*where, name), None))
            images((*where, name), draw(st.integers(0, 3)))

    class_names = [_file_name(draw) for _ in range(draw(st.integers(1, 3)))]

    if layout == "flat":
        images((), draw(st.integers(0, 5)))
    elif layout == "classes":
        classes((), class_names)
    elif layout.startswith("splits"):
        for split in ("train", "test"):
            entries.append(((split,), None))
            if layout == "splits-classes":  # test/'s classes: mostly some of train/'s
                classes((split,), class_names if split == "train" or draw(st.integers(0, 3)) else
                        [*class_names[1:], _file_name(draw)])
            else:
                images((split,), draw(st.integers(0, 3)))
    elif layout == "mixed":
        classes((), class_names)
        images((), 1)
    else:
        classes((), class_names)
        name = _file_name(draw)
        entries.append(((name, "inner"), None))
        images((name, "inner"), 1)
    return entries


def _png(mode: str = "L", size: tuple[int, int] = (3, 2)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def _prepare_folder(root: Path, out: Path, resolution: int | None, channels: int | None, test_fraction: float,
                    skip_bad: bool) -> dict:
    return prepare(out, image_folder=root, resolution=resolution, channels=channels, test_fraction=test_fraction,
                   skip_bad=skip_bad, shard_size=4, progress=False, log=quiet)


@_settings(2)
@given(entries=image_folders(), resolution=st.sampled_from([None, None, 1, 3]),
       channels=st.sampled_from([None, None, 1, 3]), test_fraction=st.sampled_from([0.0, 0.0, 0.5]),
       skip_bad=st.booleans())
@example(entries=[(("cl\udcffass",), None), (("cl\udcffass", "a\udcfe.png"), _png())], resolution=None, channels=None,
         test_fraction=0.5, skip_bad=False)  # names that are not UTF-8: hash_fraction encoded them strictly
@example(entries=[(("a.png",), _png("I;16")), (("b.png",), b""), (("c.png",), _png()[:20])], resolution=2,
         channels=3, test_fraction=0.0, skip_bad=True)
def test_image_folders(entries: list, resolution: int | None, channels: int | None, test_fraction: float,
                       skip_bad: bool) -> None:
    """`prepare --image-folder` on folders of any names and images of any mode, size and damage: shards, or
    one line."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        for parts, data in entries:
            path = os.fsencode(root.joinpath(*parts))
            with contextlib.suppress(FileExistsError, IsADirectoryError, NotADirectoryError):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if data is None:
                    os.makedirs(path, exist_ok=True)
                else:
                    with open(path, "wb") as f:
                        f.write(data)
        check(_prepare_folder, root, Path(tmp) / "out", resolution, channels, test_fraction, skip_bad)


def test_a_newline_in_a_file_name(tmp_path):
    """Control characters in a user's file name are shown escaped: the message stays one line and names it."""
    root = tmp_path / "images"
    root.mkdir()
    (root / "a\nb\x1b[2J.png").write_bytes(b"not an image")
    with pytest.raises(UserError) as e:
        prepare(tmp_path / "out", image_folder=root, progress=False, log=quiet)
    one_line(e.value)
    assert "a\\nb\\x1b[2J.png" in str(e.value)


# -- --labels --------------------------------------------------------------------------------------------


@_settings(4)
@given(spec=st.one_of(any_text, st.lists(st.one_of(any_int.map(str), st.integers(-2, 12).map(str), any_text),
                                         max_size=5).map(",".join),
                      st.sampled_from(["all", " ALL ", "0", "9", "10", "-1", "1,,2", "1, 2", "1,\n12", "٣", "1_0",
                                       "+1", "0x1", "1e1", "9" * 5000, ",".join(["1"] * 10_000), "all,1"])),
       num_classes=st.sampled_from([0, 1, 2, 10, 256, 65536]), n=st.integers(1, 50))
@example(spec="1,\n12", num_classes=10, n=3)
@example(spec="a\nb", num_classes=0, n=3)
def test_labels(spec: str, num_classes: int, n: int) -> None:
    """parse_labels (`distgan sample --labels`): n labels in 0..K-1, or one line."""
    labels = check(parse_labels, spec, num_classes, n)
    if not isinstance(labels, UserError):
        assert labels.shape == (n,) and int(labels.min()) >= 0 and int(labels.max()) < num_classes


def test_the_cap_stops_a_runaway_allocation() -> None:
    """The address-space cap of check() is real: 3 GiB more than the process maps fail (MemoryError)."""
    if not Path("/proc/self/statm").exists():
        pytest.skip("no /proc: check() runs without an address-space cap here")
    with pytest.raises(MemoryError):
        check(bytearray, ADDRESS_SPACE + (1 << 30))


# -- bombs, each in a fresh process capped at 2 GB ------------------------------------------------------


def test_yaml_long_alias_bomb_is_refused_at_once(tmp_path):
    """9,000 aliases of a 100 KB scalar: 900 MB once expanded (the repr of which an error message showed),
    from a 140 KB file; the alias budget counts a long scalar's characters."""
    scalar = "x" * 100_000
    aliases = ", ".join(["*s"] * 9000)
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{dir: &s {scalar}}}\nmodel: {{g_hidden: [{aliases}]}}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {DEBUG_CONFIG}\ngrid:\n  data.dir: [&s {scalar}]\n  model.g_hidden: [[{aliases}]]\n")
    for module, func, path in (("distgan.config", "load_config", config), ("distgan.sweep", "load_sweep", sweep)):
        error, seconds = timed_call(module, func, str(path), timeout=60)
        assert error is not None and "aliases" in error and "\n" not in error, error
        assert seconds < BUDGET_S


def _probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Write module `probe` (in tmp_path, put on the children's PYTHONPATH) whose `run(path)` is `body`:
    timed_call passes positional Python literals only, and some parsers take a Path or a keyword."""
    (tmp_path / "probe.py").write_text(f"from pathlib import Path\n\n\ndef run(path):\n    {body}\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), str(REPO),
                                                                 os.environ.get("PYTHONPATH")) if p))


def test_idx_gzip_bomb_reads_only_what_the_header_says(tmp_path, monkeypatch):
    """A 3 MB gzip (40 members of 64 MiB of zeros) behind a header of 1,000 28x28 images: 2.5 GiB once
    inflated; parse_idx stops one byte past the body the header declares."""
    member = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    head = gzip.compress(struct.pack(">IIII", IMAGE_MAGIC, 1000, 28, 28), mtime=0)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(head + member * 40)
    _probe(tmp_path, monkeypatch, "from distgan.data.idx import parse_idx; parse_idx(path, kind='images')")
    error, seconds = timed_call("probe", "run", str(path), timeout=60)
    assert error is not None and "trailing bytes" in error, error
    assert seconds < BUDGET_S


def test_npz_whose_zip_lies_about_sizes(tmp_path, monkeypatch):
    """An .npz whose member claims (in the zip and its .npy header) 1.5 GB of uint8 images but holds a few
    deflated bytes: the --npz source either cannot allocate it or finds the data short - one line either way."""
    n = 1_500_000_000 // (64 * 64)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (n, 64, 64)})
    header = buf.getvalue()
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", header + bytes(4096), compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    claim = len(header) + n * 64 * 64
    i = data.find(b"PK\x01\x02")
    data[i + 24:i + 28] = struct.pack("<I", claim)  # central directory: uncompressed size
    data[22:26] = struct.pack("<I", claim)  # local header too
    path.write_bytes(bytes(data))
    _probe(tmp_path, monkeypatch, "from distgan.data.prepare import prepare; "
                                  "prepare(Path(path).parent / 'out', npz=path, progress=False, log=print)")
    error, seconds = timed_call("probe", "run", str(path), timeout=60)
    assert error is not None and "\n" not in error, error
    assert seconds < 20
