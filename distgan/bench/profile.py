"""`distgan bench profile`: where one training run's time goes, per step, for a config as it would train.

The real Trainer is built from the config (one process, W&B off, a temporary run directory), warmed up,
then run for `steps` iterations with each part timed: the data, the fake batch (G forward), the D update,
the G update, the EMA, the rest of the iteration (noise, statistics), and the periodic work at its
config's intervals: a logging step, a sample grid, an evaluation of eval.n samples and a checkpoint. The
periodic parts are also shown amortised over their interval, so the table adds up to the time one step
costs in a real run.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from distgan.config import load_config
from distgan.training.trainer import Trainer


def _timed(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
    return wrapper


def profile_config(config: Path, *, steps: int, overrides: Sequence[str] = (), warmup: int = 20) -> dict[str, Any]:
    """Time the parts of `steps` iterations and one of each periodic job of `config`; print the table and return
    {"per_step": {part: seconds}, "periodic": {part: (seconds per call, interval)}}."""
    with tempfile.TemporaryDirectory(prefix="distgan-profile-") as tmp:
        cfg = load_config(config, [*overrides, f"run.dir={Path(tmp) / 'run'}", "resume=never", "wandb.mode=disabled",
                                   "log.progress=false", "log.with=[wandb]"])
        trainer = Trainer(cfg)
        try:
            totals: dict[str, float] = defaultdict(float)
            step_fn, ema = trainer.step_fn, trainer.nets.ema
            step_fn._d_step = _timed(totals, "D update", step_fn._d_step)
            step_fn._g_step = _timed(totals, "G update", step_fn._g_step)
            trainer.nets.g.forward = _timed(totals, "G forward (fake batch)", trainer.nets.g.forward)
            trainer.stream.next_batch = _timed(totals, "data", trainer.stream.next_batch)
            ema.update = _timed(totals, "EMA update", ema.update)
            for _ in range(warmup):
                trainer._iteration()
            totals.clear()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer._iteration()
            wall = time.perf_counter() - t0
            per_step = {k: v / steps for k, v in totals.items()}
            # G's forward inside the G update is the fake batch of the iteration; the update's own time excludes it
            per_step["other (noise, statistics, bookkeeping)"] = wall / steps - sum(per_step.values())
            periodic = _periodic(trainer, cfg)
        finally:
            trainer.close()
    _print(config, steps, per_step, periodic)
    return {"per_step": per_step, "periodic": periodic}


def _periodic(trainer: Any, cfg: Any) -> dict[str, tuple[float, int]]:
    """Seconds of one call of each periodic job of the trainer, and its interval in steps."""
    jobs: list[tuple[str, int, Callable[[], Any]]] = [
        ("logging step", cfg.log.every, lambda: trainer._log_scalars(tqdm(disable=True))),
        ("sample grid", cfg.log.grid_every, trainer._log_grid),
        ("checkpoint", cfg.checkpoint.every, trainer._checkpoint),
    ]
    if cfg.eval.every:
        jobs.append((f"evaluation (eval.n={cfg.eval.n})", cfg.eval.every, trainer._evaluate))
    out = {}
    for name, every, job in jobs:
        t0 = time.perf_counter()
        job()
        out[name] = (time.perf_counter() - t0, every)
    return out


def _print(config: Path, steps: int, per_step: dict[str, float], periodic: dict[str, tuple[float, int]]) -> None:
    amortised = {f"{name} (1/{every} steps)": seconds / every for name, (seconds, every) in periodic.items()}
    total = sum(per_step.values()) + sum(amortised.values())
    print(f"\nwhere the time of one step of {config} goes ({steps} steps timed; periodic work amortised)")
    print(f"{'part':<46} {'ms/step':>9} {'share':>7}")
    for name, seconds in [*sorted(per_step.items(), key=lambda kv: -kv[1]), *amortised.items()]:
        print(f"{name:<46} {seconds * 1e3:>9.2f} {seconds / total:>7.1%}")
    print(f"{'total':<46} {total * 1e3:>9.2f} {1:>7.1%}  ({1 / total:.1f} steps/s)")
    for name, (seconds, every) in periodic.items():
        print(f"one {name}: {seconds:.2f} s, every {every} steps")
