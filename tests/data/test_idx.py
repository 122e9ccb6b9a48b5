"""IDX parsing and validation of the four MNIST files (distgan.data.idx)."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import NOT_A_FILE, run_cli

from distgan.data.idx import FILES, find_raw_files, load_pair, parse_idx
from distgan.errors import UserError

TRAIN_CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]  # ../shared/data/mnist/README.md


def _raw(mnist_raw: Path, role: str) -> bytes:
    return gzip.decompress((mnist_raw / FILES[role]).read_bytes())


def _one_line_error(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg, msg
    return msg


def test_parse_real_files(mnist_raw):
    paths = find_raw_files(mnist_raw)
    images, labels = load_pair(paths["train_images"], paths["train_labels"])
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_CLASS_COUNTS
    test_images, test_labels = load_pair(paths["test_images"], paths["test_labels"])
    assert test_images.shape == (10000, 28, 28)
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_uncompressed_files_are_found_and_equal(mnist_raw, tmp_path):
    for role, name in FILES.items():
        (tmp_path / name.removesuffix(".gz")).write_bytes(_raw(mnist_raw, role))
    paths = find_raw_files(tmp_path)
    assert paths["test_labels"].name == "t10k-labels-idx1-ubyte"
    a = parse_idx(paths["test_images"], kind="images")
    b = parse_idx(mnist_raw / FILES["test_images"], kind="images")
    assert np.array_equal(a, b)


def test_wrong_magic(mnist_raw, tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(_raw(mnist_raw, "test_labels"))  # a labels file where images are expected
    with pytest.raises(UserError) as exc:
        parse_idx(bad, kind="images")
    assert "magic" in _one_line_error(exc, bad)


def test_truncated(mnist_raw, tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(_raw(mnist_raw, "test_images")[:-100], compresslevel=1, mtime=0))
    with pytest.raises(UserError) as exc:
        parse_idx(bad, kind="images")
    assert "truncated" in _one_line_error(exc, bad)
    header_only = tmp_path / "header"
    header_only.write_bytes(_raw(mnist_raw, "test_images")[:6])
    with pytest.raises(UserError) as exc:
        parse_idx(header_only, kind="images")
    assert "truncated" in _one_line_error(exc, header_only)


def test_corrupt_gzip(mnist_raw, tmp_path):
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes((mnist_raw / FILES["test_labels"]).read_bytes()[:500])
    with pytest.raises(UserError) as exc:
        parse_idx(bad, kind="labels")
    assert "gzip" in _one_line_error(exc, bad)


def test_count_mismatch(mnist_raw, tmp_path):
    raw = _raw(mnist_raw, "test_labels")
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(raw[:4] + (9999).to_bytes(4, "big") + raw[8:-1])  # a valid file of 9999 labels
    assert parse_idx(labels, kind="labels").shape == (9999,)
    images = mnist_raw / FILES["test_images"]
    with pytest.raises(UserError) as exc:
        load_pair(images, labels)
    msg = _one_line_error(exc, images)
    assert "10000 images" in msg and "9999 labels" in msg


def test_header_count_disagrees_with_body(mnist_raw, tmp_path):
    raw = _raw(mnist_raw, "test_labels")
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(raw[:4] + (10001).to_bytes(4, "big") + raw[8:])
    with pytest.raises(UserError) as exc:
        parse_idx(bad, kind="labels")
    assert "10001" in _one_line_error(exc, bad)


def test_any_image_size_and_label_byte(mnist_raw, tmp_path):
    """H and W come from the header; labels may be any byte (a named dataset narrows them in prepare)."""
    raw = _raw(mnist_raw, "test_images")
    images = parse_idx(mnist_raw / FILES["test_images"], kind="images")
    crop = np.ascontiguousarray(images[:100, :, :27])  # 100 real digits cut to 28x27
    ok = tmp_path / "images"
    ok.write_bytes(raw[:4] + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") + (27).to_bytes(4, "big")
                   + crop.tobytes())
    assert np.array_equal(parse_idx(ok, kind="images"), crop)
    bad = tmp_path / "images_bad"  # the header says 28x27, the body is 28x28
    bad.write_bytes(raw[:12] + (27).to_bytes(4, "big") + raw[16:])
    with pytest.raises(UserError) as exc:
        parse_idx(bad, kind="images")
    assert "trailing bytes" in _one_line_error(exc, bad)
    labels = tmp_path / "labels"
    labels.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x03\x0c\xff")
    assert parse_idx(labels, kind="labels").tolist() == [3, 12, 255]


def test_absurd_image_size(tmp_path):
    bad = tmp_path / "images"
    bad.write_bytes((0x803).to_bytes(4, "big") + (2).to_bytes(4, "big") + (28).to_bytes(4, "big")
                    + (10**6).to_bytes(4, "big"))
    with pytest.raises(UserError) as exc:
        parse_idx(bad, kind="images")
    assert "28x1000000" in _one_line_error(exc, bad)


def test_missing_file_in_raw_dir(mnist_raw, tmp_path):
    for name in FILES.values():
        shutil.copy(mnist_raw / name, tmp_path / name)
    (tmp_path / FILES["train_labels"]).unlink()
    with pytest.raises(UserError) as exc:
        find_raw_files(tmp_path)
    _one_line_error(exc, tmp_path / FILES["train_labels"])


@pytest.mark.slow
def test_cli_bad_file_is_one_line(mnist_raw, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in FILES.values():
        shutil.copy(mnist_raw / name, raw / name)
    bad = raw / FILES["train_images"]
    bad.write_bytes(bad.read_bytes()[:-50000])  # damaged gzip stream
    proc = run_cli(["prepare", "--raw-dir", str(raw), "--out", str(tmp_path / "out")], timeout=60,
                   check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and lines[0].startswith("distgan prepare: error:"), proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


ODD_FILES = {"fifo": (NOT_A_FILE["fifo"], "is a FIFO (named pipe), not an IDX file"),
             "dir": (NOT_A_FILE["dir"], "is a directory, not an IDX file"),
             "dev_zero": (NOT_A_FILE["dev_zero"], "is a character device, not an IDX file")}


@pytest.mark.timeout(30)  # a FIFO opened for reading waits for a writer: never again
@pytest.mark.parametrize("case", sorted(ODD_FILES))
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_raw_file_that_is_no_regular_file(tmp_path, case, gz):
    """Before the fix a FIFO, a directory or a link to /dev/zero where an IDX file belongs was "missing";
    now find_raw_files says what it is, and parse_idx (handed one directly) neither blocks nor reads it."""
    make, message = ODD_FILES[case]
    for name in FILES.values():
        (tmp_path / name).write_bytes(b"")
    odd = tmp_path / (FILES["train_labels"] if gz else FILES["train_labels"].removesuffix(".gz"))
    (tmp_path / FILES["train_labels"]).unlink()
    make(odd)
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        find_raw_files(tmp_path)
    assert _one_line_error(exc, odd).startswith(f"{odd}: {message}; ")
    with pytest.raises(UserError) as exc:
        parse_idx(odd, kind="labels")
    assert _one_line_error(exc, odd).startswith(f"{odd}: {message}; ")
    assert time.monotonic() - start < 2
