"""TensorBoard as a second accelerate tracker (`log.with`): real `distgan train` runs whose event files are
read back with TensorBoard's own EventAccumulator; a requeued run's events replace the dead run's."""

from __future__ import annotations

import io
import shutil
import subprocess
import time

import numpy as np
import pytest
from conftest import PYTHON, REPO, child_env, run_cli, wandb_history
from PIL import Image

from distgan.run.metrics_file import read_metrics

pytestmark = pytest.mark.slow  # real training runs

DEBUG = "configs/debug.yaml"


def train(shards, run_dir, *overrides, check=True, env=None):
    return run_cli(["train", "--config", DEBUG, f"data.dir={shards}", f"run.dir={run_dir}", "log.progress=false",
                    *overrides], timeout=240, check=check, env=env)


def events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_images_and_config_go_to_tensorboard_and_wandb(mnist_shards, tmp_path):
    run = tmp_path / "run"
    train(mnist_shards, run, "log.with=[wandb,tensorboard]", "wandb.mode=offline")
    board = events(run)
    tags = board.Tags()
    for key in ("loss/d", "loss/g", "d/real", "d/fake", "perf/images_per_s", "grad_norm/g", "lr/d"):
        assert key in tags["scalars"], key
    loss = board.Scalars("loss/d")
    assert [e.step for e in loss] == [5, 10, 15, 20]
    jsonl = {r["step"]: r["loss/d"] for r in read_metrics(run / "metrics.jsonl")}
    assert [e.value for e in loss] == pytest.approx([jsonl[s] for s in (5, 10, 15, 20)], rel=1e-6)

    grids = board.Images("samples")
    assert [g.step for g in grids] == [1, 10, 20]  # log.grid_every=10, and step 1
    side = 4 * 28 + 5 * 2  # log.grid_size=4, 2 px padding
    assert (grids[-1].width, grids[-1].height) == (side, side)
    png = np.asarray(Image.open(io.BytesIO(grids[-1].encoded_image_string)))
    saved = np.asarray(Image.open(run / "samples" / "step_0000020.png"))
    assert np.array_equal(png.reshape(saved.shape[0], saved.shape[1], -1)[..., 0], saved)  # the same grid, uint8
    assert "config/text_summary" in tags["tensors"]  # the resolved config, as text

    rows = wandb_history(run)  # W&B still gets everything, its grid as a wandb.Image
    assert [r["_step"] for r in rows if "loss/d" in r] == [5, 10, 15, 20]
    assert any(r.get("samples._type") == "image-file" for r in rows)


def test_requeued_run_replaces_the_events_past_its_checkpoint(mnist_shards, tmp_path):
    """A run that logged steps 15 and 20 but whose step-20 checkpoint is lost (it died while saving) resumes
    from step 10: TensorBoard and metrics.jsonl hold 15 and 20 once, from the resumed run. W&B is out of
    log.with, so wandb.mode=online needs no login and starts nothing."""
    run = tmp_path / "run"
    common = ["log.with=[tensorboard]", "wandb.mode=online", "checkpoint.keep=5"]
    train(mnist_shards, run, *common)
    assert not (run / "wandb").exists() and not (run / "wandb_run_id").exists()
    shutil.rmtree(run / "checkpoints" / "step_0000020")
    resumed_at = time.time()
    proc = train(mnist_shards, run, *common)
    assert "step_0000010" in proc.stdout + proc.stderr
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per start

    loss = events(run).Scalars("loss/d")
    assert [e.step for e in loss] == [5, 10, 15, 20]
    assert [e.wall_time > resumed_at for e in loss] == [False, False, True, True]
    assert [g.step for g in events(run).Images("samples")] == [1, 10, 20]
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert [r["time"] > resumed_at for r in rows] == [False, False, True, True]


def test_tensorboard_errors_are_one_line(mnist_shards, tmp_path):
    proc = train(mnist_shards, tmp_path / "a", "log.with=[mlflow]", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'log.with[0]': expected one of 'wandb' or 'tensorboard'" in proc.stderr.strip().splitlines()[-1]

    # Without the tensorboard package (hidden from the import system), before anything starts:
    hide = ("import sys; sys.modules['tensorboard'] = sys.modules['tensorboardX'] = None; "
            "from distgan.cli import main; sys.exit(main(sys.argv[1:]))")
    run = tmp_path / "b"
    proc = subprocess.run([PYTHON, "-c", hide, "train", "--config", DEBUG, f"data.dir={mnist_shards}",
                           f"run.dir={run}", "log.with=[wandb,tensorboard]", "wandb.mode=offline"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "tensorboard package is not installed" in last and "distgan[tensorboard]" in last
    assert not run.exists()  # refused before the run directory was made
