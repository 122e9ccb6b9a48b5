"""Sweeps without a server: a base config and a grid (or a list) of overrides, one trial per SLURM array task.

A sweep file (`configs/sweeps/*.yaml`):

    name: debug_lr               # optional; default: the file's stem. Runs go to ROOT/<name>/
    base: configs/debug.yaml     # the training config every trial starts from (relative to the repo root)
    overrides: [train.steps=50]  # optional: applied to every trial, before the trial's own
    grid:                        # every combination, in key order, the last key changing fastest
      train.lr_g: [0.0001, 0.0002]
      loss.kind: [bce, hinge]
    # or, instead of `grid`, an explicit list of trials:
    # trials:
    #   - {train.lr_g: 0.0001}
    #   - {train.lr_g: 0.0002, loss.kind: hinge}

Trial I trains in `ROOT/<name>/<I>-<slug>` (ROOT: `--root`, else $DISTGAN_RUN_ROOT, else `runs`), the slug
naming its values (`1-lr_g=0.0002-kind=hinge`): the same directory for the same sweep file and index, so a
requeued (or resubmitted) array task resumes its own run. `distgan sweep overrides` also writes
`ROOT/<name>/sweep.json` (every trial's index, overrides and directory), which `distgan sweep summary` reads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distgan.atomic import write_text_atomic
from distgan.config import apply_overrides, load_config, load_yaml_text, read_config_file, read_yaml_file
from distgan.errors import UserError, one_line
from distgan.run.checkpoint import (
    MAX_STATE_BYTES,
    STATE_FILE,
    TrainState,
    complete_checkpoints,
    parse_train_state,
    read_capped,
)
from distgan.run.metrics_file import FILE_NAME as METRICS_FILE
from distgan.run.metrics_file import iter_metrics

MAX_TRIALS = 100_000
MAX_MANIFEST_BYTES = 256 << 20  # sweep.json: MAX_TRIALS trials of a few hundred bytes each
MANIFEST = "sweep.json"
SUMMARY_CSV = "summary.csv"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: `$` would also pass "name\n"


@dataclass
class Sweep:
    """A parsed sweep file: its name, base config, overrides for every trial, and the trials' own."""

    path: Path
    name: str
    base: Path
    fixed: list[str]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def trial(self, index: int) -> dict[str, Any]:
        """Trial `index`'s own values (key -> value); UserError naming the valid range when out of it."""
        if not 0 <= index < len(self.trials):
            raise UserError(f"--index {index} is out of range: {self.path} has {len(self.trials)} trial(s), "
                            f"indices 0 to {len(self.trials) - 1} (sbatch --array=0-{len(self.trials) - 1})")
        return self.trials[index]

    def trial_overrides(self, index: int) -> list[str]:
        """The `key=value` overrides of trial `index` (the fixed ones first), without run.dir."""
        return [*self.fixed, *(f"{k}={render(v)}" for k, v in self.trial(index).items())]

    def trial_dir(self, index: int, root: str | Path) -> Path:
        """ROOT/<name>/<index>-<slug>: stable for the same file and index."""
        width = len(str(max(len(self.trials) - 1, 0)))
        slug = trial_slug(self.trial(index))
        return Path(root) / self.name / (f"{index:0{width}d}-{slug}" if slug else f"{index:0{width}d}")

    def train_args(self, index: int, root: str | Path) -> list[str]:
        """Trial `index`'s overrides plus its run.dir, checked against the base config (one-line errors)."""
        args = [*self.trial_overrides(index), f"run.dir={self.trial_dir(index, root)}"]
        try:
            load_config(self.base, args)
        except UserError as e:
            raise UserError(f"{self.path}, trial {index}: {e}") from None
        return args

    def check_trials(self, root: str | Path) -> list[str]:
        """Check every trial against the base config: a one-line UserError naming the invalid trials (each one's
        first error); else one warning line per trial that trains the same config as an earlier one."""
        base = read_config_file(self.base)
        errors: list[str] = []
        first: dict[bytes, int] = {}  # digest of a trial's resolved config (run.dir aside) -> its first trial
        warnings: list[str] = []
        for i in range(len(self.trials)):
            try:
                cfg = apply_overrides(base, [*self.trial_overrides(i), f"run.dir={self.trial_dir(i, root)}"])
            except UserError as e:
                errors.append(f"trial {i}: {e}")
                continue
            data = cfg.to_dict()
            data["run"].pop("dir", None)
            digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).digest()
            if digest in first:
                warnings.append(f"trial {i} trains the same config as trial {first[digest]} "
                                f"({' '.join(self.trial_overrides(i)) or 'the base config'}): the run is repeated")
            first.setdefault(digest, i)
        if errors:
            more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
            raise UserError(f"sweep file {self.path}: {len(errors)} of {len(self.trials)} trials are invalid: "
                            f"{'; '.join(errors[:3])}{more}")
        return warnings

    def manifest(self, root: str | Path) -> dict[str, Any]:
        """What `sweep.json` holds: the sweep and, per trial, its index, values, overrides and run directory."""
        return {"format": "distgan-sweep/1", "name": self.name, "sweep_file": str(self.path),
                "base": str(self.base), "overrides": self.fixed,
                "trials": [{"index": i, "values": t, "overrides": self.trial_overrides(i),
                            "run_dir": self.trial_dir(i, root).name} for i, t in enumerate(self.trials)]}


_RENDERED: dict[tuple[type, str], str] = {}  # (type, repr) -> render(value): a grid repeats its values
_RENDERED_MAX = 10_000


def render(value: Any) -> str:
    """A value as the YAML text of a `key=value` override that reads back as the same value."""
    key = (type(value), repr(value))  # repr tells 1 from 1.0 and "1", and [True] from [1]
    text = _RENDERED.get(key)
    if text is None:
        text = _render(value)
        if len(_RENDERED) < _RENDERED_MAX:
            _RENDERED[key] = text
    return text


def _render(value: Any) -> str:
    text = _dump(value)
    if isinstance(value, str) and value:
        try:
            if load_yaml_text(value, f"sweep value {value[:40]!r}") == value:
                text = value  # plain: hinge, 1e-4 (a string to YAML 1.1, a number to the config)
        except yaml.YAMLError:
            pass
    if "\n" in text or yaml.safe_load(text) != value:
        raise UserError(f"sweep value {value!r} cannot be written as one override; use a plain number, "
                        "string, boolean or list")
    return text


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def trial_slug(values: dict[str, Any], limit: int = 80) -> str:
    """`lr_g=0.0002-kind=hinge`: each key's last part and its value, in characters safe in a path."""
    parts = []
    for key, value in values.items():
        text = re.sub(r"[^A-Za-z0-9._,+-]+", "", render(value).replace(", ", ","))
        parts.append(f"{key.split('.')[-1]}={text}")
    return "-".join(parts)[:limit].rstrip("-=")


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise UserError(f"{where}: {key!r} is not a dotted config key such as train.lr_g")
    if key == "run.dir":
        raise UserError(f"{where}: run.dir is set by the sweep (ROOT/<name>/<index>-<values>); remove it")
    return key


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (one-line UserError naming the file and the problem)."""
    path = Path(path)
    try:
        data = read_yaml_file(path, "sweep file")
    except FileNotFoundError:
        raise UserError(f"sweep file {path} not found (see configs/sweeps/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read sweep file {path}: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError:
        raise UserError(f"sweep file {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"sweep file {path}: the top level must be a mapping (name, base, overrides, grid or trials)")
    unknown = sorted(set(data) - {"name", "base", "overrides", "grid", "trials"}, key=str)  # keys: any YAML type
    if unknown:
        raise UserError(f"sweep file {path}: unknown key {unknown[0]!r} (known: name, base, overrides, grid, trials)")
    name = data.get("name", re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-") or "sweep")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 100:
        raise UserError(f"sweep file {path}: name {name!r} must be letters, digits, '.', '_' or '-'")
    base = data.get("base")
    if not isinstance(base, str) or not base or "\n" in base:
        raise UserError(f"sweep file {path}: `base` must name the training config, e.g. base: configs/debug.yaml")
    if not Path(base).is_file():
        raise UserError(f"sweep file {path}: base config {base} not found (paths are relative to the repo root, "
                        f"where you run distgan and sbatch)")
    fixed = data.get("overrides") or []
    if not isinstance(fixed, list) or not all(isinstance(o, str) and "=" in o for o in fixed):
        raise UserError(f"sweep file {path}: `overrides` must be a list of key=value strings")
    for o in fixed:
        _check_key(o.split("=", 1)[0], f"sweep file {path}, overrides")
    grid, trials = data.get("grid"), data.get("trials")
    if (grid is None) == (trials is None):
        raise UserError(f"sweep file {path}: give exactly one of `grid` (key: [values]) or `trials` (a list)")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise UserError(f"sweep file {path}: `grid` must map config keys to lists of values")
        for key, values in grid.items():
            _check_key(key, f"sweep file {path}, grid")
            if not isinstance(values, list) or not values:
                raise UserError(f"sweep file {path}: grid key {key} needs a non-empty list of values")
        count = math.prod(len(v) for v in grid.values())
        if count > MAX_TRIALS:
            raise UserError(f"sweep file {path}: the grid has {count} trials, more than {MAX_TRIALS}")
        keys = list(grid)
        trials = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    else:
        if not isinstance(trials, list) or not trials or not all(isinstance(t, dict) for t in trials):
            raise UserError(f"sweep file {path}: `trials` must be a non-empty list of mappings (key: value)")
        if len(trials) > MAX_TRIALS:
            raise UserError(f"sweep file {path}: {len(trials)} trials, more than {MAX_TRIALS}")
        for i, trial in enumerate(trials):
            for key in trial:
                _check_key(key, f"sweep file {path}, trial {i}")
    checked: set[int] = set()  # each value object once: a grid value recurs in many trials, an alias too
    for trial in trials:
        for value in trial.values():
            if id(value) not in checked:
                render(value)
                checked.add(id(value))
    return Sweep(path=path, name=name, base=Path(base), fixed=list(fixed), trials=trials)


def default_root() -> str:
    """Where sweeps put their runs: $DISTGAN_RUN_ROOT, else `runs` (as train.sbatch)."""
    return os.environ.get("DISTGAN_RUN_ROOT") or "runs"


def write_manifest(sweep: Sweep, root: str | Path) -> Path:
    """ROOT/<name>/sweep.json, atomically; left alone when it already says the same (every task writes it)."""
    path = Path(root) / sweep.name / MANIFEST
    text = json.dumps(sweep.manifest(root), indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)
    return path


# -- summary ----------------------------------------------------------------------------------------------


def _read_json(path: Path, limit: int) -> Any:
    """The JSON data of `path`, or None when it is absent, no regular file (a FIFO would block), unreadable,
    larger than `limit` bytes or not JSON."""
    if not path.is_file():
        return None
    try:
        data = read_capped(path, limit)
        return json.loads(data) if data is not None else None
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested 1,000s deep
        return None


def _checkpoint_state(ckpt: Path) -> TrainState | None:
    """The training state saved in checkpoint `ckpt` (a best FID that is none: None; fields of other versions
    ignored), or None when its trainer_state.json holds no valid one (not JSON, not a mapping, a bad count)."""
    data = _read_json(ckpt / STATE_FILE, MAX_STATE_BYTES)
    state = data.get("state") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        return None
    known = {k: state[k] for k in ("step", "epoch", "start_sample") if k in state}
    try:
        return parse_train_state({"state": {**known, "best_fid": valid_fid(state.get("best_fid"))}})
    except ValueError:
        return None


def _best_eval(run_dir: Path) -> tuple[float, dict[str, Any]] | None:
    """(FID, row) of RUN_DIR/metrics.jsonl's row with the lowest valid FID (the earliest step among equals),
    streamed: memory stays at a row whatever the file's size. None without such a row or a readable file."""
    best = None
    if not (run_dir / METRICS_FILE).is_file():  # absent, or a FIFO that would block
        return None
    try:
        for row in iter_metrics(run_dir / METRICS_FILE):
            fid = valid_fid(row.get("eval/fid"))  # only valid FIDs compete: min() would keep a NaN that came first
            if fid is not None and (best is None or (fid, row["step"]) < (best[0], best[1]["step"])):
                best = (fid, row)
    except OSError:  # unreadable: the rows read so far stand
        pass
    return best


def _locked(run_dir: Path) -> bool:
    """True while a process holds the run directory's lock (a run is training in it now)."""
    import fcntl

    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def valid_fid(value: Any) -> float | None:
    """`value` as an FID that can rank a trial: a finite number >= 0 (FID is a distance). NaN, inf, a negative
    number, a bool or anything else is no FID (None): such a trial sorts last, with an empty best_fid."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        fid = float(value)
    except OverflowError:  # an integer too large for a float: JSON reads 400 digits as a Python int
        return None
    return fid if math.isfinite(fid) and fid >= 0 else None


def _run_config(run_dir: Path) -> Any:
    """RUN_DIR/config.yaml's data, or None when absent or unreadable (the summary then knows no step target)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        return read_yaml_file(path, "run config")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, UserError):  # one bad run must not hide the others
        return None


def trial_row(run_dir: Path, trial: dict[str, Any] | None) -> dict[str, Any]:
    """One trial's summary: index, overrides, steps done and planned, status, best FID and the other scores
    logged with it (from metrics.jsonl when present), from the run's files only."""
    cfg = _run_config(run_dir)
    train = cfg.get("train") if isinstance(cfg, dict) else None
    steps = train.get("steps") if isinstance(train, dict) else None
    # any other shape (a hand-edited config.yaml) leaves the target unknown: one bad run must not hide the others
    target = steps if isinstance(steps, int) and not isinstance(steps, bool) else None
    ckpts = complete_checkpoints(run_dir, warn=False)
    state = _checkpoint_state(ckpts[-1][1]) if ckpts else TrainState()
    step, best_fid = (state.step, valid_fid(state.best_fid)) if state is not None else (None, None)
    scores: dict[str, Any] = {}
    best_step = None
    best = _best_eval(run_dir)
    if best is not None:
        best_fid, row = best
        best_step = row["step"]
        scores = {k[5:]: v for k, v in row.items() if k.startswith("eval/") and k != "eval/fid"}
    if _locked(run_dir):
        status = "running"
    elif not ckpts:
        status = "not started" if not (run_dir / "config.yaml").exists() else "no checkpoint"
    elif step is None:  # a hand-edited or damaged trainer_state.json: flagged, the other runs still listed
        status = f"damaged {STATE_FILE}"
    elif target is not None and step >= target:
        status = "finished"
    else:
        status = "stopped"
    trial = trial or {}
    index = trial.get("index")
    if isinstance(index, bool) or not isinstance(index, int):  # not in sweep.json, or hand-edited: from the name
        m = re.match(r"^(\d+)", run_dir.name)
        index = int(m.group(1)) if m else None
    return {"index": index, "trial": run_dir.name, "status": status, "step": step, "steps": target,
            "best_fid": best_fid, "best_step": best_step, "scores": scores,
            "overrides": _own_overrides(trial.get("values")), "run_dir": str(run_dir)}


def _own_overrides(values: Any) -> str:
    """A trial's own `key=value` overrides (what differs per trial); a hand-edited value that is no override
    is shown as its repr, values that are not a mapping as nothing."""
    if not isinstance(values, dict):
        return ""
    parts = []
    for key, value in values.items():
        try:
            text = render(value)
        except (UserError, yaml.YAMLError, ValueError, RecursionError):
            text = repr(value)[:80]
        parts.append(f"{key}={text}")
    return one_line(" ".join(parts))


def _manifest_trials(root: Path) -> dict[str, dict[str, Any]]:
    """ROOT/sweep.json's trials by run directory name; entries that are not a mapping with a plain directory
    name (a hand-edited or damaged file) are left out, and those directories are summarised from their files."""
    manifest = _read_json(root / MANIFEST, MAX_MANIFEST_BYTES)
    trials = manifest.get("trials") if isinstance(manifest, dict) else None
    if not isinstance(trials, list):
        return {}
    return {t["run_dir"]: t for t in trials if isinstance(t, dict) and _plain_name(t.get("run_dir"))}


def _plain_name(name: Any) -> bool:
    """Whether `name` is one directory entry's name (no path, nothing outside ROOT)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def summarize(root: str | Path) -> list[dict[str, Any]]:
    """A row per trial of the sweep whose runs are under `root` (ROOT/<name>), best FID first (none last).

    Trials listed in ROOT/sweep.json that have no directory yet are listed as `not started`.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass the sweep's run root, e.g. runs/<sweep name>")
    trials = _manifest_trials(root)
    dirs = {p.name: p for p in root.iterdir() if p.is_dir() and ((p / "config.yaml").exists() or
                                                                  (p / "checkpoints").is_dir())}
    names = sorted(set(dirs) | set(trials))
    if not names:
        raise UserError(f"{root} holds no sweep trials (no {MANIFEST} and no run directories)")
    rows = [trial_row(dirs.get(n, root / n), trials.get(n)) for n in names]

    def order(row: dict[str, Any]) -> tuple:
        fid = valid_fid(row["best_fid"])  # None (no valid FID) sorts after every number
        return (fid is None, fid if fid is not None else 0.0,
                row["index"] if row["index"] is not None else math.inf, row["trial"])

    return sorted(rows, key=order)


def _score_keys(rows: list[dict[str, Any]]) -> list[str]:
    preferred = ["kid", "is", "precision", "recall", "classes", "class_kl"]
    found = {k for r in rows for k in r["scores"]}
    return [k for k in preferred if k in found] + sorted(found - set(preferred))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def summary_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells: index, trial, status, step, steps, best_fid, best_step, scores, overrides."""
    keys = _score_keys(rows)
    header = ["index", "trial", "status", "step", "steps", "best_fid", "best_step", *keys, "overrides"]
    cells = [[_cell(r["index"]), r["trial"], r["status"], _cell(r["step"]), _cell(r["steps"]), _cell(r["best_fid"]),
              _cell(r["best_step"]), *(_cell(r["scores"].get(k)) for k in keys), r["overrides"]] for r in rows]
    return header, cells


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The summary as an aligned text table."""
    header, cells = summary_table(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def write_summary_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The summary as CSV (same columns as the table, plus run_dir), written atomically."""
    header, cells = summary_table(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*header, "run_dir"])
    for row, r in zip(cells, rows, strict=True):
        writer.writerow([*row, r["run_dir"]])
    write_text_atomic(path, buf.getvalue())


__all__ = ["Sweep", "default_root", "format_summary", "load_sweep", "render", "summarize", "trial_slug",
           "write_manifest", "write_summary_csv"]
