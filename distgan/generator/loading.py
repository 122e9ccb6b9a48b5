"""A trained generator from its files (a checkpoint, a run directory's latest, or an export), and the files
`distgan sample` writes from it."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from distgan.atomic import write_bytes_atomic
from distgan.config import Config
from distgan.errors import UserError
from distgan.generator.architectures import build_generator, is_out_of_memory, out_of_memory_error
from distgan.generator.export import is_export_dir, load_exported
from distgan.generator.grids import samples_grid, save_png
from distgan.generator.sampling import default_labels, is_clustered, num_classes_of, parse_labels, sample_images
from distgan.run.checkpoint import CONFIG_FILE, EMA_FILE, resolve_checkpoint
from distgan.run.resume import saved_config

MAX_SAMPLES = 10_000_000  # images per `distgan sample` (7.8 GB of 28 x 28 uint8): write more files for more
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds up to 2**64 - 1


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this machine has (cpu, cuda[:N] with CUDA, mps on a Mac); UserError otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"device {device!r:.60} is not a device name; use cpu or cuda (cuda:N for GPU N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {dev}: CUDA is not available on this machine; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {dev}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                        f"cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {dev}: MPS is not available on this machine; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {dev}: generators run on cpu, cuda or mps only")
    return dev


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """The EMA generator (eval mode) and config of a checkpoint directory, a run directory's latest, or a
    folder written by `distgan export` (distgan.generator.export). A conditional G is rebuilt from the saved
    `model.conditional`/`model.num_classes`; its class frequencies come with its weights."""
    device = check_device(device)
    if is_export_dir(path):
        return load_exported(path, device)
    ckpt = resolve_checkpoint(path)
    cfg = saved_config(ckpt)
    try:
        g = build_generator(cfg.model, cfg.model.image_shape)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise out_of_memory_error(cfg.model, f"the generator of {ckpt / CONFIG_FILE}") from None
    _load_ema(g, ckpt)
    return g.to(device).eval(), cfg


def _load_ema(g: torch.nn.Module, ckpt: Path) -> None:
    """The EMA weights of checkpoint `ckpt` into `g`; one-line UserError when the file is missing, unreadable
    or of other shapes than the generator its config.yaml describes (a resealed, hand-edited checkpoint)."""
    file = ckpt / EMA_FILE
    try:
        weights = load_file(str(file))
    except FileNotFoundError:
        raise UserError(f"checkpoint {ckpt} has no {EMA_FILE}; use an earlier checkpoint") from None
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read {file} ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                        "use an earlier checkpoint") from None
    try:
        g.load_state_dict(weights)
    except RuntimeError as e:  # "Error(s) in loading state_dict ...:\n\tsize mismatch for net.0.weight: ..."
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise UserError(f"{file} does not fit the generator {ckpt / CONFIG_FILE} describes ({detail[:200]}); "
                        "use an earlier checkpoint") from None


def _check_sample_args(n: int, seed: int, out: str | Path, grid: str | Path | None) -> None:
    """One-line UserErrors for `distgan sample`'s arguments, before the checkpoint is read."""
    if not 1 <= n <= MAX_SAMPLES:
        raise UserError(f"--n must be from 1 to {MAX_SAMPLES:,}, got {n}; write several files for more images")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be from 0 to 2**64-1, got {seed}")
    if not str(out).endswith(".npz"):
        raise UserError(f"--out {out}: the output must be a .npz file")
    for flag, path in (("--out", out), ("--grid", grid)):
        if not path:
            continue
        if Path(path).is_dir():
            raise UserError(f"{flag} {path} is a directory; name a file in it instead")
        above = next((p for p in Path(path).parents if p.exists()), None)  # the nearest folder that exists
        if above is not None and not above.is_dir():
            raise UserError(f"{flag} {path}: {above} is not a directory; choose another path")


def write_samples(checkpoint: str | Path, *, n: int, seed: int, out: str | Path, grid: str | Path | None = None,
                  device: str | torch.device = "cpu", labels: str | None = None) -> np.ndarray:
    """Generate `n` images from a checkpoint's EMA G with noise from `seed`; write them to `out` (.npz, key
    `images`, plus `labels` for a conditional G, `clusters` for a self-conditioned one) and optionally a PNG
    grid (one row per class for a conditional G), both atomically. `labels` is `--labels`' spec (default: "all"
    for a class-conditional G, the clusters in their frequencies for a self-conditioned one; an error for an
    unconditional one). Returns the uint8 images."""
    _check_sample_args(n, seed, out, grid)
    g, _ = load_generator(checkpoint, device)
    k = num_classes_of(g)
    y = parse_labels(labels, k, n) if labels is not None else default_labels(g, n, seed)
    try:
        images = sample_images(g, n, seed, y).numpy()
        # a self-conditioned G's classes are clusters: not `labels`, which `distgan eval` scores as classes
        arrays = {"images": images} if y is None else {"images": images,
                                                       "clusters" if is_clustered(g) else "labels": y.numpy()}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        raise UserError(f"not enough memory for {n} images; use a smaller --n (and several --seed values for "
                        "more images)") from None
    _write(out, "--out", lambda: write_bytes_atomic(out, buf.getvalue()))
    if grid:
        _write(grid, "--grid", lambda: save_png(Path(grid), samples_grid(images, y)))
    return images


def _write(path: str | Path, flag: str, write: Callable[[], None]) -> None:
    """Run `write`; an OSError that is no WriteError (a parent that is a file, a special file system) is one line."""
    try:
        write()
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot write {flag} {path}: {e.strerror or e}; choose another path") from None
