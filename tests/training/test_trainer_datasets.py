"""Datasets beyond MNIST through the whole product: prepare, train (1 and 2 processes), sample, evaluate.

Fashion-MNIST is the real 70,000-image set from Debian's dataset-fashion-mnist; the RGB set is real MNIST
digits written as tinted 32x32 PNG files into class folders (tests/dataset_support.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, accelerate_launch, missing, run_cli
from dataset_support import make_rgb_image_folder

pytestmark = pytest.mark.slow  # real training runs

FASHION_RAW = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


@pytest.fixture(scope="module")
def fashion_shards(tmp_path_factory) -> Path:
    if not (FASHION_RAW / "train-images-idx3-ubyte.gz").is_file():
        missing(f"Fashion-MNIST at {FASHION_RAW}", "apt-get install dataset-fashion-mnist")
    out = tmp_path_factory.mktemp("fashion") / "data"
    run_cli(["prepare", "--raw-dir", str(FASHION_RAW), "--dataset", "fashion-mnist", "--out", str(out)],
            timeout=300)
    return out


@pytest.fixture(scope="module")
def rgb_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rgb_training")
    folder = make_rgb_image_folder(root / "digits", 40)
    out = root / "data"
    run_cli(["prepare", "--image-folder", str(folder), "--out", str(out), "--test-fraction", "0.25"], timeout=300)
    return out


def test_fashion_mnist_config_trains_samples_and_evaluates(fashion_shards, tmp_path):
    """The shipped configs/fashion_mnist_cgan.yaml, shortened and narrowed: train, sample and score (resume is
    the same code for every dataset: training/test_trainer.py::test_resume_is_exact)."""
    run = tmp_path / "run"
    common = ["train", "--config", str(REPO / "configs" / "fashion_mnist_cgan.yaml"), f"data.dir={fashion_shards}",
              f"run.dir={run}", "wandb.mode=disabled", "log.progress=false", "checkpoint.every=10",
              "log.every=5", "log.grid_every=10", "model.g_width=16", "model.d_width=16"]
    proc = run_cli([*common, "train.steps=10"], timeout=300)
    assert "finished at step 10" in proc.stdout
    saved = (run / "config.yaml").read_text()
    assert "image_shape:\n  - 1\n  - 28\n  - 28" in saved
    run_cli(["sample", "--checkpoint", str(run), "--n", "16", "--out", str(tmp_path / "s.npz"),
             "--grid", str(tmp_path / "s.png")], timeout=120)
    samples = np.load(tmp_path / "s.npz")
    assert samples["images"].shape == (16, 28, 28) and samples["images"].dtype == np.uint8
    assert samples["labels"].tolist() == [i % 10 for i in range(16)]  # conditional: all classes in turn
    clf = tmp_path / "classifier.pt"
    run_cli(["train-classifier", "--shards", str(fashion_shards), "--out", str(clf), "--epochs", "1",
             "--max-train", "3000"], timeout=600)
    run_cli(["eval", "--checkpoint", str(run), "--shards", str(fashion_shards), "--classifier", str(clf),
             "--n", "200", "--json", str(tmp_path / "scores.json")], timeout=300)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert np.isfinite(scores["fid"]) and scores["fid"] > 0 and scores["n"] == 200
    assert 0 <= scores["label_accuracy"] <= 1 and np.isfinite(scores["intra_fid"])


def test_rgb_image_folder_two_processes_sample_and_evaluate(rgb_shards, tmp_path):
    """32x32 RGB: a 2-process conditional DCGAN run (world size 2 asserted; class-conditional BatchNorm and the
    projection D kept identical on both ranks), RGB samples and grid, a shaped classifier and every score
    computed on its features."""
    run = tmp_path / "run"
    proc = accelerate_launch(
        ["-m", "distgan", "train", "--config", str(REPO / "configs" / "debug.yaml"), f"data.dir={rgb_shards}",
         f"run.dir={run}", "wandb.mode=disabled", "model.arch=dcgan", "model.g_width=8", "model.d_width=8",
         "train.batch_size=8", "train.steps=10", "checkpoint.every=10", "model.conditional=true"], timeout=600)
    assert "finished at step 10" in proc.stdout
    reports = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank_*.json"))]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert len({(r["g_sha256"], r["d_sha256"]) for r in reports}) == 1  # identical replicas
    from PIL import Image

    grid = Image.open(run / "samples" / "step_0000010.png")
    assert grid.mode == "RGB"
    run_cli(["sample", "--checkpoint", str(run), "--n", "12", "--out", str(tmp_path / "s.npz")], timeout=120)
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    run_cli(["train-classifier", "--shards", str(rgb_shards), "--epochs", "3"], timeout=600)
    out = run_cli(["eval", "--samples", str(tmp_path / "s.npz"), "--shards", str(rgb_shards), "--n", "12",
                   "--json", str(tmp_path / "scores.json")], timeout=300).stdout
    assert "FID" in out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert np.isfinite(scores["fid"]) and scores["n"] == 12


def test_unsupported_shape_is_one_line(rgb_shards, tmp_path):
    proc = run_cli(["train", "--config", str(REPO / "configs" / "debug.yaml"), f"data.dir={rgb_shards}",
                    f"run.dir={tmp_path / 'r'}", "wandb.mode=disabled", "model.arch=dcgan",
                    "model.image_shape=[1,28,28]"], timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.image_shape [1, 28, 28] differs from the data" in lines[0], proc.stderr


def test_a_shape_dcgan_cannot_make_is_one_line(tmp_path):
    folder = make_rgb_image_folder(tmp_path / "digits", 3)
    run_cli(["prepare", "--image-folder", str(folder), "--out", str(tmp_path / "data"), "--resolution", "24"],
            timeout=300)
    proc = run_cli(["train", "--config", str(REPO / "configs" / "debug.yaml"), f"data.dir={tmp_path / 'data'}",
                    f"run.dir={tmp_path / 'r'}", "wandb.mode=disabled", "model.arch=dcgan", "train.batch_size=4"],
                   timeout=120, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot make images of shape 3x24x24" in lines[0] and "16x16" in lines[0], proc.stderr
