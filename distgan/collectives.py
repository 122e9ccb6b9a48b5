"""Collectives and process-group facts: how CPU processes join (gloo), flags every rank agrees on,
buffer sync, replica consistency and the finite-weights check.

Every function taking an `accelerator` is a collective when there are several processes: all ranks
must call it at the same point.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate.utils import broadcast_object_list, gather_object

from distgan.errors import UserError
from distgan.hashing import state_dict_sha256

T = TypeVar("T")


def needs_cpu_flag() -> bool:
    """True for a multi-process launch on a machine without CUDA.

    `accelerate launch --multi_gpu` on a CPU-only machine starts N processes, but Accelerate then sees
    no GPU and silently makes each one a separate world of size 1 (DistributedType.NO) unless
    `Accelerator(cpu=True)` asks for MULTI_CPU, which joins them with the gloo backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()


def max_over_ranks(accelerator: Any, value: int) -> int:
    """The largest of every rank's integer `value` (the value itself in one process)."""
    if int(getattr(accelerator, "num_processes", 1)) <= 1:
        return int(value)
    code = torch.tensor([int(value)], dtype=torch.int64, device=accelerator.device)
    torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
    return int(code.item())


def sync_buffers(accelerator: Any, models: tuple[torch.nn.Module, ...]) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank.

    DDP's `broadcast_buffers` does exactly this at the start of the next forward, so doing it before a
    checkpoint or a consistency check changes nothing in training; it only makes the replicas comparable.
    """
    if accelerator.num_processes == 1:
        return
    for model in models:
        for buf in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buf, src=0)


def check_consistency(accelerator: Any, models: tuple[torch.nn.Module, ...]) -> None:
    """Raise if any rank's weights differ from rank 0's (DDP should keep them identical)."""
    if accelerator.num_processes == 1:
        return
    sync_buffers(accelerator, models)
    mine = [state_dict_sha256(accelerator.unwrap_model(m)) for m in models]
    everyone = gather_object([mine])
    bad = [r for r, digests in enumerate(everyone) if digests != everyone[0]]
    if bad:
        raise RuntimeError(f"weights differ between rank 0 and ranks {bad}: the DDP replicas diverged")


def parameters_finite(accelerator: Any, models: tuple[torch.nn.Module, ...]) -> bool:
    """True if every parameter on every rank is finite."""
    ok = all(bool(torch.isfinite(p).all()) for m in models for p in m.parameters())
    return max_over_ranks(accelerator, 0 if ok else 1) == 0


def on_main(accelerator: Any, fn: Callable[[], T]) -> T:
    """Run `fn` on the main process only; every rank returns its result, or raises its UserError.

    Without this, a user mistake found by the main process alone (a locked or unwritable run directory)
    would leave the other ranks waiting at their next collective until the process-group timeout.
    """
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        try:
            result = {"ok": fn()}
        except UserError as e:
            result = {"error": str(e)}
    if accelerator.num_processes > 1:
        box = [result]
        broadcast_object_list(box, from_process=0)
        result = box[0]
    if "error" in result:
        raise UserError(result["error"])
    return result["ok"]
