"""distgan.data.stream.BatchStream in one process (num_workers=0), on a tiny prepared split of real MNIST
digits: images in [-1, 1] with their own labels, the data position advanced by the global batch, the next
epoch started at the end of one, a stream restored from a saved position continuing exactly, ranks
splitting the global batch, and one-line errors. The accelerator is a stand-in holding the three
attributes the stream reads (num_processes, process_index, device)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distgan.data.idx import FILES, load_pair
from distgan.data.prepare import prepare
from distgan.data.stream import BatchStream
from distgan.errors import UserError
from distgan.run.checkpoint import TrainState

N = 10  # training images: batches of 3 leave one out per epoch


@pytest.fixture(scope="module")
def digits(mnist_raw) -> tuple[np.ndarray, np.ndarray]:
    """The first N real MNIST test digits (all different) and their labels."""
    images, labels = load_pair(mnist_raw / FILES["test_images"], mnist_raw / FILES["test_labels"])
    return images[:N].copy(), labels[:N].astype(np.int64)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, digits) -> Path:
    """`prepare --npz` output: the N digits as the train split in shards of 4, two of them as test."""
    x, y = digits
    root = tmp_path_factory.mktemp("stream")
    np.savez(root / "d.npz", train_images=x, train_labels=y, test_images=x[:2], test_labels=y[:2])
    prepare(root / "out", npz=root / "d.npz", shard_size=4, progress=False, log=lambda _: None)
    return root / "out"


def _stream(split: Path, position: TrainState, *, batch_size: int = 3, rank: int = 0, world: int = 1,
            seed: int = 0) -> BatchStream:
    acc = SimpleNamespace(num_processes=world, process_index=rank, device=torch.device("cpu"))
    return BatchStream(split, num_workers=0, batch_size=batch_size, seed=seed, accelerator=acc, position=position)


def _indices(images: torch.Tensor, digits: np.ndarray) -> list[int]:
    """Which of the N digits each image of a batch is (found by exact pixel match after undoing [-1, 1])."""
    pixels = ((images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    return [int(np.flatnonzero((digits == p).all(axis=(1, 2)))[0]) for p in pixels]


def test_batches_are_real_images_in_signed_range_with_their_labels(shards, digits):
    x, y = digits
    images, labels = _stream(shards / "train", TrainState()).next_batch()
    assert images.dtype == torch.float32 and images.shape == (3, 1, 28, 28) and images.device.type == "cpu"
    assert images.min() == -1.0 and images.max() == 1.0  # MNIST holds both 0 and 255
    idx = _indices(images, x)
    assert torch.equal(images[:, 0], torch.from_numpy(x[idx]).float() / 127.5 - 1.0)
    assert labels.dtype == torch.int64 and labels.tolist() == y[idx].tolist()


def test_position_advances_and_the_next_epoch_starts_at_zero(shards, digits):
    position = TrainState()
    stream = _stream(shards / "train", position)
    seen = []
    for expected in [(0, 3), (0, 6), (0, 9), (1, 3), (1, 6), (1, 9), (2, 3)]:
        seen.append(_indices(stream.next_batch()[0], digits[0]))
        assert (position.epoch, position.start_sample) == expected
    epoch0, epoch1 = sum(seen[:3], []), sum(seen[3:6], [])
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9  # each image at most once per epoch, one left out
    assert epoch0 != epoch1  # a new order each epoch


def test_a_restored_position_continues_exactly(shards):
    position = TrainState()
    reference = _stream(shards / "train", position, seed=7)
    batches, saved = [], []
    for _ in range(5):
        batches.append(reference.next_batch())
        saved.append((position.epoch, position.start_sample))
    assert saved == [(0, 3), (0, 6), (0, 9), (1, 3), (1, 6)]
    for k in (1, 3, 4):  # saved mid-epoch, at the end of epoch 0, inside epoch 1
        restored = TrainState(epoch=saved[k - 1][0], start_sample=saved[k - 1][1])
        resumed = _stream(shards / "train", restored, seed=7)
        for (images, labels), after in zip(batches[k:], saved[k:], strict=True):
            got_images, got_labels = resumed.next_batch()
            assert torch.equal(got_images, images) and torch.equal(got_labels, labels)
            assert (restored.epoch, restored.start_sample) == after


def test_ranks_split_each_global_batch(shards, digits):
    whole = _stream(shards / "train", TrainState(), batch_size=4)
    positions = [TrainState(), TrainState()]
    ranks = [_stream(shards / "train", positions[r], batch_size=2, rank=r, world=2) for r in range(2)]
    for _ in range(2):
        expected = _indices(whole.next_batch()[0], digits[0])
        assert sum((_indices(s.next_batch()[0], digits[0]) for s in ranks), []) == expected
    assert [(p.epoch, p.start_sample) for p in positions] == [(0, 8), (0, 8)]  # global samples, on every rank


def test_unlabelled_batches_are_labelled_minus_one(tmp_path, digits):
    np.savez(tmp_path / "u.npz", train_images=digits[0])
    prepare(tmp_path / "out", npz=tmp_path / "u.npz", progress=False, log=lambda _: None)
    _, labels = _stream(tmp_path / "out" / "train", TrainState(), batch_size=5).next_batch()
    assert labels.tolist() == [-1] * 5


def test_errors_are_one_line(shards, tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError) as exc:
        _stream(tmp_path / "train", TrainState())
    assert str(exc.value) == f"data.dir {tmp_path}: no manifest.json there; run `distgan prepare --out {tmp_path}` " \
                             f"first (or fix data.dir)"
    stream = _stream(shards / "train", TrainState(), batch_size=N + 1)  # checked when the loader is built
    with pytest.raises(UserError) as exc:
        stream.next_batch()
    assert str(exc.value) == f"batch_size {N + 1} x world_size 1 = {N + 1} exceeds the {N} samples of " \
                             f"{shards / 'train'}; use a smaller batch size"
    position = TrainState(epoch=3, start_sample=N + 1)  # a saved position from a bigger dataset
    with pytest.raises(UserError) as exc:
        _stream(shards / "train", position).next_batch()
    assert "\n" not in str(exc.value) and f"start_sample={N + 1}" in str(exc.value)
    assert (position.epoch, position.start_sample) == (3, N + 1)  # not silently moved
