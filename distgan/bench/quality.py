"""`distgan bench quality`: train a config as a user would (`distgan train --config F`, one process), then
score its final and `best` EMA checkpoints on n real-vs-generated samples with the dataset's feature
classifier, and print one table row per (checkpoint, seed) beside the issue's goals.

It is a benchmark, not a test: a 30-minute run on a 2-core CPU. `--minutes M` caps the wall time: at M
minutes the run gets SIGTERM, which the trainer answers by saving a checkpoint and stopping (the step it
reached is in the row), exactly as a preempted job would. The curve of the in-training evaluations
(step, minutes, FID, score, ...) is printed after the table and saved with the scores in
`OUT/<config>-seed<S>/quality.json`, with the time to goal: the steps and wall minutes until the first
in-training evaluation that meets each goal, and all of them at once. Last comes the precision diagnostic
of the final checkpoint (distgan.bench.diagnostic): its scores against truncation of z, and the histogram
of the classifier's confidence on its samples beside the real images'.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distgan.atomic import write_json_atomic
from distgan.bench.diagnostic import format_diagnostic, precision_diagnostic
from distgan.collectives import needs_cpu_flag
from distgan.config import load_config
from distgan.errors import UserError
from distgan.evaluation.report import score
from distgan.run.checkpoint import BEST, STATE_FILE, resolve_checkpoint
from distgan.run.resume import saved_config

# The goals of the quality issue (default classifier, n = 10,000), per shipped config name:
# key -> (comparison, bound). Configs not named here are measured without a goal.
GOALS: dict[str, dict[str, tuple[str, float]]] = {
    "mnist_dcgan": {"fid": ("<=", 0.87), "is": (">=", 9.3), "precision": (">=", 0.75), "recall": (">=", 0.75),
                    "classes": (">=", 10)},
    # Issue 22's goal for the self-conditioned G, no labels read: the unconditional goal above
    "mnist_selfcond": {"fid": ("<=", 0.87), "is": (">=", 9.3), "precision": (">=", 0.75), "recall": (">=", 0.75),
                       "classes": (">=", 10)},
    "mnist_cgan": {"fid": ("<=", 0.50), "is": (">=", 9.6), "precision": (">=", 0.80), "recall": (">=", 0.75),
                   "classes": (">=", 10), "label_accuracy": (">=", 0.98)},
}
COLUMNS = (("fid", "FID", "{:.3f}"), ("is", "score", "{:.2f}"), ("precision", "P", "{:.3f}"),
           ("recall", "R", "{:.3f}"), ("classes", "digits", "{:.0f}"), ("label_accuracy", "label acc", "{:.3f}"),
           ("intra_fid", "intra-FID", "{:.3f}"))


def meets(name: str, scores: dict[str, float]) -> dict[str, bool]:
    """Which of config `name`'s goals `scores` meets (empty when it has none)."""
    out = {}
    for key, (op, bound) in GOALS.get(name, {}).items():
        value = scores.get(key)
        out[key] = value is not None and (value <= bound if op == "<=" else value >= bound)
    return out


def time_to_goals(name: str, curve: Sequence[dict[str, float]]) -> dict[str, dict[str, float] | None]:
    """For each goal of config `name`, and for all of them at once ("all"), the first in-training evaluation
    of `curve` that meets it: {"step", "minutes"}, or None when no evaluation did. Empty without goals."""
    if name not in GOALS:
        return {}
    first: dict[str, dict[str, float] | None] = {key: None for key in (*GOALS[name], "all")}
    for row in curve:
        met = meets(name, row)
        for key in [k for k, ok in met.items() if ok] + (["all"] if all(met.values()) else []):
            if first[key] is None:
                first[key] = {"step": row["step"], "minutes": row["minutes"]}
    return first


def _reached(when: dict[str, float] | None) -> str:
    return f"{when['step']:,.0f} steps ({when['minutes']:.1f} min)" if when else "not reached"


def train_capped(config: Path, seed: int, run_dir: Path, minutes: float, overrides: Sequence[str]) -> dict[str, Any]:
    """Run `distgan train` in a child process; SIGTERM it at `minutes` (it saves and stops). Wall time and status."""
    cmd = [sys.executable, "-m", "distgan", "train", "--config", str(config), f"seed={seed}",
           f"run.dir={run_dir}", "resume=never", "log.progress=false", *overrides]
    print("$ " + " ".join(cmd[2:]), flush=True)
    t0 = time.time()
    child = subprocess.Popen(cmd)
    capped = False
    try:
        child.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        capped = True
        child.send_signal(signal.SIGTERM)  # the trainer saves a checkpoint and exits
        try:
            child.wait(timeout=300)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise UserError(f"`distgan train --config {config}` exited with status {child.returncode}; see its output "
                        f"above")
    return {"start_time": t0, "wall_minutes": (time.time() - t0) / 60, "capped": capped}


def eval_curve(run_dir: Path, start_time: float) -> list[dict[str, float]]:
    """The in-training evaluations of metrics.jsonl: step, minutes since the start, and the eval/ scores."""
    rows = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        if "eval/fid" in row:
            scores = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
            rows.append({"step": row["step"], "minutes": (row["time"] - start_time) / 60, **scores})
    return rows


def _cells(scores: dict[str, Any]) -> str:
    """The COLUMNS of `scores`, right-aligned; "-" for a missing or non-finite value."""
    cells = []
    for key, _, fmt in COLUMNS:
        value = scores.get(key)
        cells.append(fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "-")
    return " ".join(f"{c:>9}" for c in cells)


def _row(label: str, step: int, minutes: float, scores: dict[str, Any]) -> str:
    return f"{label:<28} {step:>6} {minutes:>6.1f} " + _cells(scores)


def _header() -> str:
    return f"{'run':<28} {'step':>6} {'min':>6} " + " ".join(f"{title:>9}" for _, title, _ in COLUMNS)


def bench_quality(config: Path, *, seeds: Sequence[int], minutes: float, n: int, out: Path,
                  overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train and score `config` once per seed; print the table and the curves; return the results."""
    from accelerate import Accelerator

    cfg = load_config(config, list(overrides))  # fails here, with one line, on a bad config or override
    name = cfg.name or config.stem
    accelerator = Accelerator(cpu=needs_cpu_flag())
    results = []
    for seed in seeds:
        run_dir = out / f"{name}-seed{seed}"
        timing = train_capped(config, seed, run_dir, minutes, overrides)
        saved = saved_config(resolve_checkpoint(run_dir))  # the run's data and classifier, overrides included
        curve = eval_curve(run_dir, timing["start_time"])
        entry: dict[str, Any] = {"config": str(config), "seed": seed, **timing, "checkpoints": {}, "curve": curve,
                                 "time_to_goal": time_to_goals(name, curve)}
        for label in ("final", BEST):
            path = run_dir / "checkpoints" / BEST if label == BEST else run_dir
            if label == BEST and not path.is_dir():
                continue
            ckpt = resolve_checkpoint(path)
            step = int(json.loads((ckpt / STATE_FILE).read_text())["state"]["step"])
            scores = score(accelerator, checkpoint=ckpt, n=n, shards=saved.data.dir, classifier=saved.eval.classifier,
                           seed=0)
            keep = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
            entry["checkpoints"][label] = {"path": str(ckpt), "step": step, "scores": keep,
                                           "goals_met": meets(name, keep)}
        entry["diagnostic"] = precision_diagnostic(accelerator, entry["checkpoints"]["final"]["path"],
                                                   shards=saved.data.dir, classifier=saved.eval.classifier, n=n)
        write_json_atomic(run_dir / "quality.json", entry)
        results.append(entry)
    _print(name, results, n)
    return results


def _print(name: str, results: list[dict[str, Any]], n: int) -> None:
    print(f"\nquality of {name} (n={n}, the dataset's default classifier; min = wall minutes of the run)")
    print(_header())
    for entry in results:
        for label, ck in entry["checkpoints"].items():
            print(_row(f"{name} seed {entry['seed']} {label}", ck["step"], entry["wall_minutes"], ck["scores"]))
    if name in GOALS:
        goal = {key: bound for key, (_, bound) in GOALS[name].items()}
        print(_row(f"goal ({name})", 0, 30.0, goal))
        for entry in results:
            for label, ck in entry["checkpoints"].items():
                missed = [k for k, ok in ck["goals_met"].items() if not ok]
                print(f"seed {entry['seed']} {label}: " + ("meets every goal" if not missed
                                                           else "misses " + ", ".join(missed)))
        print("time to goal (first in-training evaluation that meets it; eval.n samples):")
        for entry in results:
            reached = entry["time_to_goal"]
            print(f"seed {entry['seed']}: every goal at once: {_reached(reached['all'])}; " +
                  ", ".join(f"{key} {_reached(when)}" for key, when in reached.items() if key != "all"))
    for entry in (e for e in results if "diagnostic" in e):
        print("\n" + "\n".join(format_diagnostic(f"{name} seed {entry['seed']} final", entry["diagnostic"])))
    for entry in results:
        print(f"\ncurve, seed {entry['seed']} (in-training evaluations):")
        print(f"{'step':>6} {'min':>6} " + " ".join(f"{t:>9}" for _, t, _ in COLUMNS))
        for row in entry["curve"]:
            print(f"{row['step']:>6} {row['minutes']:>6.1f} " + _cells(row))
