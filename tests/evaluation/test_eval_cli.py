"""`distgan eval --samples` on good and bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from eval_support import classifier_file

from distgan.data.splits import load_split_images
from distgan.errors import UserError
from distgan.evaluation.report import load_samples


@pytest.fixture(scope="session")
def classifier(tmp_path_factory, mnist_shards):
    return classifier_file(tmp_path_factory, mnist_shards)


@pytest.mark.slow
def test_eval_samples_prints_a_table_and_writes_json(classifier, mnist_shards, tmp_path):
    images, _ = load_split_images(mnist_shards / "train")
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=images[:1500])
    out = tmp_path / "scores.json"
    proc = run_cli(["eval", "--samples", str(samples), "--shards", str(mnist_shards), "--classifier",
                    str(classifier), "--n", "1000", "--json", str(out)], timeout=300)
    scores = json.loads(out.read_text())
    for key in ("fid", "kid", "kid_std", "is", "precision", "recall", "classes", "class_kl",
                "classifier_sha256", "n"):
        assert key in scores, key
    assert scores["n"] == 1000 and scores["classes"] == 10 and scores["fid"] < 1.5 and scores["is"] > 9.0
    for label in ("FID", "KID", "MNIST score", "precision", "recall", "classes", "class KL"):
        assert label in proc.stdout
    assert scores["classifier_sha256"] in proc.stdout
    assert "real train vs test" in proc.stdout and scores["reference"]["fid"] < 1.0


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: _npz(p, imgs=np.zeros((4, 28, 28), np.uint8)), "no array 'images'"),
    (lambda p: _npz(p, images=np.zeros((4, 28, 28), np.float32)), "dtype float32"),
    (lambda p: _npz(p, images=np.zeros((4, 32, 32), np.uint8)), "shape (4, 32, 32)"),
    (lambda p: _npz(p, images=np.zeros((1, 28, 28), np.uint8)), "at least 2"),
    (lambda p: p.write_bytes(b"not a zip") and p, "cannot read"),
    (lambda p: p, "not found"),
])
def test_bad_samples_files_are_one_line_user_errors(tmp_path, make, message):
    path = make(tmp_path / "s.npz")
    with pytest.raises(UserError) as e:
        load_samples(path, None, (1, 28, 28))
    assert message in str(e.value) and "\n" not in str(e.value) and "s.npz" in str(e.value)


def test_samples_accepts_a_channel_axis_and_takes_the_first_n(tmp_path):
    path = _npz(tmp_path / "s.npz", images=np.arange(5 * 784, dtype=np.uint8).reshape(5, 1, 28, 28))
    assert load_samples(path, 3, (1, 28, 28)).shape == (3, 28, 28)


@pytest.mark.slow
def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    path = _npz(tmp_path / "s.npz", images=np.zeros((4, 28, 28), np.int64))
    proc = run_cli(["eval", "--samples", str(path), "--classifier", str(tmp_path / "none.pt")], timeout=120,
                   check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distgan eval: error:") and "classifier" in lines[0]
    proc = run_cli(["eval", "--samples", str(path)], timeout=120, check=False)
    assert proc.returncode == 2 and "--shards" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
