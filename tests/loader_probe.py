"""Run under `accelerate launch`: build the loader with the real rank/world size, do one collective
per batch (unequal batch counts would hang), and write this rank's keys to OUT/rank<r>.json.

Usage: loader_probe.py SPLIT_DIR OUT_DIR EXPECTED_WORLD_SIZE NUM_WORKERS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState

from distgan.data import build_loader


def epoch_keys(loader, world_size: int) -> list[list[str]]:
    """This rank's batches of keys for one epoch; asserts every rank yields the same number of batches."""
    keys: list[list[str]] = []
    for batch in loader:
        total = batch["image"].sum(dtype=torch.int64).reshape(1)
        dist.all_reduce(total)  # a rank with an extra batch would wait here forever
        keys.append(batch["key"])
    counts = [None] * world_size
    dist.all_gather_object(counts, len(keys))
    assert len(set(counts)) == 1, f"unequal batch counts across ranks: {counts}"
    return keys


def main() -> int:
    split, out, expected_world, num_workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    # Without CUDA, accelerate only forms the gloo group when asked for the CPU explicitly.
    state = PartialState(cpu=not torch.cuda.is_available())
    assert state.num_processes == expected_world, f"world size {state.num_processes} != {expected_world}"
    loader = build_loader(split, batch_size=64, rank=state.process_index, world_size=state.num_processes,
                          num_workers=num_workers, seed=7, epoch=1)
    keys = epoch_keys(loader, state.num_processes)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{state.process_index}.json").write_text(
        json.dumps({"rank": state.process_index, "world_size": state.num_processes, "len": len(loader),
                    "batches": keys}))
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
