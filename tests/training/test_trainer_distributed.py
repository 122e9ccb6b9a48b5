"""Real 2-process training on CPU (gloo) through `accelerate launch --multi_gpu --num_processes 2`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, accelerate_launch, assert_same_weights, final_weights, wandb_history

from distgan.run.checkpoint import complete_checkpoints

pytestmark = pytest.mark.slow


def read_rank_reports(run_dir: Path) -> list[dict]:
    """All ranks' RUN_DIR/ranks/rank_<R>.json reports, by rank."""
    files = sorted((run_dir / "ranks").glob("rank_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    return [json.loads(p.read_text()) for p in files]


def launch_train(shards, run_dir, *overrides, timeout=240):
    return accelerate_launch(["-m", "distgan", "train", "--config", "configs/debug.yaml", f"data.dir={shards}",
                              f"run.dir={run_dir}", "wandb.mode=offline", *overrides], timeout=timeout)


def test_two_process_debug_run(mnist_shards, tmp_path):
    run = tmp_path / "run"
    launch_train(mnist_shards, run)
    reports = read_rank_reports(run)
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["step"] == 20 for r in reports)
    assert reports[0]["g_sha256"] == reports[1]["g_sha256"] and reports[0]["d_sha256"] == reports[1]["d_sha256"]
    assert [s for s, _ in complete_checkpoints(run)] == [10, 20]
    state = json.loads((run / "checkpoints/step_0000020/trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["state"]["start_sample"] == 20 * 16 * 2
    rows = wandb_history(run)
    scalars = [r for r in rows if "loss/d" in r]
    assert [r["_step"] for r in scalars] == [5, 10, 15, 20] and all(np.isfinite(r["loss/g"]) for r in scalars)
    assert any(r.get("samples._type") == "image-file" for r in rows)
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run, from the main process only


def test_two_process_resume_is_exact(small_mnist_shards, tmp_path):
    """A conditional GAN with DiffAugment and lazy R1 (WGAN-GP's penalty too) in 2 processes: resume equals the
    straight run, across an epoch boundary (2,000 real digits)."""
    common = ["train.batch_size=100", "checkpoint.every=4", "checkpoint.keep=10",  # 10 steps per epoch
              "model.conditional=true", "loss.kind=wgan-gp", "augment.policy=translation,cutout",
              "loss.r1_gamma=1", "loss.r1_every=4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    launch_train(small_mnist_shards, straight, "train.steps=12", *common)
    launch_train(small_mnist_shards, split, "train.steps=6", *common)
    launch_train(small_mnist_shards, split, "train.steps=12", *common)
    assert_same_weights(final_weights(straight), final_weights(split))
    reports = read_rank_reports(split)
    assert {r["g_sha256"] for r in reports} == {read_rank_reports(straight)[0]["g_sha256"]}


def test_ddp_g_step_sends_no_d_allreduce_and_keeps_d(tmp_path):
    out = tmp_path / "probe"
    accelerate_launch([str(REPO / "tests" / "ddp_step_probe.py"), str(out)], timeout=180)
    reports = [json.loads((out / f"rank_{r}.json").read_text()) for r in (0, 1)]
    for r in reports:
        assert r["world_size"] == 2
        assert r["d_step_calls"]["d"] > 0 and r["d_step_calls"]["g"] == 0
        assert r["g_step_calls"]["d"] == 0, "D gradients were all-reduced during the G step"
        assert r["g_step_calls"]["g"] > 0
        assert r["d_unchanged_by_g_step"] and r["d_grads_unchanged_by_g_step"]
    assert reports[0]["g_sha256"] == reports[1]["g_sha256"] and reports[0]["d_sha256"] == reports[1]["d_sha256"]


def test_two_processes_save_a_checkpoint_at_every_step(mnist_shards, tmp_path):
    """The checkpoint stress test for 2 processes (4 run on the two-node SLURM cluster, launch/test_slurm.py): a save
    at every one of 100 steps, pruned to the newest two, never a failure; each rank makes durable only what
    it wrote, so no rank lists files that another is still renaming into place."""
    from distgan.run.checkpoint import checkpoint_problem

    run = tmp_path / "run"
    proc = launch_train(mnist_shards, run, "train.steps=100", "checkpoint.every=1", "checkpoint.keep=2",
                        "log.every=50", "log.grid_every=1000", "wandb.mode=disabled", "log.progress=false")
    assert "Traceback" not in proc.stderr
    saved = complete_checkpoints(run, warn=False)
    assert [step for step, _ in saved] == [99, 100]
    assert all(checkpoint_problem(path) is None for _, path in saved)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith((".tmp_", ".old_"))]
    reports = read_rank_reports(run)
    assert [r["world_size"] for r in reports] == [2, 2] and [r["step"] for r in reports] == [100, 100]
    assert reports[0]["g_sha256"] == reports[1]["g_sha256"]
