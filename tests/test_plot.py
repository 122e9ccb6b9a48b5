"""`distgan plot`: curves of real training runs (one stopped and resumed) from metrics.jsonl into a PNG,
the panels for evaluation scores, and one-line errors. Real runs and real files, hard timeouts."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from distgan.plotting import load_curves, panels_for, plot_runs
from distgan.run.metrics_file import MetricsFile, read_metrics

DEBUG = "configs/debug.yaml"


def train(shards, run_dir, *overrides):
    return run_cli(["train", "--config", DEBUG, f"data.dir={shards}", f"run.dir={run_dir}", "log.progress=false",
                    "wandb.mode=disabled", *overrides], timeout=240)


def check_png(path, min_bytes=15_000):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"))
    assert path.stat().st_size >= min_bytes and pixels.std() > 10  # lines and text, not a blank canvas
    return pixels.shape


@pytest.mark.slow
def test_plot_two_real_runs_one_resumed(mnist_shards, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(mnist_shards, resumed, "train.steps=10")
    shutil.copytree(resumed, straight)  # a second run, to step 10 only
    train(mnist_shards, resumed, "train.steps=20")
    steps = [r["step"] for r in read_metrics(resumed / "metrics.jsonl") if "loss/d" in r]
    assert steps == [5, 10, 15, 20]  # each step once, in order, across the resume

    out = tmp_path / "plots" / "runs.png"  # a missing directory is made
    proc = run_cli(["plot", str(straight), str(resumed), "--out", str(out), "--title", "debug"], timeout=120)
    assert f"wrote {out}" in proc.stdout
    assert check_png(out) == (int(round(100 * (2.9 + 0.5))), int(round(100 * 3 * 4.2)))  # 1 row of 3 panels
    curves = load_curves(resumed)
    assert curves.label == "resumed" and curves.curves["loss/d"][0].tolist() == [5, 10, 15, 20]
    assert [t for t, _ in panels_for([load_curves(straight), curves])] == [
        "losses", "D outputs (mean probability / score)", "throughput (images/s, all processes)"]


def test_eval_scores_get_a_panel_each(tmp_path):
    run = tmp_path / "eval_run"
    metrics = MetricsFile(run, resume_step=0)
    rng = np.random.default_rng(0)
    for step in range(50, 1001, 50):
        metrics.write(step, {"loss/d": 1 + rng.random(), "loss/g": 2 + rng.random(), "d/real": 0.6, "d/fake": 0.4,
                             "perf/images_per_s": 5000 + 100 * rng.random(), "loss/gp": 0.0})
        if step % 250 == 0:
            metrics.write(step, {"eval/fid": 100 / step, "eval/is": step / 100, "eval/precision": 0.5,
                                 "eval/recall": 0.4, "eval/kid": 0.01, "eval/class_kl": float("nan"),
                                 "eval/kid_std": 0.001, "eval/n": 2000})
    panels = [t for t, _ in panels_for([load_curves(run)])]
    assert panels[3:] == ["eval/fid", "eval/kid", "eval/is", "eval/precision", "eval/recall"]  # none for NaN, _std, n
    out = plot_runs([run], tmp_path / "eval.png")
    assert check_png(out) == (int(round(100 * (3 * 2.9 + 0.5))), int(round(100 * 3 * 4.2)))  # 8 panels: 3 x 3


def test_plot_errors_are_one_line(tmp_path):
    def one_line_error(args, needle):
        proc = run_cli(["plot", *args], timeout=120, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert needle in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]

    good = tmp_path / "good"
    MetricsFile(good, resume_step=0).write(5, {"loss/d": 1.0, "loss/g": 2.0})
    (tmp_path / "no_metrics").mkdir()
    one_line_error([str(tmp_path / "no_metrics"), "--out", str(tmp_path / "a.png")], "has no metrics.jsonl")
    one_line_error([str(tmp_path / "missing"), "--out", str(tmp_path / "a.png")], "is not a run directory")
    one_line_error([str(good), "--out", str(good / "metrics.jsonl" / "a.png")], "is not a directory")
    one_line_error([str(good), "--out", str(tmp_path / "a.xyz")], "unknown image format .xyz")
    empty = tmp_path / "empty"
    MetricsFile(empty, resume_step=0)
    one_line_error([str(empty), "--out", str(tmp_path / "a.png")], "nothing to plot")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*.tmp"))


def test_loading_a_large_metrics_file_streams_it(tmp_path):
    """10 MB of real-format rows (a run of ~28,000 logging calls, an evaluation every 100 steps, a NaN loss, a
    row logged twice after a resume and a torn last line) load in under 3x the file's size (a list of dicts
    took about 12x), with every point, in step order, the last value of a step winning."""
    run = tmp_path / "big"
    run.mkdir()
    path, rng = run / "metrics.jsonl", np.random.default_rng(0)
    keys = ("loss/d", "loss/g", "d/real", "d/fake", "perf/images_per_s", "perf/data_s", "grad_norm/d",
            "grad_norm/g", "lr/g", "lr/d", "epoch")
    with open(path, "w") as f:
        step = 0
        while f.tell() < 10 << 20:
            step += 10
            values = dict(zip(keys, rng.random(len(keys)).tolist(), strict=True))
            row = {"step": step, "time": 1767225600.0 + step, **values}
            f.write(json.dumps(row, separators=(", ", ": ")) + "\n")
            if step % 100 == 0:
                f.write(json.dumps({"step": step, "time": 0.0, "eval/fid": 100 / step}) + "\n")
        f.write(json.dumps({"step": 20, "loss/d": None, "loss/g": -1.0}) + "\n")  # NaN (null), and step 20 again
        f.write('{"step": 30, "loss/d": 7.0')  # torn
    size = path.stat().st_size
    tracemalloc.start()
    try:
        curves = load_curves(run).curves
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
    steps, values = curves["loss/g"]
    assert steps.tolist() == list(range(10, step + 1, 10)) and values[1] == -1.0  # the later step-20 row won
    assert len(curves["loss/d"][0]) == step // 10 and curves["loss/d"][1][2] != 7.0
    assert curves["eval/fid"][0].tolist() == list(range(100, step + 1, 100))
