"""An exponential moving average of G's weights, used for sample grids, `sample` and evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn

from distgan.config import EmaConfig


class EMA:
    """Keeps `module` = decay * module + (1 - decay) * source after each update; copies before `start_step`.

    Buffers (BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, source: nn.Module, cfg: EmaConfig) -> None:
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self.decay = cfg.decay
        self.start_step = cfg.start_step

    @torch.no_grad()
    def update(self, source: nn.Module, step: int) -> None:
        """Fold the current weights of `source` (the unwrapped G) in, after G step number `step`."""
        src = list(source.parameters())
        dst = list(self.module.parameters())
        if step < self.start_step:
            torch._foreach_copy_(dst, src)
        else:
            torch._foreach_lerp_(dst, src, 1.0 - self.decay)
        for b_dst, b_src in zip(self.module.buffers(), source.buffers(), strict=True):
            b_dst.copy_(b_src)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
