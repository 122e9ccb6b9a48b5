"""`distgan sample` in-process through distgan.cli.main on a hand-made checkpoint of configs/debug.yaml's
generator: it writes its images, and each bad argument (a count or a seed out of range, a device this machine
lacks, an output path that is a directory or lies under a file) is one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from safetensors.torch import save

from distgan.cli import main
from distgan.config import dump_config, load_config
from distgan.generator.architectures import build_generator
from distgan.run.checkpoint import CONFIG_FILE, EMA_FILE, MARKER, MARKER_FORMAT, STATE_FILE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """configs/debug.yaml's generator as a sealed checkpoint (EMA weights, config.yaml, trainer_state.json)."""
    cfg = load_config(REPO / "configs" / "debug.yaml", ["model.image_shape=[1,28,28]"])
    g = build_generator(cfg.model, cfg.model.image_shape)
    files = {EMA_FILE: save({k: v.contiguous() for k, v in g.state_dict().items()}),
             CONFIG_FILE: dump_config(cfg).encode(), STATE_FILE: json.dumps({"state": {"step": 1}}).encode()}
    ckpt = tmp_path_factory.mktemp("sample") / "step_0000001"
    ckpt.mkdir()
    for rel, data in files.items():
        (ckpt / rel).write_bytes(data)
    listed = {rel: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in files.items()}
    (ckpt / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "step": 1, "files": listed}))
    return ckpt


def sample(capsys, checkpoint: Path, *args: str) -> tuple[int, str, str]:
    code = main(["sample", "--checkpoint", str(checkpoint), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_writes_the_images(capsys, checkpoint, tmp_path):
    out = tmp_path / "o.npz"
    code, stdout, _ = sample(capsys, checkpoint, "--n", "5", "--seed", str(2**64 - 1), "--out", str(out),
                             "--device", "cpu")
    assert code == 0 and f"wrote 5 images to {out}" in stdout
    with np.load(out) as npz:
        assert npz["images"].shape == (5, 28, 28) and npz["images"].dtype == np.uint8


@pytest.mark.parametrize("args, message", [
    (["--n", "100000000000"], "--n must be from 1 to 10,000,000, got 100000000000; write several files for more "
                              "images"),
    (["--n", "0"], "--n must be from 1 to 10,000,000, got 0"),
    (["--seed", "99999999999999999999999"], "--seed must be from 0 to 2**64-1, got 99999999999999999999999"),
    (["--seed", "-1"], "--seed must be from 0 to 2**64-1, got -1"),
    (["--device", "foo"], "device 'foo' is not a device name; use cpu or cuda (cuda:N for GPU N)"),
    (["--device", "meta"], "device meta: generators run on cpu, cuda or mps only"),
    (["--device", "cuda" if not torch.cuda.is_available() else "cuda:99"], "device cuda"),
    (["--out", "{tmp}/dir.npz"], "--out {tmp}/dir.npz is a directory; name a file in it instead"),
    (["--grid", "{tmp}/dir.npz"], "--grid {tmp}/dir.npz is a directory; name a file in it instead"),
    (["--out", "{tmp}/file/x.npz"], "--out {tmp}/file/x.npz: {tmp}/file is not a directory; choose another path"),
    (["--grid", "{tmp}/file/a/g.png"], "--grid {tmp}/file/a/g.png: {tmp}/file is not a directory; choose another"),
], ids=lambda v: " ".join(v)[:30] if isinstance(v, list) else "")
def test_bad_arguments_are_one_line(capsys, checkpoint, tmp_path, args, message):
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "file").write_text("a file")
    args = [a.format(tmp=tmp_path) for a in args]
    code, stdout, stderr = sample(capsys, checkpoint, "--n", "4", "--out", str(tmp_path / "o.npz"),
                                  "--device", "cpu", *args)
    assert code == 2 and stdout == ""
    assert stderr.startswith(f"distgan sample: error: {message.format(tmp=tmp_path)}"), stderr
    assert len(stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npz", "file"]  # nothing written


def test_memory_running_out_while_sampling_is_one_line(capsys, checkpoint, tmp_path):
    """--n at the bound (10,000,000: 640 MB of noise alone) with 256 MB of address space to spare."""
    import re
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    cap = mapped + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        code, stdout, stderr = sample(capsys, checkpoint, "--n", "10000000", "--out", str(tmp_path / "o.npz"),
                                      "--device", "cpu")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert (code, stdout) == (2, "")
    assert stderr == ("distgan sample: error: not enough memory for 10000000 images; use a smaller --n (and several "
                      "--seed values for more images)\n")
    assert list(tmp_path.iterdir()) == []
