"""Run under `accelerate launch --multi_gpu --num_processes 2` (or alone, as one process): a self-conditioned
GAN trained for a few steps with re-clusterings; each rank writes its clustering (initial and final) as
sha256 digests, and its world size, to OUT_DIR/rank_<R>.json.

Usage: selfcond_probe.py OUT_DIR KEY=VALUE...   (config overrides of configs/debug.yaml)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from distgan.config import load_config
from distgan.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent


def digest(state: dict) -> dict[str, str]:
    """sha256 of each part of a SelfConditioning state_dict (the snapshot D's tensors together)."""
    out = {}
    for key, value in state.items():
        tensors = value.values() if isinstance(value, dict) else [value]
        h = hashlib.sha256()
        for t in tensors:
            is_tensor = isinstance(t, torch.Tensor)
            h.update(t.detach().cpu().contiguous().numpy().tobytes() if is_tensor else repr(t).encode())
        out[key] = h.hexdigest()
    return out


def main(out_dir: Path, overrides: list[str]) -> None:
    trainer = Trainer(load_config(REPO / "configs" / "debug.yaml", overrides))
    try:
        initial = digest(trainer.clusters.state_dict())
        trainer.fit()
        final = digest(trainer.clusters.state_dict())
        rank, world = trainer.acc.process_index, trainer.acc.num_processes
        freqs = trainer.nets.ema.module.inputs.class_freqs.tolist()
    finally:
        trainer.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank_{rank}.json").write_text(json.dumps(
        {"rank": rank, "world_size": world, "initial": initial, "final": final, "freqs": freqs}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
