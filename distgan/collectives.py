"""Small facts about the process environment that Accelerate needs to be told."""

from __future__ import annotations

import os

import torch


def needs_cpu_flag() -> bool:
    """True for a multi-process launch on a machine without CUDA.

    `accelerate launch --multi_gpu` on a CPU-only machine starts N processes, but Accelerate then sees
    no GPU and silently makes each one a separate world of size 1 (DistributedType.NO) unless
    `Accelerator(cpu=True)` asks for MULTI_CPU, which joins them with the gloo backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()
