"""distgan.data.splits on small prepared splits of real MNIST digits: split_fingerprint (the shard list's
hash: path-independent, per split, None when unreadable), canonical_images (the layouts evaluation holds,
other shapes refused in one line) and load_split_images (exact images and labels back, in key order)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from distgan.data.idx import FILES, load_pair
from distgan.data.prepare import prepare
from distgan.data.splits import canonical_images, load_split_images, split_fingerprint
from distgan.errors import UserError


@pytest.fixture(scope="module")
def digits(mnist_raw) -> tuple[np.ndarray, np.ndarray]:
    """The first 16 real MNIST test digits (16 x 28 x 28 uint8) and their labels."""
    images, labels = load_pair(mnist_raw / FILES["test_images"], mnist_raw / FILES["test_labels"])
    return images[:16].copy(), labels[:16].astype(np.int64)


def _prepare(out: Path, **arrays: np.ndarray) -> Path:
    np.savez(out.with_suffix(".npz"), **arrays)
    prepare(out, npz=out.with_suffix(".npz"), shard_size=5, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def gray(tmp_path_factory, digits) -> Path:
    """12 train and 4 test digits, labelled, in shards of 5."""
    x, y = digits
    return _prepare(tmp_path_factory.mktemp("splits") / "gray", train_images=x[:12], train_labels=y[:12],
                    test_images=x[12:], test_labels=y[12:])


def test_fingerprint_is_the_hash_of_the_shard_list(gray):
    shards = json.loads((gray / "manifest.json").read_text())["splits"]["train"]["shards"]
    assert [s["name"] for s in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    listing = json.dumps([[s["name"], s["sha256"]] for s in shards])
    assert split_fingerprint(gray / "train") == hashlib.sha256(listing.encode()).hexdigest()
    assert split_fingerprint(str(gray / "test")) not in (None, split_fingerprint(gray / "train"))


def test_fingerprint_follows_the_data_not_the_path(gray, digits, tmp_path):
    x, y = digits
    same = _prepare(tmp_path / "same", train_images=x[:12], train_labels=y[:12], test_images=x[12:],
                    test_labels=y[12:])
    assert split_fingerprint(same / "train") == split_fingerprint(gray / "train")
    other = _prepare(tmp_path / "other", train_images=x[:12][::-1], train_labels=y[:12][::-1], test_images=x[12:],
                     test_labels=y[12:])
    assert split_fingerprint(other / "train") != split_fingerprint(gray / "train")
    assert split_fingerprint(other / "test") == split_fingerprint(gray / "test")


@pytest.mark.parametrize("manifest", [
    None,  # no manifest.json
    "{not json",
    b"\xff\xfe",  # not UTF-8
    '{"splits": {"test": {"shards": []}}}',  # no such split
    '{"splits": {"train": {"shards": {"a": 1}}}}',
    '{"splits": {"train": {"shards": [{"name": "train-000000.tar"}]}}}',
    "[1, 2]",
], ids=["missing", "not_json", "not_utf8", "no_such_split", "shards_not_a_list", "no_sha256", "not_an_object"])
def test_fingerprint_of_an_unreadable_manifest_is_none(tmp_path, manifest):
    (tmp_path / "train").mkdir()
    if isinstance(manifest, str):
        (tmp_path / "manifest.json").write_text(manifest)
    elif manifest is not None:
        (tmp_path / "manifest.json").write_bytes(manifest)
    assert split_fingerprint(tmp_path / "train") is None


def test_fingerprint_of_a_deeply_nested_manifest_is_none(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "manifest.json").write_text("[" * 100_000)
    assert split_fingerprint(tmp_path / "train") is None


def test_canonical_images_keeps_or_views_the_known_layouts(digits):
    x = digits[0]
    assert canonical_images(x, "s") is x  # N x H x W
    one = canonical_images(x[:, None], "s")  # N x 1 x H x W: the channel axis dropped, no copy
    assert one.shape == (16, 28, 28) and np.shares_memory(one, x) and np.array_equal(one, x)
    colour = np.zeros((0, 3, 5, 5), np.uint8)
    assert canonical_images(colour, "s") is colour


@pytest.mark.parametrize("shape", [(28, 28), (2, 2, 28, 28), (2, 28, 28, 3), (2, 1, 1, 28, 28)])
def test_canonical_images_refuses_other_shapes_in_one_line(shape):
    with pytest.raises(UserError) as exc:
        canonical_images(np.zeros(shape, np.uint8), "runs/x/samples.npz")
    assert str(exc.value) == f"runs/x/samples.npz: images have shape {shape}; expected N x H x W or N x C x H x W " \
                             f"with C in {{1, 3}}"


def test_load_split_images_gives_back_the_prepared_data(gray, digits):
    x, y = digits
    images, labels = load_split_images(gray / "train")
    assert images.dtype == np.uint8 and images.shape == (12, 28, 28) and np.array_equal(images, x[:12])
    assert labels.dtype == np.int64 and np.array_equal(labels, y[:12])
    images, labels = load_split_images(str(gray / "test"))
    assert np.array_equal(images, x[12:]) and np.array_equal(labels, y[12:])


def test_load_split_images_colour_and_unlabelled(tmp_path, digits):
    rgb = np.stack([digits[0], 255 - digits[0], digits[0] // 2], axis=-1)  # N x H x W x 3
    out = _prepare(tmp_path / "rgb", train_images=rgb[:10], test_images=rgb[10:])
    images, labels = load_split_images(out / "train")
    assert images.shape == (10, 3, 28, 28) and np.array_equal(images, rgb[:10].transpose(0, 3, 1, 2))
    assert labels.tolist() == [-1] * 10


def test_load_split_images_errors_are_one_line(tmp_path):
    with pytest.raises(UserError) as exc:
        load_split_images(tmp_path / "shards" / "test")
    assert str(exc.value) == f"split directory {tmp_path / 'shards' / 'test'} not found; pass --shards DIR, the " \
                             f"output of `distgan prepare` (with DIR/train and DIR/test)"
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError) as exc:
        load_split_images(tmp_path / "test")
    assert str(exc.value).startswith(f"{tmp_path / 'manifest.json'}: missing; run `distgan prepare")
    assert "\n" not in str(exc.value)
