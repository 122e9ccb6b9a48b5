"""Run under `accelerate launch`: open a dataset URL into a cache directory shared by the ranks, build
the loader on it with the real rank/world size for each epoch, do one collective per batch (unequal batch
counts would hang), and write this rank's keys to OUT/rank<r>.json.

Usage: remote_probe.py URL CACHE_DIR OUT_DIR EXPECTED_WORLD_SIZE NUM_WORKERS EPOCHS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from loader_probe import epoch_keys  # the probe runs as a script: tests/ is on sys.path

from distgan.data import build_loader
from distgan.data.remote import open_dataset


def main() -> int:
    url, cache, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    expected_world, num_workers, epochs = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    # Without CUDA, accelerate only forms the gloo group when asked for the CPU explicitly.
    state = PartialState(cpu=not torch.cuda.is_available())
    assert state.num_processes == expected_world, f"world size {state.num_processes} != {expected_world}"
    local = open_dataset(url, cache)  # what the trainer does once at set-up, on every rank
    per_epoch: list[list[list[str]]] = []
    for epoch in range(1, epochs + 1):
        loader = build_loader(local / "test", batch_size=64, rank=state.process_index,
                              world_size=state.num_processes, num_workers=num_workers, seed=7, epoch=epoch)
        keys = epoch_keys(loader, state.num_processes)
        assert len(keys) == len(loader)
        per_epoch.append(keys)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{state.process_index}.json").write_text(json.dumps({
        "rank": state.process_index, "world_size": state.num_processes, "local": str(local),
        "epochs": per_epoch}))
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
