"""An endless stream of real image batches for this rank, epoch after epoch, that keeps the data
position (epoch, start_sample) in the training state so a checkpoint can restore it exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from distgan.data.loader import build_loader
from distgan.errors import UserError
from distgan.pixels import to_signed


class DataPosition(Protocol):
    """Where the stream stands (the trainer's TrainState): epoch and samples of it consumed globally."""

    epoch: int
    start_sample: int


class BatchStream:
    """Yields float images in [-1, 1] and their labels (-1: unlabelled) on the accelerator's device; advances
    `position.epoch/start_sample`."""

    def __init__(self, train_split: Path, *, num_workers: int, batch_size: int, seed: int, accelerator: Any,
                 position: DataPosition) -> None:
        self.split = train_split
        if not (train_split.parent / "manifest.json").is_file():
            raise UserError(f"data.dir {train_split.parent}: no manifest.json there; run "
                            f"`distgan prepare --out {train_split.parent}` first (or fix data.dir)")
        self.num_workers, self.batch_size, self.seed, self.acc = num_workers, batch_size, seed, accelerator
        self.position = position
        self.global_batch = batch_size * accelerator.num_processes
        self._batches: Iterator[dict[str, Any]] | None = None

    def _open(self) -> Iterator[dict[str, Any]]:
        loader = build_loader(self.split, batch_size=self.batch_size, rank=self.acc.process_index,
                              world_size=self.acc.num_processes, num_workers=self.num_workers,
                              seed=self.seed, epoch=self.position.epoch, start_sample=self.position.start_sample)
        return iter(loader)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch: images (B, C, H, W) and int64 labels (B,); at the end of an epoch the next epoch
        starts at sample 0."""
        for _ in range(2):
            if self._batches is None:
                self._batches = self._open()
            batch = next(self._batches, None)
            if batch is not None:
                self.position.start_sample += self.global_batch
                labels = torch.as_tensor(batch["label"]).to(self.acc.device, non_blocking=True)
                return to_signed(batch["image"].to(self.acc.device, non_blocking=True)), labels
            self._batches = None
            self.position.epoch += 1
            self.position.start_sample = 0
        raise UserError(f"{self.split}: no full batch of {self.global_batch} samples in a whole epoch")
