"""An endless stream of real image batches for this rank, epoch after epoch, that keeps the data
position (epoch, start_sample) in the training state so a checkpoint can restore it exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from distgan.config import Config
from distgan.data.loader import build_loader
from distgan.errors import UserError
from distgan.pixels import to_signed
from distgan.training.checkpoint import TrainState


class BatchStream:
    """Yields float images in [-1, 1] on the accelerator's device; advances `state.epoch/start_sample`."""

    def __init__(self, cfg: Config, accelerator: Any, state: TrainState) -> None:
        self.split = Path(cfg.data.dir) / "train"
        if not self.split.is_dir():
            raise UserError(f"data.dir {cfg.data.dir}: no train/ split there; run "
                            f"`distgan prepare --out {cfg.data.dir}` first (or fix data.dir)")
        self.cfg, self.acc, self.state = cfg, accelerator, state
        self.global_batch = cfg.train.batch_size * accelerator.num_processes
        self._batches: Iterator[dict[str, Any]] | None = None

    def _open(self) -> Iterator[dict[str, Any]]:
        loader = build_loader(self.split, batch_size=self.cfg.train.batch_size, rank=self.acc.process_index,
                              world_size=self.acc.num_processes, num_workers=self.cfg.data.num_workers,
                              seed=self.cfg.seed, epoch=self.state.epoch, start_sample=self.state.start_sample)
        return iter(loader)

    def next_images(self) -> torch.Tensor:
        """The next batch (B, 1, 28, 28); at the end of an epoch the next epoch starts at sample 0."""
        for _ in range(2):
            if self._batches is None:
                self._batches = self._open()
            batch = next(self._batches, None)
            if batch is not None:
                self.state.start_sample += self.global_batch
                return to_signed(batch["image"].to(self.acc.device, non_blocking=True))
            self._batches = None
            self.state.epoch += 1
            self.state.start_sample = 0
        raise UserError(f"{self.split}: no full batch of {self.global_batch} samples in a whole epoch")
