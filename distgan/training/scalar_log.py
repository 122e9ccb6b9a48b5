"""Per-step statistics kept on the device between logging steps, and the divergence count.

Nothing here reads a tensor back to the host except at a logging step, so the training loop does not
synchronise with the device every iteration.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from distgan.collectives import max_over_ranks


class ScalarLog:
    """Sums of the logged per-step values since the last log, and consecutive non-finite losses."""

    KEYS = (("loss/d", "d_loss"), ("loss/g", "g_loss"), ("loss/gp", "gp"), ("d/real", "d_real"), ("d/fake", "d_fake"))

    def __init__(self, device: torch.device) -> None:
        self.bad_steps = torch.zeros((), device=device)  # consecutive steps with a non-finite loss, on device
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.data_seconds, self.t0 = 0, 0.0, time.perf_counter()
        self.r1_sum, self.r1_steps = None, 0  # lazy R1 runs on some steps only: its mean is over those
        self.r2_sum, self.r2_steps = None, 0  # and so does R2

    def add(self, stats: Any, data_seconds: float) -> None:
        """Fold one iteration's StepStats in (no device sync)."""
        finite = torch.isfinite(stats.d_loss) & torch.isfinite(stats.g_loss)
        self.bad_steps = torch.where(finite, torch.zeros_like(self.bad_steps), self.bad_steps + 1)
        for key, attr in self.KEYS:
            self.sums[key] = self.sums.get(key, 0) + getattr(stats, attr)
        if getattr(stats, "r1", None) is not None:
            self.r1_sum = stats.r1 if self.r1_sum is None else self.r1_sum + stats.r1
            self.r1_steps += 1
        if getattr(stats, "r2", None) is not None:
            self.r2_sum = stats.r2 if self.r2_sum is None else self.r2_sum + stats.r2
            self.r2_steps += 1
        self.steps += 1
        self.data_seconds += data_seconds

    def worst_bad_steps(self, accelerator: Any) -> int:
        """Collective: the longest current run of non-finite losses on any rank."""
        return max_over_ranks(accelerator, int(self.bad_steps.item()))

    def flush(self, images_per_step: int) -> dict[str, float]:
        """Means since the last flush, images/s, step time and data wait; then start a new window."""
        n = max(self.steps, 1)
        elapsed = time.perf_counter() - self.t0
        values = {k: float((v / n).item()) for k, v in self.sums.items()}
        if self.r1_steps:
            values["loss/r1"] = float((self.r1_sum / self.r1_steps).item())
        if self.r2_steps:
            values["loss/r2"] = float((self.r2_sum / self.r2_steps).item())
        values.update({"perf/images_per_s": n * images_per_step / elapsed, "perf/step_time_s": elapsed / n,
                       "perf/data_wait_s": self.data_seconds / n})
        self._reset()
        return values
