"""`distgan bench train`: the trainer against the plain loop over the same model and batches, in each
precision (the plain loop autocasts as the trainer does), printing a table and `train_ratio=`."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli

from distgan.bench.train import plain_loop

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_bench_train_prints_both_loops_and_the_ratio(mnist_shards, precision):
    proc = run_cli(["bench", "train", "--shards", str(mnist_shards), "--batch-sizes", "16,32", "--steps", "15",
                    "--repeats", "1", "--precision", precision], timeout=300)
    assert f"mixed_precision={precision}" in proc.stdout
    rows = re.findall(r"^\s+(16|32)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", proc.stdout, re.M)
    assert [r[0] for r in rows] == ["16", "32"] and all(float(x) > 0 for r in rows for x in r[1:])
    ratio = float(re.search(r"^train_ratio=([\d.]+)$", proc.stdout, re.M).group(1))
    assert ratio == pytest.approx(min(float(r[3]) for r in rows), abs=1e-3)  # the worst batch size


def test_plain_loop_in_fp16_scales_its_losses(mnist_shards):
    assert plain_loop(mnist_shards, 8, 5, "cpu", precision="fp16") > 0  # CPU fp16 autocast with GradScalers
