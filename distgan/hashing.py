"""The two hashes distgan names in its files and reports: of a file's bytes, and of a module's weights."""

from __future__ import annotations

import hashlib
import os

import torch


def file_sha256(path: str | os.PathLike[str], algo: str = "sha256") -> str:
    """Hex digest of a file (sha256 unless `algo` names another hashlib algorithm), read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state_dict: every entry by sorted name, with its dtype, shape and exact bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():  # through uint8, so that bf16 (which numpy lacks) hashes too
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
