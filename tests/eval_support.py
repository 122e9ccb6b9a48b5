"""Shared helpers for the evaluation tests, and the probe script they run under `accelerate launch`.

`classifier_file` trains the classifier once per test session (the first test module that asks trains
it, the others find the file); `python tests/eval_support.py SHARDS CLASSIFIER OUT_DIR N` scores a
deterministic generator with evaluate_generator and writes each rank's result to OUT_DIR/rank<R>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

_REPO = Path(__file__).resolve().parents[1]


def classifier_file(tmp_path_factory, mnist_shards: Path) -> Path:
    """Path of a classifier trained by `distgan train-classifier` on the session's shards, 3 epochs (made once
    per test run, shared by the pytest-xdist workers). All 10,000 digits: tests/evaluation/test_classifier.py
    holds it to the product's 98% accuracy floor and to a reference score above 9.3, which 5,000 digits (97.6%)
    or 2 epochs (score 9.26) miss."""
    from conftest import make_once, run_cli, test_env, threads_per_worker

    def train(folder: Path) -> None:
        out = folder / "classifier.pt"
        threads = str(threads_per_worker())
        proc = run_cli(["train-classifier", "--shards", str(mnist_shards), "--out", str(out), "--epochs", "3"],
                       timeout=600, env=test_env(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads))
        (folder / "train.log").write_text(proc.stdout)

    return make_once(tmp_path_factory, "eval_classifier", train) / "classifier.pt"


class LookupGenerator(nn.Module):
    """Meets the generator contract; sample i is a fixed function of its noise vector: a real image
    picked by the noise, brightened or darkened by it."""

    def __init__(self, images: torch.Tensor, z_dim: int = 8) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("images", images.float().div(127.5).sub(1.0).unsqueeze(1))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        idx = (z[:, 0].abs() * 1e6).long() % len(self.images)
        return (self.images[idx] + 0.3 * torch.tanh(z[:, 1:2, None, None])).clamp(-1, 1) * self.scale


def _probe(shards: str, classifier: str, out_dir: str, n: int) -> None:
    sys.path.insert(0, str(_REPO))
    from accelerate import Accelerator

    from distgan.data.splits import load_split_images
    from distgan.evaluation.evaluate import evaluate_generator

    acc = Accelerator(cpu=True)
    images, _ = load_split_images(Path(shards) / "test")
    gen = LookupGenerator(torch.as_tensor(images[:3000])).to(acc.device)
    gen = acc.prepare(gen)  # DDP-wrapped under launch: evaluate_generator must unwrap it
    scores = evaluate_generator(acc, gen, n=n, seed=3, classifier_path=classifier,
                                test_split=Path(shards) / "test", batch_size=250)
    Path(out_dir, f"rank{acc.process_index}.json").write_text(
        json.dumps({"world": acc.num_processes, "scores": scores, "training": gen.training}))
    acc.wait_for_everyone()
    acc.end_training()  # destroys the process group: no abort at exit


if __name__ == "__main__":
    _probe(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
