"""Data-path faults, each reproduced for real: SIGTERM to a training process group with loader workers,
manifests that disagree with their shards, decompression bombs (IDX and shards), `prepare` into a
directory it does not own, and two concurrent `prepare` runs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON, REPO, cap_address_space, child_env, run_cli

from distgan.data import build_loader, load_split, samples_per_epoch
from distgan.data.idx import FILES, parse_idx
from distgan.data.shards import Layout, read_shard
from distgan.errors import UserError

pytestmark = pytest.mark.slow  # real processes, signals, servers or file systems (unit tier: -m "not slow")


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll until predicate() is true; fail if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"exited {proc.returncode} before {what}\n{out[-3000:]}\n{err[-5000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_sigterm_to_the_process_group_with_loader_workers(mnist_shards, tmp_path):
    """SLURM signals every process of the step: the loader workers must survive SIGTERM, so that the main
    process saves a checkpoint and exits 0 instead of dying of `DataLoader worker ... killed by signal`."""
    run_dir = tmp_path / "run"
    cmd = [PYTHON, "-m", "distgan", "train", "--config", "configs/debug.yaml", f"data.dir={mnist_shards}",
           "data.num_workers=2", "train.steps=100000", "checkpoint.every=5", f"run.dir={run_dir}",
           "wandb.mode=disabled", "log.progress=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _wait_for(lambda: any((run_dir / "checkpoints").glob("step_*/COMPLETE")), proc, 180,
                  "first checkpoint")
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    assert "killed by signal" not in err, err[-4000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    stopped = re.search(r"preempted by SIGTERM; checkpoint saved at step (\d+)", out + err)
    assert stopped, out[-2000:] + err[-2000:]
    step = int(stopped.group(1))
    assert (run_dir / "checkpoints" / f"step_{step:07d}" / "COMPLETE").is_file()


# -- manifests that disagree with their shards ----------------------------------------------------

B = 64


@pytest.fixture
def split_copy(mnist_shards, tmp_path) -> Path:
    """A private copy of the prepared output (tests below edit its manifest); returns its train split."""
    out = tmp_path / "shards"
    shutil.copytree(mnist_shards, out, ignore=shutil.ignore_patterns(".lock"))
    return out / "train"


def _edit_manifest(split: Path, edit) -> Path:
    path = split.parent / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))
    return path


def _set(*keys):
    def edit(value):
        def apply(m):
            obj = m
            for k in keys[:-1]:
                obj = obj[k]
            obj[keys[-1]] = value
        return apply
    return edit


EDITS = {  # id -> (edit, the field the message must name)
    "count_doubled": (_set("splits", "train", "count")(20000), "splits.train.count"),
    "count_uneven": (_set("splits", "train", "count")(10001), "splits.train.count"),
    "shards_missing": (lambda m: m["splits"]["train"].pop("shards"), "splits.train.shards"),
    "shard_count_not_int": (_set("splits", "train", "shards", 0, "count")("5000"), "splits.train.shards[0].count"),
    "bytes_zero": (_set("splits", "train", "shards", 1, "bytes")(0), "splits.train.shards[1].bytes"),
    "name_escapes": (_set("splits", "train", "shards", 0, "name")("../test/test-000000.tar"),
                     "splits.train.shards[0].name"),
    "name_with_slash": (_set("splits", "train", "shards", 0, "name")("sub/train-000000.tar"),
                        "splits.train.shards[0].name"),
    "sha_not_hex": (_set("splits", "train", "shards", 0, "sha256")("xyz"), "splits.train.shards[0].sha256"),
    "splits_not_object": (_set("splits")([]), "splits"),
    "totals_disagree": (_set("totals", "train")(9999), "totals"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_manifest_is_validated_when_read(split_copy, case):
    edit, field = EDITS[case]
    path = _edit_manifest(split_copy, edit)
    for call in (lambda: build_loader(split_copy, batch_size=B, rank=0, world_size=1, num_workers=0, seed=0,
                                      epoch=0),
                 lambda: load_split(split_copy), lambda: samples_per_epoch(split_copy)):
        with pytest.raises(UserError) as exc:
            call()
        msg = str(exc.value)
        assert "\n" not in msg and str(path) in msg and repr(field) in msg, msg


def test_cli_train_refuses_a_doubled_count(split_copy, tmp_path):
    """Before the fix, count 20000 for 10000 real samples trained on uninitialised memory and exited 0."""
    _edit_manifest(split_copy, _set("splits", "train", "count")(20000))
    proc = run_cli(["train", "--config", "configs/debug.yaml", f"data.dir={split_copy.parent}",
                    "data.num_workers=0", f"run.dir={tmp_path / 'run'}", "wandb.mode=disabled",
                    "log.progress=false"], timeout=180, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "splits.train.count" in last and "manifest.json" in last, last
    assert not list((tmp_path / "run").glob("checkpoints/step_*"))


def test_gather_never_yields_unfilled_rows(mnist_shards):
    """A plan that asks for more samples than the epoch holds (what a bad count used to cause) stops with
    a one-line error instead of yielding np.empty rows."""
    from dataclasses import replace

    from distgan.data.loader import _batches

    loader = build_loader(mnist_shards / "train", batch_size=B, rank=0, world_size=1, num_workers=0, seed=0,
                          epoch=0)
    plan = replace(loader.plan, start_sample=10000 - B // 2, num_batches=1)  # half a batch is left
    with pytest.raises(UserError, match="the manifest does not match its shards"):
        list(_batches(plan, 0, 1))


# -- decompression bombs --------------------------------------------------------------------------

MiB = 1 << 20


def _gzip_of_zeros(prefix: bytes, zero_mib: int, suffix: bytes = b"") -> bytes:
    """A valid gzip file of prefix + zero_mib MiB of zeros + suffix, made cheaply: deflate one MiB of
    zeros after a full flush (byte-aligned, no back-references) and repeat those bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MiB)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    piece = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    assert piece == c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.compress(suffix) + c.flush(zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    for _ in range(zero_mib):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + zero_mib * MiB + len(suffix)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + piece * zero_mib + tail
            + crc.to_bytes(4, "little") + (size % (1 << 32)).to_bytes(4, "little"))


def test_bomb_helper_makes_valid_gzip():
    assert gzip.decompress(_gzip_of_zeros(b"abc", 2, b"xyz")) == b"abc" + bytes(2 * MiB) + b"xyz"


_PEAK = """
import resource, sys
from {module} import {func} as f
from distgan.errors import UserError
try:
    f(*sys.argv[1:])
    print("RESULT ok")
except UserError as e:
    print("RESULT error", e)
print("MAXRSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _peak(module: str, func: str, *args: str) -> tuple[str, float]:
    """(result line, peak RSS in MB) of calling module.func(*args) in a fresh process."""
    proc = subprocess.run([PYTHON, "-c", _PEAK.format(module=module, func=func), *args], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    rss = float(proc.stdout.split("MAXRSS_MB")[1])
    return result, rss


def test_idx_gzip_bomb_is_refused_with_bounded_memory(mnist_raw, tmp_path):
    """1 MB of gzip whose header claims 1000 images and that inflates to 1 GB: one line, no 1 GB in memory."""
    header = (0x803).to_bytes(4, "big") + (1000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(_gzip_of_zeros(header, 1024))
    assert bomb.stat().st_size < 2 * MiB
    base_result, base_rss = _peak("distgan.data.idx", "load_pair", str(mnist_raw / FILES["test_images"]),
                                  str(mnist_raw / FILES["test_labels"]))
    assert base_result == "RESULT ok"
    result, rss = _peak("distgan.data.idx", "load_pair", str(bomb), str(mnist_raw / FILES["test_labels"]))
    assert rss < base_rss + 100, f"peak RSS {rss:.0f} MB vs {base_rss:.0f} MB reading the real test set"
    assert result.startswith("RESULT error") and str(bomb) in result and "trailing bytes" in result, result


def test_idx_absurd_header_is_refused_before_reading(tmp_path):
    header = (0x803).to_bytes(4, "big") + (10**9).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    bomb = tmp_path / "images.gz"
    bomb.write_bytes(_gzip_of_zeros(header, 4))
    with pytest.raises(UserError, match="header claims 1000000000 images") as exc:
        parse_idx(bomb, kind="images")
    assert "\n" not in str(exc.value) and str(bomb) in str(exc.value)


def _tar_header(name: str, size: int, *, sparse_size: int | None = None) -> bytes:
    """A 512-byte tar header; with sparse_size, an old-GNU sparse member whose one data block expands to
    sparse_size bytes (tarfile has no writer for those, so the fields are patched in by hand)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 946684800, 0o644
    if sparse_size is None:
        return info.tobuf(format=tarfile.GNU_FORMAT)
    info.type = tarfile.GNUTYPE_SPARSE
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    buf[386:410] = b"%011o\0%011o\0" % (0, size)  # one sparse entry: `size` real bytes at offset 0
    buf[482] = 0  # no extension headers
    buf[483:495] = b"%011o\0" % sparse_size  # the expanded ("real") size
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _tar_end(length: int) -> bytes:
    """Padding to the next 512-byte block, then the two zero blocks that end an archive."""
    return bytes(-length % 512) + bytes(1024)


def _swap_shard(split: Path, data: bytes) -> Path:
    """Replace the split's first shard by `data` and make the manifest vouch for it (size, sha256); `data` is
    padded with zeros to the old size (a tar's end), so that the size can still hold the shard's count."""
    manifest_path = split.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shard = manifest["splits"][split.name]["shards"][0]
    path = split / shard["name"]
    data += bytes(max(0, shard["bytes"] - len(data)))
    path.write_bytes(data)
    shard["bytes"], shard["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


@pytest.mark.parametrize("kind", ["gzipped_tar", "sparse_member"])
def test_shard_bomb_is_refused_with_bounded_memory(split_copy, kind):
    """A shard that expands to 1 GB (a gzipped tar, or a sparse member) is refused from its headers."""
    name = "train-000000.images.u8"
    if kind == "gzipped_tar":
        data = _gzip_of_zeros(_tar_header(name, 1024 * MiB), 1024, _tar_end(0))
    else:
        data = _tar_header(name, 512, sparse_size=1024 * MiB) + bytes(512) + _tar_end(0)
        member = tarfile.open(fileobj=io.BytesIO(data)).getmembers()[0]
        assert member.issparse() and member.size == 1024 * MiB  # a real sparse member, as tarfile sees it
    assert len(data) < 2 * MiB
    base_result, base_rss = _peak("distgan.data", "load_split", str(split_copy))
    assert base_result == "RESULT ok"
    path = _swap_shard(split_copy, data)
    result, rss = _peak("distgan.data", "load_split", str(split_copy))
    assert rss < base_rss + 100, f"peak RSS {rss:.0f} MB vs {base_rss:.0f} MB loading the real split"
    assert result.startswith("RESULT error") and str(path) in result, result
    assert ("gzip" if kind == "gzipped_tar" else "declares 1073741824 bytes") in result, result


def test_oversized_member_is_refused_before_reading(split_copy):
    """A plain tar member larger than a pack can be (here 2 MB of images) is refused from its header."""
    name = "train-000000.images.u8"
    payload = bytes(2 * MiB)
    path = _swap_shard(split_copy, _tar_header(name, len(payload)) + payload + _tar_end(len(payload)))
    with pytest.raises(UserError) as exc:
        read_shard(path, Layout((1, 28, 28)))
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and f"declares {2 * MiB} bytes" in msg and "784000" in msg


# -- npz sources whose .npy header lies -------------------------------------------------------------

def _npz_with_header(path: Path, shape: tuple[int, ...], data: bytes, *, compressed: bool) -> Path:
    """A .npz with one member, images.npy: a hand-written .npy header declaring uint8 `shape`, then `data`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        zf.writestr("images.npy", header.getvalue() + data)
    return path


def _prepare_npz_capped(npz: Path, out: Path) -> subprocess.CompletedProcess:
    """`distgan prepare --npz NPZ --out OUT` in a process capped at 2 GB of address space."""
    return subprocess.run([PYTHON, "-m", "distgan", "prepare", "--npz", str(npz), "--out", str(out)], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=180,
                          preexec_fn=cap_address_space(2 << 30))


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
@pytest.mark.parametrize("shape, message", [((100000, 512, 512), "bytes per array are read here"),
                                            ((7000, 512, 512), f"holds {25 * MiB} bytes of data")],
                         ids=["over_the_caps", "more_than_it_holds"])
def test_npz_header_that_lies_is_refused_with_bounded_memory(tmp_path, compressed, shape, message):
    """25 MB of zeros behind a header declaring 26 GB (over the caps) or 1.8 GB (under them, more than the
    member holds). Before the fix numpy allocated what the header declared and `prepare` died of
    _ArrayMemoryError, a traceback; without the 2 GB limit, a big node would have tried."""
    good = tmp_path / "good.npz"
    (np.savez_compressed if compressed else np.savez)(
        good, images=np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8))
    proc = _prepare_npz_capped(good, tmp_path / "ok")
    assert proc.returncode == 0, proc.stderr[-3000:]  # the limit leaves room for a real prepare
    bad = _npz_with_header(tmp_path / "bad.npz", shape, bytes(25 * MiB), compressed=compressed)
    assert bad.stat().st_size < (26 * MiB if not compressed else MiB)
    line = _one_line_error(_prepare_npz_capped(bad, tmp_path / "out"))
    assert str(bad) in line and "member images.npy" in line and message in line, line


# -- prepare: ownership of the output directory, and one prepare at a time ----------------------

def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _prepare(mnist_raw: Path, out: Path, *extra: str):
    return run_cli(["prepare", "--raw-dir", str(mnist_raw), "--out", str(out), *extra], timeout=180, check=False)


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distgan prepare: error:"), proc.stderr[-3000:]
    return lines[0]


def test_prepare_refuses_another_projects_manifest(mnist_raw, tmp_path):
    """Before the fix, this deleted the other project's manifest.json and train/train-000000.tar."""
    out = tmp_path / "other_project"
    (out / "train").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"dataset": "cifar", "shards": ["train-000000.tar"]}))
    (out / "train" / "train-000000.tar").write_bytes(b"someone else's shard")
    (out / "train" / "train-000007.tar").write_bytes(b"another")
    before = _snapshot(out)
    line = _one_line_error(_prepare(mnist_raw, out))
    assert str(out / "manifest.json") in line and "not a distgan shard manifest" in line
    assert _snapshot(out) == before and not (out / ".lock").exists()


def test_prepare_refuses_foreign_shards_without_manifest(mnist_raw, tmp_path):
    out = tmp_path / "loose_shards"
    (out / "test").mkdir(parents=True)
    (out / "test" / "test-000001.tar").write_bytes(b"not ours")
    before = _snapshot(out)
    line = _one_line_error(_prepare(mnist_raw, out))
    assert str(out / "test") in line and "test-000001.tar" in line and "no distgan manifest" in line
    assert _snapshot(out) == before


def test_prepare_removes_only_its_own_files(mnist_raw, tmp_path):
    """In a distgan directory, stale distgan shards go; the user's other files stay."""
    out = tmp_path / "ours"
    _prepare(mnist_raw, out, "--shard-size", "2000")  # 5 shards per split
    mine = {out / "train" / "notes.txt": b"keep me", out / "train" / "extra-000001.tar": b"keep me too",
            out / "README": b"mine", out / "train" / "train-1.tar": b"not our pattern"}
    for path, data in mine.items():
        path.write_bytes(data)
    proc = _prepare(mnist_raw, out, "--shard-size", "5000")  # 2 shards per split: 3 stale ones each
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert sorted(p.name for p in (out / "train").glob("train-*.tar")) == \
        ["train-000000.tar", "train-000001.tar", "train-1.tar"]
    assert sorted(p.name for p in (out / "test").iterdir()) == ["test-000000.tar", "test-000001.tar"]
    assert samples_per_epoch(out / "train") == 10000 and len(load_split(out / "train")[0]) == 10000


def test_interrupted_prepare_leaves_a_placeholder_that_readers_refuse(mnist_raw, mnist_shards, tmp_path):
    """Between the first shard and the final manifest, manifest.json is distgan's placeholder: the loader
    refuses it with one line, and the next prepare (which knows the directory is its own) completes it."""
    from distgan.data.shards import write_incomplete_manifest

    out = tmp_path / "half"
    shutil.copytree(mnist_shards, out, ignore=shutil.ignore_patterns(".lock"))
    write_incomplete_manifest(out)
    (out / "train" / "train-000001.tar").unlink()  # as if the run died before writing it
    with pytest.raises(UserError, match="did not finish") as exc:
        build_loader(out / "train", batch_size=B, rank=0, world_size=1, num_workers=0, seed=0, epoch=0)
    assert str(out / "manifest.json") in str(exc.value)
    proc = _prepare(mnist_raw, out)
    assert proc.returncode == 0 and "nothing to do" not in proc.stdout, proc.stderr[-3000:]
    assert (out / "manifest.json").read_bytes() == (mnist_shards / "manifest.json").read_bytes()


_HOLD = """
import sys
from distgan.locks import DirLock
lock = DirLock(sys.argv[1], "--out " + sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


def test_concurrent_prepare_fails_at_once(mnist_raw, tmp_path):
    """While another process holds DIR's lock, `prepare --out DIR` fails at once, naming that process."""
    import socket

    out = tmp_path / "busy"
    holder = subprocess.Popen([PYTHON, "-c", _HOLD, str(out)], cwd=REPO, env=child_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        start = time.monotonic()
        line = _one_line_error(_prepare(mnist_raw, out))
        assert time.monotonic() - start < 60
        assert f"--out {out} is in use by pid {holder.pid} on host {socket.gethostname()}" in line, line
        assert not (out / "manifest.json").exists() and not (out / "train").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0, holder.stderr.read()
    proc = _prepare(mnist_raw, out)  # the holder is gone: the lock is free again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert samples_per_epoch(out / "test") == 10000
