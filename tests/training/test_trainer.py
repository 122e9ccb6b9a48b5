"""Single-process training: a debug run end to end, exact resume, mixed precision, divergence, sample,
and bad input. Every run is a real `distgan train` subprocess with a hard timeout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, final_weights, run_cli, wandb_history, wandb_records
from safetensors.torch import load_file

from distgan.run.checkpoint import complete_checkpoints

pytestmark = pytest.mark.slow  # real training runs (the unit tier is `-m "not slow"`)

DEBUG = "configs/debug.yaml"


def train(shards, run_dir, *overrides, check=True, timeout=180, wandb="offline"):
    """`distgan train` of the debug config; W&B offline (a real run, read back with `wandb leet inspect`), or
    `wandb="disabled"` where a test reads nothing from W&B (each offline run starts W&B's service)."""
    return run_cli(["train", "--config", DEBUG, f"data.dir={shards}", f"run.dir={run_dir}", f"wandb.mode={wandb}",
                    *overrides], timeout=timeout, check=check)


def test_debug_run_end_to_end(mnist_shards, tmp_path):
    run = tmp_path / "run"
    proc = train(mnist_shards, run)
    assert "finished at step 20" in proc.stdout
    steps = [s for s, _ in complete_checkpoints(run)]
    assert steps == [10, 20]  # checkpoint.keep=2
    ckpt = run / "checkpoints" / "step_0000020"
    for name in ("COMPLETE", "model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
                 "random_states_0.pkl", "ema_generator.safetensors", "trainer_state.json", "config.yaml"):
        assert (ckpt / name).is_file(), name
    state = json.loads((ckpt / "trainer_state.json").read_text())["state"]
    assert state == {"step": 20, "epoch": 0, "start_sample": 20 * 16, "best_fid": None}
    assert (run / "config.yaml").is_file() and (run / "wandb_run_id").is_file()
    assert (run / "samples" / "step_0000020.png").is_file()
    assert not list((run / "checkpoints").glob(".tmp*"))

    rows = wandb_history(run)
    scalars = [r for r in rows if "loss/d" in r]
    assert [r["_step"] for r in scalars] == [5, 10, 15, 20]
    for key in ("loss/g", "d/real", "d/fake", "grad_norm/g", "grad_norm/d", "lr/g", "lr/d",
                "perf/images_per_s", "perf/step_time_s", "perf/data_wait_s"):
        assert all(np.isfinite(r[key]) for r in scalars), key
    images = [r for r in rows if r.get("samples._type") == "image-file"]
    assert images and images[0]["samples.width"] == images[0]["samples.height"] == 4 * 28 + 5 * 2

    # A second run into the finished directory resumes at step 20 and has nothing left to do.
    again = train(mnist_shards, run)
    assert "finished at step 20" in again.stdout


def test_sample_command_writes_uint8_images_and_grid(mnist_shards, tmp_path):
    run = tmp_path / "run"
    train(mnist_shards, run, "train.steps=10", wandb="disabled")
    out, grid = tmp_path / "s.npz", tmp_path / "s.png"
    run_cli(["sample", "--checkpoint", str(run), "--n", "12", "--seed", "3", "--out", str(out), "--grid", str(grid)],
            timeout=120)
    images = np.load(out)["images"]
    assert images.dtype == np.uint8 and images.shape == (12, 28, 28) and images.std() > 0
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "t.npz"
    run_cli(["sample", "--checkpoint", str(run / "checkpoints" / "step_0000010"), "--n", "12", "--seed", "3",
             "--out", str(again)], timeout=120)
    assert np.array_equal(np.load(again)["images"], images)  # same EMA G, same seed


@pytest.mark.parametrize("extra", [[], ["model.arch=dcgan", "model.g_width=8", "model.d_width=8",
                                        "loss.kind=hinge", "train.d_steps=2", "data.num_workers=2",
                                        "model.conditional=true", "augment.policy=color,translation,cutout",
                                        "train.batch_size=100"]],  # 2 D batches a step: past an epoch at 14
                         ids=["mlp-bce", "conditional-dcgan-diffaugment-2workers"])
def test_resume_is_exact(small_mnist_shards, tmp_path, extra):
    """N steps straight == k steps, stop, resume to N (bitwise on CPU fp32), across an epoch boundary (2,000
    real digits in 4 shards: an epoch is 10 batches of 200)."""
    common = ["train.batch_size=200", "checkpoint.every=5", "checkpoint.keep=10", *extra]  # 10 batches/epoch
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(small_mnist_shards, straight, "train.steps=14", *common)
    train(small_mnist_shards, split, "train.steps=7", *common)
    proc = train(small_mnist_shards, split, "train.steps=14", *common)
    assert "resumed from" in proc.stdout + proc.stderr
    assert_same_weights(final_weights(straight), final_weights(split))
    a = json.loads((straight / "checkpoints/step_0000014/trainer_state.json").read_text())["state"]
    b = json.loads((split / "checkpoints/step_0000014/trainer_state.json").read_text())["state"]
    assert a == b and a["epoch"] >= 1  # crossed an epoch boundary
    steps = [r["_step"] for r in wandb_history(split) if "loss/d" in r]
    assert steps == sorted(steps) and steps[-1] == 10  # explicit, monotone steps across the resume


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(mnist_shards, tmp_path, precision):
    run = tmp_path / "run"
    train(mnist_shards, run, f"mixed_precision={precision}", "model.arch=dcgan", "model.g_width=8",
          "model.d_width=8", "train.steps=20", "model.conditional=true", "loss.kind=hinge", "loss.r1_gamma=1",
          "loss.r1_every=2", "augment.policy=translation")
    rows = [r for r in wandb_history(run) if "loss/d" in r]
    # fp16: an R1 step may overflow at GradScaler's initial scale (65536); the D scaler skips that step and
    # backs off, as for any overflow, so only the first logging window may hold a non-finite loss.
    settled = rows[1:] if precision == "fp16" else rows
    assert len(settled) >= 3 and all(np.isfinite(r["loss/d"]) and np.isfinite(r["loss/g"]) for r in settled)
    assert all(np.isfinite(r["loss/r1"]) and r["loss/r1"] > 0 for r in settled)  # float32 from a scaled output
    if precision == "fp16":
        assert rows[-1]["loss_scale/d"] > 0 and rows[-1]["loss_scale/g"] > 0
        scalers = json.loads((run / "checkpoints/step_0000010/trainer_state.json").read_text())["scalers"]
        assert set(scalers) == {"d", "g"}


def test_divergence_stops_and_keeps_last_good_checkpoint(mnist_shards, tmp_path):
    run = tmp_path / "run"
    # An 8-layer WGAN critic without penalty at lr 1 overflows within a few steps. The second run changes
    # the learning rates, so it resumes from an explicit checkpoint (resume=auto would refuse the change).
    deep = ("loss.kind=wgan-gp", "loss.gp_weight=0", "model.d_hidden=[64,64,64,64,64,64,64,64]")
    train(mnist_shards, run, "train.steps=5", "checkpoint.every=5", *deep, wandb="disabled")
    proc = train(mnist_shards, run, "train.steps=400", "train.lr_d=1", "train.lr_g=1", *deep,
                 f"resume={run / 'checkpoints' / 'step_0000005'}", "train.nan_patience=3", "checkpoint.every=5",
                 check=False, wandb="disabled")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert "training diverged" in err or "non-finite" in err, proc.stderr[-2000:]
    assert "step_0000005" in err
    for _, ckpt in complete_checkpoints(run):
        for name in ("model.safetensors", "model_1.safetensors", "ema_generator.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / name)).values()), ckpt


def test_bad_input_gives_one_line_errors(mnist_shards, tmp_path):
    def one_line_error(proc, needle):
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert needle in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]

    quiet = {"check": False, "wandb": "disabled"}
    one_line_error(train(mnist_shards, tmp_path / "a", "train.batch_size=many", **quiet), "'train.batch_size'")
    one_line_error(train(mnist_shards, tmp_path / "a", "model.widht=3", **quiet), "'model.widht'")
    one_line_error(train(tmp_path / "no_such_data", tmp_path / "b", check=False), "distgan prepare")
    assert not (tmp_path / "b" / "wandb").exists()  # no W&B run (offline asked for) for a run that could not start
    run = tmp_path / "c"
    train(mnist_shards, run, "train.steps=5", "checkpoint.every=5", wandb="disabled")
    one_line_error(train(mnist_shards, run, "model.arch=dcgan", **quiet), "model.arch")
    one_line_error(train(mnist_shards, run, "model.g_hidden=[8]", **quiet), "model.g_hidden")
    incomplete = run / "checkpoints" / "step_0000009"
    incomplete.mkdir()
    proc = train(mnist_shards, run, "train.steps=6", "checkpoint.every=5", wandb="disabled")
    assert "ignoring incomplete checkpoint" in proc.stderr and "resumed from" in proc.stdout + proc.stderr


def test_evaluation_during_training_logs_scores_and_keeps_best(mnist_shards, eval_classifier, tmp_path):
    run = tmp_path / "run"
    train(mnist_shards, run, "train.steps=20", "eval.every=10", "eval.n=300", f"eval.classifier={eval_classifier}")
    rows = [r for r in wandb_history(run) if "eval/fid" in r]
    assert [r["_step"] for r in rows] == [10, 20]
    for key in ("eval/fid", "eval/kid", "eval/is", "eval/precision", "eval/recall", "eval/classes", "eval/class_kl"):
        assert all(np.isfinite(r[key]) for r in rows), key
    best = run / "checkpoints" / "best"
    assert (best / "COMPLETE").is_file()
    state = json.loads((best / "trainer_state.json").read_text())["state"]
    assert state["best_fid"] == min(r["eval/fid"] for r in rows)
    summary = [r for r in wandb_records(run) if r.get("type") == "summary"]
    assert any("classifier_sha256" in json.dumps(r) for r in summary)

    out = tmp_path / "scores.json"
    run_cli(["eval", "--checkpoint", str(best), "--n", "300", "--seed", "2", "--classifier", str(eval_classifier),
             "--json", str(out)], timeout=180)
    scores = json.loads(out.read_text())
    assert scores["fid"] == pytest.approx(state["best_fid"], rel=1e-6)  # the trainer evaluates with seed + 2


def test_evaluation_without_classifier_is_a_clear_error(mnist_shards, tmp_path):
    proc = train(mnist_shards, tmp_path / "run", "eval.every=10", f"eval.classifier={tmp_path / 'none.pt'}",
                 check=False)
    assert proc.returncode == 2 and "distgan train-classifier" in proc.stderr.strip().splitlines()[-1]
