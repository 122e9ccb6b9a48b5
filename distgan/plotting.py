"""Training curves from RUN_DIR/metrics.jsonl, without W&B: `distgan plot RUN_DIR [RUN_DIR ...] --out FILE.png`.

One panel each for the losses (loss/d, loss/g), D's outputs (d/real, d/fake), throughput (images/s), and
every evaluation score the runs logged (eval/fid, eval/kid, eval/is, eval/precision, ...), against the
step. Several runs are overlaid, one colour per run (named by its directory); within a panel, the line
style tells the keys apart. Drawn with matplotlib's Agg canvas (no display, no pyplot state) and written
atomically.
"""

from __future__ import annotations

import errno
import io
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distgan.atomic import write_bytes_atomic
from distgan.errors import UserError
from distgan.run.metrics_file import FILE_NAME, iter_metrics

PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("losses", ("loss/d", "loss/g")),
    ("D outputs (mean probability / score)", ("d/real", "d/fake")),
    ("throughput (images/s, all processes)", ("perf/images_per_s",)),
)
EVAL_ORDER = ("eval/fid", "eval/kid", "eval/is", "eval/precision", "eval/recall")  # then the others, sorted
NOT_SCORES = ("eval/n",)  # bookkeeping; like the `*_std` spreads, logged but not given a panel
STYLES = ("-", "--", ":", "-.")


@dataclass
class RunCurves:
    """One run's curves: label, and key -> (steps int64, values float64) sorted by step (the last value of
    a step wins)."""

    label: str
    curves: dict[str, tuple[np.ndarray, np.ndarray]]


def _finite(value: object) -> float | None:
    """A logged number as a finite float; None for anything else (a string, a bool, null, NaN, 1e999)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _sorted_curve(steps: array, values: array) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) as arrays over the same memory, sorted by step with one value per step (the last)."""
    s, v = np.frombuffer(steps, dtype=np.int64), np.frombuffer(values, dtype=np.float64)
    if len(s) < 2 or bool(np.all(s[1:] > s[:-1])):  # the usual case: in order, each step once
        return s, v
    order = np.argsort(s, kind="stable")  # equal steps keep their file order: the last one is kept
    s, v = s[order], v[order]
    last = np.append(s[1:] != s[:-1], True)
    return s[last], v[last]


def load_curves(run_dir: str | Path, label: str | None = None) -> RunCurves:
    """The numeric curves of RUN_DIR/metrics.jsonl; UserError (one line) when there is no such file."""
    run_dir = Path(run_dir)
    path = run_dir / FILE_NAME
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (no such directory)")
    if not path.is_file():
        raise UserError(f"{run_dir} has no {FILE_NAME}: not a distgan run directory, or a run from before "
                        f"metrics.jsonl was written (plot its W&B run instead)")
    points: dict[str, tuple[array, array]] = {}  # key -> (steps, values): 16 bytes a point
    try:
        for row in iter_metrics(path):  # a line at a time: memory follows the points, not the file
            step = row["step"]
            if not -2**63 <= step < 2**63:
                continue
            for key, value in row.items():
                number = _finite(value) if key not in ("step", "time") else None
                if number is not None:
                    steps, values = points.setdefault(key, (array("q"), array("d")))
                    steps.append(step)
                    values.append(number)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    curves = {key: _sorted_curve(*points.pop(key)) for key in list(points)}
    return RunCurves(label or run_dir.resolve().name, curves)


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names; where two runs share a name, parent/name."""
    names = [p.resolve().name for p in run_dirs]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(run_dirs, names, strict=True)]


def panels_for(runs: Sequence[RunCurves]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels that have data in at least one run: the fixed ones, then one per evaluation score."""
    present = {key for run in runs for key in run.curves}
    panels = [(title, tuple(k for k in keys if k in present)) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    scores = (k for k in present if k.startswith("eval/") and not k.endswith("_std") and k not in NOT_SCORES)
    evals = sorted(scores,
                   key=lambda k: (EVAL_ORDER.index(k) if k in EVAL_ORDER else len(EVAL_ORDER), k))
    return panels + [(key, (key,)) for key in evals]


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None,
              dpi: int = 100) -> Path:
    """Draw the runs' curves into `out` (format from its suffix: png, svg, pdf...), atomically; returns `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    out = Path(out)
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UserError("no run directory given")
    runs = [load_curves(d, label) for d, label in zip(dirs, _labels(dirs), strict=True)]
    panels = panels_for(runs)
    if not panels:
        raise UserError(f"nothing to plot: no logged rows yet in {', '.join(str(d / FILE_NAME) for d in dirs)}")

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 2.9 * rows + 0.5), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    formats = canvas.get_supported_filetypes()
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in formats:
        raise UserError(f"cannot write {out}: unknown image format {out.suffix or '(no suffix)'}; "
                        f"use one of {', '.join('.' + f for f in sorted(formats))}")
    colors = [f"C{i % 10}" for i in range(len(runs))]
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (panel_title, keys) in zip(axes, panels, strict=False):
        for run, color in zip(runs, colors, strict=True):
            for key, style in zip(keys, STYLES, strict=False):
                if key in run.curves:
                    steps, values = run.curves[key]
                    ax.plot(steps, values, style, color=color, lw=1.4, marker="." if len(steps) < 30 else None)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(keys) > 1:  # line styles tell the keys apart; colours are the runs (figure legend)
            ax.legend([Line2D([], [], ls=s, color="0.3") for s in STYLES[:len(keys)]], keys, fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.legend([Line2D([], [], color=c, lw=2) for c in colors], [run.label for run in runs], loc="outside upper center",
               ncols=min(len(runs), 4), fontsize=9, frameon=False, title=title)  # the title above the run names
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    try:
        write_bytes_atomic(out, buf.getvalue())
    except UserError:
        raise
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTDIR):
            raise UserError(f"cannot write {out}: {out.parent} is not a directory") from None
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    return out


__all__ = ["PANELS", "RunCurves", "load_curves", "panels_for", "plot_runs"]
