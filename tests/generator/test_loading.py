"""distgan.generator.loading in-process on a hand-made checkpoint of configs/debug.yaml's generator (its EMA
weights, config.yaml and trainer_state.json, sealed as the trainer seals them): tampered files resealed (a
config of another z_dim, an EMA tensor of another shape, no EMA file), a marker nested 100,000 deep, devices
this machine lacks, and memory running out while a generator (or the training networks) is built, under a
real address-space limit: each one a one-line UserError."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import resource
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from safetensors.torch import load, save, save_file

from distgan.config import dump_config, load_config
from distgan.errors import UserError
from distgan.generator.architectures import build_generator
from distgan.generator.loading import check_device, load_generator
from distgan.run.checkpoint import CONFIG_FILE, EMA_FILE, MARKER, MARKER_FORMAT, STATE_FILE

DEBUG = REPO / "configs" / "debug.yaml"
SHAPE = "model.image_shape=[1,28,28]"


def make_checkpoint(ckpt: Path, *overrides: str, edit=None) -> Path:
    """configs/debug.yaml's generator saved as a checkpoint's EMA; `edit(files)` changes the files (name ->
    bytes; None deletes) before the directory is sealed, as reseal.py does after a hand edit."""
    cfg = load_config(DEBUG, [SHAPE, *overrides])
    g = build_generator(cfg.model, cfg.model.image_shape)
    files = {EMA_FILE: save({k: v.contiguous() for k, v in g.state_dict().items()}),
             CONFIG_FILE: dump_config(cfg).encode(),
             STATE_FILE: json.dumps({"state": {"step": 1}, "scalers": {}, "world_size": 1}).encode()}
    if edit is not None:
        edit(files)
    ckpt.mkdir(parents=True)
    listed = {}
    for rel, data in files.items():
        if data is not None:
            (ckpt / rel).write_bytes(data)
            listed[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "step": 1, "files": listed}))
    return ckpt


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_an_intact_checkpoint_loads(tmp_path):
    g, cfg = load_generator(make_checkpoint(tmp_path / "ck"))
    assert (g.z_dim, cfg.model.g_hidden, g.training) == (16, [32, 64], False)


def _other_z_dim(files: dict) -> None:
    files[CONFIG_FILE] = files[CONFIG_FILE].replace(b"z_dim: 16", b"z_dim: 32")


def _ema_wrong_shape(files: dict) -> None:
    tensors = load(files[EMA_FILE])
    tensors[next(iter(tensors))] = torch.zeros(3)
    files[EMA_FILE] = save(tensors)


def _no_ema(files: dict) -> None:
    files[EMA_FILE] = None


@pytest.mark.parametrize("edit, message", [
    (_other_z_dim, "{ck}/ema_generator.safetensors does not fit the generator {ck}/config.yaml describes (size "
                   "mismatch for "),
    (_ema_wrong_shape, "{ck}/ema_generator.safetensors does not fit the generator {ck}/config.yaml describes (size "
                       "mismatch for "),
    (_no_ema, "checkpoint {ck} has no ema_generator.safetensors; use an earlier checkpoint"),
])
def test_a_tampered_resealed_checkpoint_is_one_line(tmp_path, edit, message):
    ck = make_checkpoint(tmp_path / "ck", edit=edit)
    error = one_line_error(load_generator, ck)
    assert error.startswith(message.format(ck=ck)), error


def test_a_marker_nested_100000_deep_is_one_line(tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    (ck / MARKER).write_text("[" * 100_000)
    assert "its COMPLETE marker is garbled" in one_line_error(load_generator, ck)


@pytest.mark.parametrize("device, message", [
    ("foo", "device 'foo' is not a device name; use cpu or cuda (cuda:N for GPU N)"),
    ("meta", "device meta: generators run on cpu, cuda or mps only"),
    ("cuda" if not torch.cuda.is_available() else "cuda:99", "device cuda"),
])
def test_devices_this_machine_lacks_are_one_line(tmp_path, device, message):
    assert one_line_error(check_device, device).startswith(message)
    assert one_line_error(load_generator, tmp_path / "absent", device).startswith(message)  # before any file
    assert check_device("cpu") == torch.device("cpu")


@contextlib.contextmanager
def address_space_headroom(extra: int) -> Iterator[None]:
    """Cap this process's address space (RLIMIT_AS, soft) at what it maps now plus `extra` bytes, then restore it:
    a larger allocation fails for real (MemoryError or torch's `can't allocate memory`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    cap = mapped + extra if hard == resource.RLIM_INFINITY else min(mapped + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


HUGE = "model.g_hidden=[16384,16384,16384,16384,16384,16384,16384,16384]"  # in range: 8 GiB of weights


def test_memory_running_out_while_building_is_one_line(tmp_path):
    """`distgan sample` of a checkpoint whose config names a huge (in-range) G, and `distgan train`'s
    build_networks for it, with 512 MB of address space to spare: the first 1 GiB layer cannot be allocated."""
    from distgan.training.networks import build_networks

    cfg = load_config(DEBUG, [SHAPE, HUGE])
    ck = make_checkpoint(tmp_path / "ck", edit=lambda files: files.update({CONFIG_FILE: dump_config(cfg).encode()}))
    sizes = "model.arch=mlp, model.g_hidden=[16384, 16384, 16384, 16384, 16384, 16384, 16384, 16384]"
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1)  # never reached: G comes first
    with address_space_headroom(512 << 20):
        sample_error = one_line_error(load_generator, ck)
        train_error = one_line_error(build_networks, cfg, accelerator)
    assert sample_error.startswith(f"not enough memory to build the generator of {ck / CONFIG_FILE} ({sizes}"), \
        sample_error
    assert train_error.startswith(f"not enough memory to build G, D and the EMA of G on cpu ({sizes}"), train_error
    assert "use smaller model sizes" in train_error
    save_file({"x": torch.zeros(1)}, str(tmp_path / "after.safetensors"))  # the limit is lifted again
