"""DDP gradient averaging that gives the same bits whatever DDP's bucket layout, so that a resumed run equals
an uninterrupted one with any number of processes.

A ring all-reduce (gloo, NCCL) adds an element's values in an order that depends on where the element
sits in the buffer. DDP lays its first iteration out in one bucket in parameter order, then rebuilds the
buckets in the order the gradients became ready in backward. An uninterrupted run reaches step k with the
rebuilt layout, a run resumed at step k starts with the first-iteration layout: with 2 processes the sums
agree (a + b == b + a), with 3 or more they differ in the last bits (seen with 2 nodes x 2 processes).

`register_canonical_allreduce` makes every all-reduce independent of the layout: one bucket for the whole
module (`DDP_BUCKET_CAP_MB`, so the bucket boundaries never move) and a comm hook that packs the gradients
in the module's parameter order before the all-reduce and unpacks them after. The cost: one copy of the
gradients each way, and the all-reduce starts when the whole backward is done instead of overlapping it
(GAN models of this size spend far longer in backward than in the all-reduce).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# accelerate's DistributedDataParallelKwargs(bucket_cap_mb=...): larger than any model, so one bucket.
DDP_BUCKET_CAP_MB = 1 << 20


def register_canonical_allreduce(model: Any) -> None:
    """On a DDP-wrapped `model` (before its first forward): average gradients in parameter order. No-op on
    an unwrapped module (one process)."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return
    position = {id(p): i for i, p in enumerate(model.module.parameters())}
    model.register_comm_hook(None, _canonical_hook(position))


def _canonical_hook(position: dict[int, int]) -> Any:
    # No annotations: DDP checks them against the real classes, and this module's are strings.
    def hook(_state, bucket):
        grads = bucket.gradients()
        order = sorted(range(len(grads)), key=lambda i: position[id(bucket.parameters()[i])])
        packed = torch.cat([grads[i].reshape(-1) for i in order]).div_(dist.get_world_size())
        starts, offset = {}, 0
        for i in order:
            starts[i], offset = offset, offset + grads[i].numel()

        def unpack(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            total = fut.value()[0]
            out = torch.cat([total[starts[i]:starts[i] + grads[i].numel()] for i in range(len(grads))])
            return out.view_as(bucket.buffer())

        return dist.all_reduce(packed, async_op=True).get_future().then(unpack)

    return hook
