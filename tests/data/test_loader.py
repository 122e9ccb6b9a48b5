"""build_loader's guarantees over world sizes, loader workers and shard counts (ranks simulated in
one process), resuming, load_split, and integrity errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distgan.data import build_loader, epoch_order, load_split, samples_per_epoch
from distgan.data.idx import FILES, parse_idx
from distgan.data.prepare import prepare
from distgan.errors import UserError

B = 64


@pytest.fixture(scope="module")
def shards7(tmp_path_factory, mnist_raw) -> Path:
    """Prepare output with 7 shards per split (6 x 1500 + 1000): divides by no world size or worker count."""
    out = tmp_path_factory.mktemp("shards7")
    prepare(out, raw_dir=mnist_raw, shard_size=1500, progress=False, log=lambda s: None)
    return out


@pytest.fixture(params=["2shards", "7shards"])
def split_dir(request, mnist_shards, shards7) -> Path:
    return (mnist_shards if request.param == "2shards" else shards7) / "test"


def run_ranks(split: Path, world_size: int, num_workers: int, *, seed: int = 0, epoch: int = 0,
              start_sample: int = 0, batch_size: int = B) -> list[list[list[str]]]:
    """Per rank, the list of batches (each the list of keys), checking shapes and len() on the way."""
    out = []
    for rank in range(world_size):
        loader = build_loader(split, batch_size=batch_size, rank=rank, world_size=world_size,
                              num_workers=num_workers, seed=seed, epoch=epoch, start_sample=start_sample)
        batches = []
        for batch in loader:
            assert batch["image"].shape == (batch_size, 1, 28, 28) and batch["image"].dtype == torch.uint8
            assert batch["label"].shape == (batch_size,) and batch["label"].dtype == torch.int64
            assert len(batch["key"]) == batch_size and all(isinstance(k, str) for k in batch["key"])
            batches.append(batch["key"])
        assert len(batches) == len(loader)
        out.append(batches)
    return out


def global_sequence(per_rank: list[list[list[str]]]) -> list[str]:
    """Keys in global order: step by step, rank 0's batch, then rank 1's..."""
    return [k for step in zip(*per_rank, strict=True) for batch in step for k in batch]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_exactly_once_equal_batches(split_dir, world_size, num_workers):
    n = samples_per_epoch(split_dir)
    per_rank = run_ranks(split_dir, world_size, num_workers)
    counts = {len(b) for b in per_rank}
    assert counts == {n // (B * world_size)}  # equal on every rank
    keys = [k for rank in per_rank for batch in rank for k in batch]
    assert len(keys) == len(set(keys))  # exactly once
    assert 0 <= n - len(keys) < world_size * B  # left out: fewer than W x B
    # The same global order whatever the world size or worker count.
    seq = global_sequence(per_rank)
    assert seq == global_sequence(run_ranks(split_dir, 1, 0))[:len(seq)]


def test_batches_hold_the_right_images(mnist_raw, mnist_shards):
    images = parse_idx(mnist_raw / FILES["test_images"], kind="images")
    labels = parse_idx(mnist_raw / FILES["test_labels"], kind="labels")
    loader = build_loader(mnist_shards / "test", batch_size=B, rank=1, world_size=2, num_workers=2, seed=3,
                          epoch=1)
    for i, batch in enumerate(loader):
        idx = [int(k.split("-")[1]) for k in batch["key"]]
        assert np.array_equal(batch["image"][:, 0].numpy(), images[idx])
        assert np.array_equal(batch["label"].numpy(), labels[idx])
        if i == 3:
            break


def test_shuffle_by_seed_and_epoch(split_dir):
    a = global_sequence(run_ranks(split_dir, 2, 0, seed=5, epoch=2))
    assert a == global_sequence(run_ranks(split_dir, 2, 2, seed=5, epoch=2))
    assert a != global_sequence(run_ranks(split_dir, 2, 0, seed=5, epoch=3))
    assert a != global_sequence(run_ranks(split_dir, 2, 0, seed=6, epoch=2))
    # Order inside a shard is shuffled: consecutive keys are rarely consecutive images.
    idx = np.array([int(k.split("-")[1]) for k in a])
    assert np.mean(np.diff(idx) == 1) < 0.01
    # The shard order changes with the epoch too.
    counts = [s["count"] for s in json.loads((split_dir.parent / "manifest.json").read_text())
              ["splits"]["test"]["shards"]]
    starts = np.concatenate([[0], np.cumsum(counts)])
    first_shards = {int(np.searchsorted(starts, epoch_order(counts, 5, e)[0], side="right")) - 1
                    for e in range(8)}
    assert len(first_shards) > 1


@pytest.mark.parametrize("resume_world,resume_workers", [(2, 2), (3, 0), (1, 2)])
def test_resume(shards7, resume_world, resume_workers):
    split = shards7 / "test"
    full = run_ranks(split, 2, 0, seed=1, epoch=4)
    steps_done = 17
    consumed = steps_done * B * 2
    resumed = run_ranks(split, resume_world, resume_workers, seed=1, epoch=4, start_sample=consumed)
    seq_full, seq_rest = global_sequence(full), global_sequence(resumed)
    if resume_world == 2:
        assert [r[steps_done:] for r in full] == resumed  # exactly the rest, batch for batch
    order = global_sequence(run_ranks(split, 1, 0, seed=1, epoch=4, batch_size=1))  # whole epoch
    assert seq_full[:consumed] == order[:consumed]
    assert seq_rest == order[consumed:consumed + len(seq_rest)]  # the rest of the same epoch
    assert len(order) - consumed - len(seq_rest) < resume_world * B
    assert not set(seq_rest) & set(seq_full[:consumed])


def test_load_split(mnist_raw, mnist_shards, shards7):
    x, y = load_split(shards7 / "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), parse_idx(mnist_raw / FILES["test_images"], kind="images"))
    assert np.array_equal(y.numpy(), parse_idx(mnist_raw / FILES["test_labels"], kind="labels"))
    x2, y2 = load_split(mnist_shards / "test")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert samples_per_epoch(mnist_shards / "train") == 10000


def test_argument_errors(mnist_shards):
    split = mnist_shards / "test"
    common = dict(batch_size=B, num_workers=0, seed=0, epoch=0)
    for kwargs, text in [({"rank": 2, "world_size": 2}, "rank=2"),
                         ({"rank": 0, "world_size": 1, "start_sample": 10001}, "start_sample"),
                         ({"rank": 0, "world_size": 200}, "exceeds")]:
        with pytest.raises(UserError, match=text):
            build_loader(split, **{**common, **kwargs})
    with pytest.raises(UserError, match="split directory"):
        build_loader(mnist_shards, rank=0, world_size=1, **common)
    # Resuming at the very end of the epoch yields nothing.
    assert len(build_loader(split, rank=0, world_size=1, start_sample=10000, **common)) == 0


@pytest.fixture
def copy7(shards7, tmp_path) -> Path:
    """A private copy of the 7-shard test split (tests below damage it)."""
    out = tmp_path / "copy"
    shutil.copytree(shards7 / "test", out / "test")
    shutil.copy(shards7 / "manifest.json", out / "manifest.json")
    return out / "test"


def _error(split: Path, num_workers: int = 0) -> str:
    with pytest.raises(UserError) as exc:
        loader = build_loader(split, batch_size=B, rank=0, world_size=1, num_workers=num_workers, seed=0,
                              epoch=0)
        for _ in loader:
            pass
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_truncated_corrupt_shard(copy7):
    shard = copy7 / "test-000003.tar"
    data = shard.read_bytes()
    shard.unlink()
    assert str(shard) in _error(copy7) and "missing" in _error(copy7)
    shard.write_bytes(data[:len(data) // 2])
    assert str(shard) in _error(copy7) and "truncated" in _error(copy7)
    corrupt = bytearray(data)
    corrupt[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(corrupt))
    assert str(shard) in _error(copy7) and "sha256" in _error(copy7)
    with pytest.raises(UserError, match=str(shard)):
        load_split(copy7)
    shard.write_bytes(data)
    assert len(list(build_loader(copy7, batch_size=B, rank=0, world_size=1, num_workers=0, seed=0, epoch=0)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_damage_after_startup_surfaces_from_workers(copy7, num_workers):
    """sha256 is checked at start-up only; a shard damaged later still fails with a one-line error
    naming it, also when the failure happens inside a DataLoader worker."""
    loader = build_loader(copy7, batch_size=B, rank=0, world_size=1, num_workers=num_workers, seed=0, epoch=0)
    for shard in copy7.glob("*.tar"):
        shard.write_bytes(shard.read_bytes()[:700_000])  # cut mid-member
    with pytest.raises(UserError) as exc:
        for _ in loader:
            pass
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg and "DataLoader worker" not in msg
    assert "test-00000" in msg and "truncated or corrupt" in msg


@pytest.mark.parametrize("field, value", [
    ("name", "test-000000.tar\n"),  # `$` with re.match matched before the newline: this passed validation
    ("name", "test-\u0660\u0660\u0660\u0660\u0660\u0660.tar"),  # \d took Arabic-Indic digits
    ("sha256", "0" * 64 + "\n"),
])
def test_manifest_fields_must_match_exactly(copy7, field, value):
    path = copy7.parent / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["test"]["shards"][0][field] = value
    path.write_text(json.dumps(manifest, indent=2))
    messages = [_error(copy7)]  # build_loader
    for call in (load_split, samples_per_epoch):
        with pytest.raises(UserError) as exc:
            call(copy7)
        messages.append(str(exc.value))
    for msg in messages:
        assert "\n" not in msg and str(path) in msg and f"'splits.test.shards[0].{field}'" in msg, msg


def test_missing_manifest(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="manifest.json: missing"):
        build_loader(tmp_path / "train", batch_size=B, rank=0, world_size=1, num_workers=0, seed=0, epoch=0)


@pytest.mark.slow
def test_bench_data_output(mnist_shards, capsys):
    from distgan.cli import main

    for shards, extra in ((mnist_shards, []), (mnist_shards / "test", ["--no-encodings"])):
        assert main(["bench", "data", "--shards", str(shards), "--min-seconds", "0.01", "--workers", "0,2",
                     *extra]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[-2].startswith("data_ratio=") and float(lines[-2].split("=")[1]) > 0
        assert lines[-1].startswith("loader_img_per_s=") and float(lines[-1].split("=")[1]) > 0
        assert sum("build_loader" in line for line in lines) == 2
    assert main(["bench", "data", "--shards", str(mnist_shards.parent)]) == 2
    assert "manifest" in capsys.readouterr().err
