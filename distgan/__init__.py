"""distgan: distributed GAN training on Accelerate, webdataset shards, W&B and SLURM.

The Python API (imported lazily, so `import distgan` and `distgan --help` stay fast):

    from distgan import load_config, train, load_generator, sample_images

    cfg = load_config("configs/debug.yaml", ["data.dir=data/mnist", "run.dir=runs/api"])
    result = train(cfg)                          # TrainResult(status, step, ..., run_dir)
    g, cfg = load_generator(result.run_dir)      # the EMA generator of the latest checkpoint
    images = sample_images(g, 16, seed=0)        # uint8 (16, 28, 28)
    # a class-conditional G (model.conditional=true): sample_images(g, 16, labels=torch.full((16,), 7))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "distgan.config",
    "train": "distgan.training.trainer",
    "load_generator": "distgan.generator.loading",
    "sample_images": "distgan.generator.sampling",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'distgan' has no attribute {name!r}")
