"""`distgan prepare` from the real MNIST files: shards, manifest, byte-identical reruns, no-op."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import run_cli

from distgan.data.idx import FILES, parse_idx
from distgan.data.prepare import prepare
from distgan.data.shards import Layout, read_shard
from distgan.locks import LOCK_FILE

README_MD5 = {  # ../shared/data/mnist/README.md
    "train-images-idx3-ubyte.gz": "a7278cb56fa770ea9c924dbe240b8f8c",
    "train-labels-idx1-ubyte.gz": "b232918e4a6082e74f4f753fd5a0c5c0",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock file's (it names the pid of the last prepare)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def test_manifest_matches_files(mnist_shards):
    manifest = json.loads((mnist_shards / "manifest.json").read_text())
    assert manifest["format"] == "distgan-shards" and manifest["version"] == 2
    assert manifest["sample"]["shape"] == [1, 28, 28] and manifest["sample"]["pack_size"] == 1000
    assert manifest["classes"]["names"] == [str(i) for i in range(10)] and manifest["dataset"] is None
    assert manifest["classes"]["counts"]["train"] == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert manifest["transform"] == {"resolution": None, "channels": None, "filter": None, "crop": None}
    assert manifest["totals"] == {"samples": 20000, "shards": 4, "train": 10000, "test": 10000}
    assert {k: v["md5"] for k, v in manifest["source"]["files"].items()} == README_MD5
    for split in ("train", "test"):
        entry = manifest["splits"][split]
        assert entry["count"] == sum(s["count"] for s in entry["shards"]) == 10000
        on_disk = sorted(p.name for p in (mnist_shards / split).iterdir())
        assert on_disk == [s["name"] for s in entry["shards"]]
        for shard in entry["shards"]:
            data = (mnist_shards / split / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
            assert len(data) == shard["bytes"]
    assert sorted(p.name for p in mnist_shards.iterdir()) == [LOCK_FILE, "manifest.json", "test", "train"]


def test_shards_are_plain_webdataset(mnist_shards, mnist_raw):
    """Any webdataset pipeline reads the shards: packs of raw uint8 images, labels and keys."""
    url = str(mnist_shards / "test" / "test-000000.tar")
    packs = list(wds.WebDataset(url, shardshuffle=False))
    assert [p["__key__"] for p in packs] == [f"test-{i:06d}" for i in range(0, 5000, 1000)]
    first = packs[0]
    images = np.frombuffer(first["images.u8"], np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer(first["labels.u8"], np.uint8)
    keys = first["keys.txt"].decode().split("\n")
    want = parse_idx(mnist_raw / FILES["test_images"], kind="images")
    want_labels = parse_idx(mnist_raw / FILES["test_labels"], kind="labels")
    assert np.array_equal(images, want[:1000]) and np.array_equal(labels, want_labels[:1000])
    assert keys[:2] == ["test-000000", "test-000001"] and len(keys) == 1000
    # distgan's own reader (stdlib tarfile) sees exactly what webdataset sees.
    all_images, all_labels, all_keys = read_shard(Path(url), Layout((1, 28, 28)))
    assert all_images.shape == (5000, 1, 28, 28)
    assert np.array_equal(all_images[:, 0], np.concatenate(
        [np.frombuffer(p["images.u8"], np.uint8).reshape(-1, 28, 28) for p in packs]))
    assert np.array_equal(all_labels, np.concatenate([np.frombuffer(p["labels.u8"], np.uint8) for p in packs]))
    assert all_keys == [k for p in packs for k in p["keys.txt"].decode().split("\n")]


@pytest.mark.slow
def test_second_run_is_a_noop(mnist_shards, mnist_raw):
    def stats() -> dict[Path, tuple[int, int]]:  # the lock file is rewritten by every run: not data
        return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in mnist_shards.rglob("*")
                if p.is_file() and p.name != LOCK_FILE}

    before = stats()
    content = _files(mnist_shards)
    proc = run_cli(["prepare", "--raw-dir", str(mnist_raw), "--out", str(mnist_shards)], timeout=120)
    assert "nothing to do" in proc.stdout
    assert stats() == before and _files(mnist_shards) == content


def test_fresh_dir_same_bytes_and_repair(mnist_shards, mnist_raw, tmp_path):
    out = tmp_path / "again"
    prepare(out, raw_dir=mnist_raw, progress=False, log=lambda s: None)
    assert _files(out) == _files(mnist_shards)
    # A damaged output is not "complete and valid": prepare rewrites it to the same bytes.
    shard = out / "train" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    (out / "test" / "test-000000.tar").unlink()
    lines: list[str] = []
    prepare(out, raw_dir=mnist_raw, progress=False, log=lines.append)
    assert not any("nothing to do" in line for line in lines)
    assert _files(out) == _files(mnist_shards)


def test_shard_size_and_stale_shards(mnist_raw, tmp_path):
    out = tmp_path / "out"
    manifest = prepare(out, raw_dir=mnist_raw, shard_size=1500, progress=False, log=lambda s: None)
    counts = [s["count"] for s in manifest["splits"]["train"]["shards"]]
    assert counts == [1500] * 6 + [1000]
    assert manifest["totals"]["shards"] == 14
    prepare(out, raw_dir=mnist_raw, shard_size=4000, progress=False, log=lambda s: None)
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"train-00000{i}.tar" for i in range(3)]


def test_a_rerun_removes_what_an_interrupted_prepare_left(mnist_shards, mnist_raw, tmp_path):
    """A prepare killed while writing shards leaves the placeholder manifest and `atomic_path`'s temporary
    (`.train-000001.tar.XXXXXXXX.tmp`, half written); the successful rerun deletes its own temporaries only."""
    import shutil
    import tempfile

    from distgan.data.shards import write_incomplete_manifest

    out = tmp_path / "out"
    shutil.copytree(mnist_shards, out)
    write_incomplete_manifest(out)
    shard = (out / "train" / "train-000001.tar").read_bytes()
    leftovers = []
    for directory, name, data in ((out / "train", "train-000001.tar", shard[:len(shard) // 2]),
                                  (out, "manifest.json", b'{"format": "dist')):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)  # as atomic_path names it
        os.write(fd, data)
        os.close(fd)
        leftovers.append(Path(tmp))
    keep = {out / "notes.tmp": b"mine", out / ".notes.abcd1234.tmp": b"mine", out / "raw" / ".x.abcd1234.tmp": b"r",
            out / "train" / ".test-000000.tar.abcd1234.tmp": b"not a train shard", out / "train" / "x.tar.tmp": b"x"}
    for path, data in keep.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    lines: list[str] = []
    prepare(out, raw_dir=mnist_raw, progress=False, log=lines.append)
    assert not any(p.exists() for p in leftovers), leftovers
    assert any("removed 2 temporary file(s) left by an interrupted prepare" in line for line in lines), lines
    assert all(path.read_bytes() == data for path, data in keep.items())
    assert {k: v for k, v in _files(out).items() if out / k not in keep} == _files(mnist_shards)
