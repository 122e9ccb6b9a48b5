"""Mixed precision for the two-optimizer GAN step.

bf16 is accelerate's own (`Accelerator(mixed_precision="bf16")` wraps the prepared models' forward in
autocast) and needs no loss scaling.

fp16 is the exception, handled here: accelerate keeps *one* GradScaler for all optimizers and calls
`update()` inside every `optimizer.step()` (twice per GAN iteration, accelerate #439), and refuses fp16
on CPU. distgan instead gives D and G a GradScaler each: every scaler is updated once per step of its
own optimizer, an inf/NaN gradient skips only that optimizer's step, and each scale adapts to its own
loss. The forward passes run under `torch.autocast(float16)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

PHASES = ("d", "g")


def accelerate_mixed_precision(mode: str) -> str:
    """The `mixed_precision` to give Accelerator: fp16 is done here, so accelerate sees "no"."""
    return "no" if mode == "fp16" else mode


class Precision:
    """Autocast context and per-phase ("d"/"g") loss scaling for mixed_precision in {no, bf16, fp16}."""

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode = mode
        self.device_type = device.type
        enabled = mode == "fp16"
        self.scalers = {p: torch.amp.GradScaler(self.device_type, enabled=enabled) for p in PHASES}

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """fp16 autocast around forward passes; bf16's is already inside the prepared models."""
        if self.mode == "fp16":
            with torch.autocast(self.device_type, dtype=torch.float16):
                yield
        else:
            yield

    def scale(self, phase: str) -> float:
        """Current loss scale of a phase (1.0 when not scaling)."""
        scaler = self.scalers[phase]
        return scaler.get_scale() if scaler.is_enabled() else 1.0

    def backward(self, phase: str, loss: torch.Tensor, accelerator: Any) -> None:
        """Backward of the (scaled) loss through accelerate."""
        accelerator.backward(self.scalers[phase].scale(loss))

    def unscale_(self, phase: str, optimizer: torch.optim.Optimizer) -> None:
        """Unscale gradients in place (before reading or clipping them)."""
        if self.scalers[phase].is_enabled():
            self.scalers[phase].unscale_(optimizer)

    def step(self, phase: str, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step, skipped if this phase's gradients hold inf/NaN; then this scaler's update."""
        scaler = self.scalers[phase]
        if scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {p: s.state_dict() for p, s in self.scalers.items() if s.is_enabled()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        for p, s in self.scalers.items():
            if s.is_enabled() and p in state:
                s.load_state_dict(state[p])
