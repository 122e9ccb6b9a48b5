"""`distgan bench quality` end to end on the debug config, class-conditional: a real training run capped by
the wall-time limit (SIGTERM, checkpoint, stop) whose in-training evaluations log the conditional scores,
then its checkpoints scored, the table printed and quality.json written."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from distgan.bench.quality import meets, time_to_goals

pytestmark = pytest.mark.slow


def test_bench_quality_caps_the_run_and_scores_it(mnist_shards, eval_classifier, tmp_path):
    out = tmp_path / "bench"
    proc = run_cli(["bench", "quality", "--config", "configs/debug.yaml", "--minutes", "0.3", "--n", "100",
                    "--seeds", "3", "--out", str(out), f"data.dir={mnist_shards}", "train.steps=1000000",
                    "checkpoint.every=1000000", "eval.every=40", "eval.n=100", f"eval.classifier={eval_classifier}",
                    "wandb.mode=disabled", "model.conditional=true"], timeout=300)
    result = json.loads((out / "debug-seed3" / "quality.json").read_text())
    assert result["seed"] == 3 and result["capped"] and 0.3 < result["wall_minutes"] < 3
    final = result["checkpoints"]["final"]
    assert final["step"] > 40 and final["scores"]["n"] == 100 and final["scores"]["fid"] > 0
    assert "best" in result["checkpoints"] and result["curve"][0]["step"] == 40
    assert 0 <= final["scores"]["label_accuracy"] <= 1 and final["scores"]["intra_fid"] > 0
    assert all("label_accuracy" in row and "intra_fid" in row for row in result["curve"])  # logged under eval/
    from PIL import Image

    grid = Image.open(sorted((out / "debug-seed3" / "samples").glob("*.png"))[-1])
    assert grid.height > grid.width  # the debug grid: 10 rows (one per class) of 4
    assert f"{'debug seed 3 final':<28} {final['step']:>6}" in proc.stdout
    assert "curve, seed 3" in proc.stdout
    assert result["time_to_goal"] == {}  # the debug config has no goals
    diagnostic = result["diagnostic"]
    assert [row["psi"] for row in diagnostic["truncation"]] == [1.0, 0.8, 0.6, 0.4]
    assert diagnostic["truncation"][0]["fid"] == pytest.approx(final["scores"]["fid"])  # psi 1: the same samples
    for hist in (diagnostic["confidence"]["samples"], diagnostic["confidence"]["real"]):
        assert len(hist) == len(diagnostic["confidence"]["bins"]) - 1 and sum(hist) == pytest.approx(1)
    assert diagnostic["confidence"]["real"][-1] > 0.5  # the classifier is sure of most real digits
    assert "precision diagnostic, debug seed 3 final" in proc.stdout


def test_goals_are_checked_per_shipped_config():
    good = {"fid": 0.4, "is": 9.7, "precision": 0.85, "recall": 0.8, "classes": 10, "label_accuracy": 0.99}
    assert all(meets("mnist_cgan", good).values()) and set(meets("mnist_cgan", good)) == set(good)
    assert meets("mnist_cgan", {**good, "fid": 0.6})["fid"] is False
    assert meets("mnist_dcgan", {**good, "label_accuracy": None}) == {k: True for k in good if k != "label_accuracy"}
    assert meets("debug", good) == {}


def test_time_to_goal_is_the_first_evaluation_that_meets_it():
    base = {"fid": 0.9, "is": 9.7, "precision": 0.85, "recall": 0.7, "classes": 10, "label_accuracy": 0.99}
    curve = [{"step": 1000, "minutes": 1.5, **base},
             {"step": 2000, "minutes": 3.0, **base, "fid": 0.45},
             {"step": 3000, "minutes": 4.5, **base, "fid": 0.55, "recall": 0.76},  # recall met, FID lost again
             {"step": 4000, "minutes": 6.0, **base, "fid": 0.40, "recall": 0.80}]
    reached = time_to_goals("mnist_cgan", curve)
    assert reached["is"] == {"step": 1000, "minutes": 1.5}
    assert reached["fid"] == {"step": 2000, "minutes": 3.0}
    assert reached["recall"] == {"step": 3000, "minutes": 4.5}
    assert reached["all"] == {"step": 4000, "minutes": 6.0}  # every goal in the same evaluation
    assert time_to_goals("mnist_cgan", curve[:3])["all"] is None
    assert time_to_goals("debug", curve) == {}


def test_the_report_prints_the_time_to_goal(capsys):
    from distgan.bench.quality import _print

    scores = {"fid": 0.4, "is": 9.7, "precision": 0.85, "recall": 0.8, "classes": 10, "label_accuracy": 0.99}
    curve = [{"step": 1000, "minutes": 1.5, **scores, "recall": 0.7}, {"step": 2000, "minutes": 3.2, **scores}]
    entry = {"seed": 0, "wall_minutes": 3.5, "curve": curve, "time_to_goal": time_to_goals("mnist_cgan", curve),
             "checkpoints": {"final": {"step": 2000, "scores": scores, "goals_met": meets("mnist_cgan", scores)}}}
    _print("mnist_cgan", [entry], 100)
    out = capsys.readouterr().out
    assert "seed 0: every goal at once: 2,000 steps (3.2 min); fid 1,000 steps (1.5 min)" in out
    assert "recall 2,000 steps (3.2 min)" in out


def test_bench_profile_breaks_a_step_down(mnist_shards, eval_classifier):
    """`distgan bench profile` on the debug config with an evaluation: every part timed, the shares add up."""
    proc = run_cli(["bench", "profile", "--config", "configs/debug.yaml", "--steps", "20", f"data.dir={mnist_shards}",
                    "eval.every=100", "eval.n=200", f"eval.classifier={eval_classifier}"], timeout=300)
    rows = {}
    for line in proc.stdout.splitlines():
        parts = line.rsplit(maxsplit=2)
        if len(parts) == 3 and parts[2].endswith("%") and not line.startswith(("part", "total")):
            rows[parts[0].strip()] = (float(parts[1]), float(parts[2].rstrip("%")))
    for part in ("D update", "G update", "G forward (fake batch)", "data", "EMA update", "logging step (1/5 steps)",
                 "checkpoint (1/10 steps)", "evaluation (eval.n=200) (1/100 steps)"):
        assert part in rows and rows[part][0] >= 0, (part, proc.stdout)
    assert abs(sum(share for _, share in rows.values()) - 100) < 1.5, proc.stdout
    assert rows["D update"][0] > 0 and rows["G update"][0] > 0
    assert "one evaluation (eval.n=200):" in proc.stdout
