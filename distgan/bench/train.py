"""`distgan bench train`: steps/s of the distgan trainer against a plain PyTorch loop over the same
model, loss and batches, measured in the same run (these machines are shared and noisy)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from distgan.config import load_config
from distgan.data import build_loader, dataset_info
from distgan.errors import UserError
from distgan.generator.architectures import MLPGenerator
from distgan.training.discriminators import MLPDiscriminator
from distgan.training.trainer import train


def plain_loop(shards: Path, batch_size: int, steps: int, device: str, seed: int = 0,
               precision: str = "no") -> float:
    """The classic MNIST GAN script's loop (BCE-with-logits, Adam 2e-4/0.5): seconds its `steps` iterations took.

    Adam is the fused one the trainer uses, so the ratio measures the trainer, not an optimizer kernel. In
    `precision` bf16 the forward passes run under bf16 autocast; in fp16 under fp16 autocast with a
    GradScaler for each network, as the trainer does."""
    torch.manual_seed(seed)
    shape = dataset_info(shards).image_shape  # the classic script's widths, for the data's images
    generator = MLPGenerator(100, (256, 512, 1024), shape).to(device)
    discriminator = MLPDiscriminator((1024, 512, 256), shape).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = lambda: torch.autocast(device, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    scale_d, scale_g = (torch.amp.GradScaler(device, enabled=precision == "fp16") for _ in range(2))
    ones, zeros = torch.ones(batch_size, device=device), torch.zeros(batch_size, device=device)
    done, epoch, seconds = 0, 0, 0.0
    while done < steps:
        batches = iter(build_loader(shards / "train", batch_size=batch_size, rank=0, world_size=1, num_workers=0,
                                    seed=seed, epoch=epoch))
        while True:  # timed like the trainer's step_seconds: from fetching a batch to the G update
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            real = batch["image"].to(device).float() / 127.5 - 1
            with autocast():
                fake = generator(torch.randn(batch_size, 100, device=device))
                real_logits, fake_logits = discriminator(real).float(), discriminator(fake.detach()).float()
            opt_d.zero_grad()
            loss_d = F.binary_cross_entropy_with_logits(real_logits, ones) + \
                F.binary_cross_entropy_with_logits(fake_logits, zeros)
            scale_d.scale(loss_d).backward()
            scale_d.step(opt_d)
            scale_d.update()
            opt_g.zero_grad()
            with autocast():
                fake_logits = discriminator(fake).float()
            loss_g = F.binary_cross_entropy_with_logits(fake_logits, ones)
            scale_g.scale(loss_g).backward()
            scale_g.step(opt_g)
            scale_g.update()
            seconds += time.perf_counter() - t0
            done += 1
            if done == steps:
                break
        epoch += 1
    return seconds


def distgan_loop(shards: Path, batch_size: int, steps: int, work: Path, precision: str = "no") -> float:
    """The distgan trainer on the seed MLP config, no logging: seconds its `steps` iterations took."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mnist_mlp.yaml", [
        f"data.dir={shards}", f"run.dir={work}", f"train.steps={steps}", f"train.batch_size={batch_size}",
        "data.num_workers=0", "wandb.mode=disabled", f"mixed_precision={precision}", "resume=never",
        "log.progress=false",
        f"log.every={steps + 1}", f"log.grid_every={steps + 1}", f"checkpoint.every={steps + 1}",
    ])
    result = train(cfg)
    return result.step_seconds


def bench_train(shards: Path, *, batch_sizes: Sequence[int] = (64, 256), steps: int = 300, repeats: int = 2,
                precision: str = "no") -> float:
    """Print plain vs distgan steps/s per batch size and, last, `train_ratio=` (the worst); return it."""
    shards = Path(shards)
    if not (shards / "train").is_dir():
        raise UserError(f"--shards {shards}: no train/ split; run `distgan prepare --out {shards}` first")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the trainer runs too
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}, {steps} steps per measurement, mixed_precision={precision}")
    print(f"{'batch':>6} {'plain steps/s':>14} {'distgan steps/s':>16} {'ratio':>7}")
    ratios = []
    for batch in batch_sizes:
        plain, ours = [], []
        for _ in range(repeats):
            plain.append(steps / plain_loop(shards, batch, steps, device, precision=precision))
            with tempfile.TemporaryDirectory() as work:
                ours.append(steps / distgan_loop(shards, batch, steps, Path(work) / "run", precision))
        ratio = max(ours) / max(plain)
        ratios.append(ratio)
        print(f"{batch:>6} {max(plain):>14.1f} {max(ours):>16.1f} {ratio:>7.3f}", flush=True)
    print(f"train_ratio={min(ratios):.3f}")
    return min(ratios)
