"""A real 2-process run: `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo) of
tests/loader_probe.py, which builds the loader from accelerate's PartialState rank and world size."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, accelerate_launch

from distgan.data import build_loader


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_exactly_once(mnist_shards, tmp_path):
    split = mnist_shards / "test"
    out = tmp_path / "probe"
    accelerate_launch([str(REPO / "tests" / "loader_probe.py"), str(split), str(out), "2", "2"],
                      num_processes=2, timeout=150)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == ranks[0]["len"] == 10000 // 128
    keys = [k for r in ranks for batch in r["batches"] for k in batch]
    assert len(keys) == len(set(keys)) and 10000 - len(keys) < 128
    # The same batches as simulating rank 1 of 2 in this process.
    local = build_loader(split, batch_size=64, rank=1, world_size=2, num_workers=0, seed=7, epoch=1)
    assert [b["key"] for b in local] == ranks[1]["batches"]
