"""Shards read from a URL (distgan.data.remote), against a real HTTP server on 127.0.0.1 that can corrupt a
shard once, stall or fail; and a real 2-process `accelerate launch` run sharing one cache directory."""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO, accelerate_launch, child_env

from distgan.data import build_loader, load_split, samples_per_epoch
from distgan.data.prepare import prepare
from distgan.data.remote import (
    MAX_MANIFEST_BYTES,
    REMOTE,
    FetchPolicy,
    default_cache_dir,
    ensure_shard,
    open_dataset,
)
from distgan.errors import UserError
from distgan.locks import wait_for_lock

pytestmark = pytest.mark.slow  # real processes, signals, servers or file systems (unit tier: -m "not slow")

B = 64
FAST = {"DISTGAN_FETCH_ATTEMPTS": "3", "DISTGAN_FETCH_BACKOFF_S": "0.1", "DISTGAN_FETCH_STALL_S": "1",
        "DISTGAN_FETCH_CONNECT_S": "2", "DISTGAN_FETCH_DEADLINE_S": "30"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; counts GETs per path; applies the server's per-path faults."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        srv: _Server = self.server  # type: ignore[assignment]
        path = self.path.split("?")[0]
        with srv.lock:
            srv.requests[path] += 1
            n = srv.requests[path]
        fault = srv.faults.get(path)
        if fault == "stall":  # connection accepted, nothing ever sent
            srv.release.wait(120)
            return
        if isinstance(fault, int):
            self.send_error(fault)
            return
        if fault == "endless":  # 200 and zeros until the client hangs up
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):
                while not srv.release.is_set():
                    self.wfile.write(bytes(1 << 16))
            return
        if fault == "corrupt_once" and n == 1:
            data = bytearray((Path(self.directory) / path.lstrip("/")).read_bytes())
            data[len(data) // 2] ^= 0xFF  # same length, other bytes: only the sha256 can tell
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(bytes(data))
            return
        super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not block shutdown

    def __init__(self, directory: Path, faults: dict[str, str | int]) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
        self.requests: collections.Counter[str] = collections.Counter()
        self.faults = faults
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"

    def shard_requests(self) -> dict[str, int]:
        return {p: n for p, n in self.requests.items() if p.endswith(".tar")}


@pytest.fixture
def serve() -> Iterator:
    """serve(directory, faults={path: "corrupt_once" | "stall" | http status}) -> a running _Server."""
    servers: list[_Server] = []

    def start(directory: Path, faults: dict[str, str | int] | None = None) -> _Server:
        server = _Server(directory, faults or {})
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def shards7(tmp_path_factory, mnist_raw) -> Path:
    """Prepare output with 7 shards per split (6 x 1500 + 1000)."""
    out = tmp_path_factory.mktemp("remote_shards7")
    prepare(out, raw_dir=mnist_raw, shard_size=1500, progress=False, log=lambda s: None)
    return out


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)


def keys_of(split, *, rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 3, epoch: int = 1,
            start_sample: int = 0) -> list[list[str]]:
    loader = build_loader(split, batch_size=B, rank=rank, world_size=world_size, num_workers=num_workers,
                          seed=seed, epoch=epoch, start_sample=start_sample)
    out = []
    for batch in loader:
        assert batch["image"].shape == (B, 1, 28, 28) and batch["image"].dtype == torch.uint8
        out.append(batch["key"])
    assert len(out) == len(loader)
    return out


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


# -- same batches ---------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_url_gives_the_same_batches(serve, shards7, tmp_path, fast_retries):
    server = serve(shards7)
    cache = open_dataset(server.url, tmp_path / "cache")
    assert cache == tmp_path / "cache"
    assert (cache / "manifest.json").read_bytes() == (shards7 / "manifest.json").read_bytes()
    assert json.loads((cache / REMOTE).read_text())["url"] == server.url
    assert server.shard_requests() == {}  # shards come later, when first read
    for world_size, num_workers, start in ((1, 0, 0), (2, 2, 0), (3, 2, 5 * B * 3)):
        for rank in range(world_size):
            kw = dict(rank=rank, world_size=world_size, num_workers=num_workers, start_sample=start)
            assert keys_of(cache / "test", **kw) == keys_of(shards7 / "test", **kw)
    # Every shard was fetched once, whatever the ranks and workers that read it.
    assert server.shard_requests() == {f"/test/test-{i:06d}.tar": 1 for i in range(7)}
    assert server.requests["/manifest.json"] == 1
    assert samples_per_epoch(cache / "test") == 10000
    images, labels = load_split(cache / "test")
    want_images, want_labels = load_split(shards7 / "test")
    assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert server.shard_requests() == {f"/test/test-{i:06d}.tar": 1 for i in range(7)}


@pytest.mark.timeout(300)
def test_split_url_uses_the_default_cache(serve, shards7, tmp_path, monkeypatch, fast_retries):
    """build_loader("http://.../test") directly: the cache is $XDG_CACHE_HOME/distgan/<manifest sha256>."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    server = serve(shards7)
    sha = hashlib.sha256((shards7 / "manifest.json").read_bytes()).hexdigest()
    assert keys_of(server.url + "test", world_size=2, rank=1) == keys_of(shards7 / "test", world_size=2, rank=1)
    cache = default_cache_dir(sha)
    assert cache == tmp_path / "xdg" / "distgan" / sha
    assert sorted(p.name for p in (cache / "test").iterdir()) == [f"test-{i:06d}.tar" for i in range(7)]
    assert samples_per_epoch(server.url + "train/") == 10000
    with pytest.raises(UserError) as exc:
        build_loader(server.url, batch_size=B, rank=0, world_size=1, num_workers=0, seed=0, epoch=0)
    assert "ends in /train or /test" in one_line(exc)


@pytest.mark.timeout(300)
def test_file_and_pipe_urls(shards7, tmp_path, fast_retries):
    """The other transports go through webdataset's gopen: file:// and a pipe: command with {path}."""
    want = keys_of(shards7 / "train", world_size=2, rank=0)
    cache = open_dataset(shards7.as_uri(), tmp_path / "file")
    assert keys_of(cache / "train", world_size=2, rank=0) == want
    cache = open_dataset(f"pipe:cat {shards7}/{{path}}", tmp_path / "pipe")
    assert keys_of(cache / "train", world_size=2, rank=0, num_workers=2) == want
    with pytest.raises(UserError) as exc:
        open_dataset((tmp_path / "nowhere").as_uri(), tmp_path / "c3")
    msg = one_line(exc)
    assert "nowhere/manifest.json" in msg and "after 1 try" in msg and "not found" in msg
    with pytest.raises(UserError) as exc:
        open_dataset(f"pipe:cat {tmp_path}/nowhere/{{path}}", tmp_path / "c4")
    msg = one_line(exc)
    assert msg.startswith(f"pipe:cat {tmp_path}/nowhere/manifest.json: download failed after 3 tries")
    assert "exit status 1" in msg
    # A command that stalls is stopped whole (not just its shell) after DISTGAN_FETCH_STALL_S, each try.
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        open_dataset(f"pipe:sleep 60; cat {shards7}/{{path}}", tmp_path / "c5")
    assert "no data for 1s" in one_line(exc) and time.monotonic() - start < 15


# -- corruption -----------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_corrupt_download_and_corrupt_cache_are_fetched_again(serve, shards7, tmp_path, capfd, fast_retries):
    bad = "/test/test-000003.tar"
    server = serve(shards7, {bad: "corrupt_once"})
    cache = open_dataset(server.url, tmp_path / "cache")
    stale, live = cache / "test" / ".test-000003.tar.k1.tmp", cache / "test" / ".test-000003.tar.k2.tmp"
    stale.write_bytes(b"left by a download killed an hour ago")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live.write_bytes(b"another process (maybe on another node) is writing this")
    want = keys_of(shards7 / "test", world_size=2, rank=1, num_workers=2)
    assert keys_of(cache / "test", world_size=2, rank=1, num_workers=2) == want
    assert server.requests[bad] == 2  # the corrupt copy was refused and fetched again
    assert not stale.exists() and live.exists()
    live.unlink()
    assert all(n == 1 for p, n in server.shard_requests().items() if p != bad)
    err = capfd.readouterr().err
    assert f"{server.url}test/test-000003.tar: sha256" in err and "retrying" in err
    shard = cache / "test" / "test-000003.tar"
    assert shard.read_bytes() == (shards7 / "test" / "test-000003.tar").read_bytes()
    assert [p.name for p in (cache / "test").iterdir() if p.name.startswith(".")] == []  # no temporary left

    # The cached copy rots on disk (same size, other bytes): the next read notices and fetches it again.
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    assert keys_of(cache / "test", world_size=2, rank=1) == want
    assert server.requests[bad] == 3
    assert "does not match the manifest's size and sha256; fetching it again" in capfd.readouterr().err
    # Truncated: caught by size alone.
    shard.write_bytes(shard.read_bytes()[:1000])
    assert keys_of(cache / "test", world_size=2, rank=1) == want
    assert server.requests[bad] == 4
    assert all(n == 1 for p, n in server.shard_requests().items() if p != bad)


@pytest.mark.timeout(120)
def test_server_shards_that_never_match_their_manifest(serve, shards7, tmp_path, fast_retries):
    served = tmp_path / "served"
    served.mkdir()
    (served / "manifest.json").write_bytes((shards7 / "manifest.json").read_bytes())
    (served / "test").mkdir()
    for p in (shards7 / "test").iterdir():  # every shard swapped for another of the same size
        (served / "test" / p.name).write_bytes((shards7 / "test" / "test-000000.tar").read_bytes())
    server = serve(served)
    cache = open_dataset(server.url, tmp_path / "cache")
    with pytest.raises(UserError) as exc:
        keys_of(cache / "test", num_workers=2)
    msg = one_line(exc)
    assert msg.startswith(server.url + "test/test-0000") and "after 3 tries" in msg and "sha256" in msg
    assert "publish the prepare output again" in msg
    assert list((cache / "test").iterdir()) == []


# -- servers that fail ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_stalled_server_fails_in_bounded_time(serve, shards7, tmp_path, fast_retries):
    server = serve(shards7, {"/manifest.json": "stall"})
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        open_dataset(server.url, tmp_path / "cache")
    elapsed = time.monotonic() - start
    msg = one_line(exc)
    assert msg.startswith(f"{server.url}manifest.json: download failed after 3 tries"), msg
    assert "bytes/sec" in msg or "no data for" in msg
    assert server.requests["/manifest.json"] == 3 and elapsed < 20

    # A shard that stalls, read by loader workers: the same one line reaches the main process.
    server = serve(shards7, {"/train/train-000002.tar": "stall"})
    cache = open_dataset(server.url, tmp_path / "cache2")
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        keys_of(cache / "train", num_workers=2, world_size=1)
    msg = one_line(exc)
    assert msg.startswith(f"{server.url}train/train-000002.tar: download failed after 3 tries"), msg
    # Both workers needed it: the one that waited for the lock takes the first one's verdict, no new tries.
    assert server.requests["/train/train-000002.tar"] == 3 and time.monotonic() - start < 20


@pytest.mark.timeout(120)
def test_http_errors(serve, shards7, tmp_path, fast_retries):
    server = serve(shards7, {"/test/test-000001.tar": 500, "/train/train-000004.tar": 404})
    cache = open_dataset(server.url, tmp_path / "cache")
    policy = FetchPolicy(attempts=4, backoff_s=0.1, stall_s=2, deadline_s=30)
    manifest = json.loads((cache / "manifest.json").read_text())
    entry = {s["name"]: s for s in manifest["splits"]["test"]["shards"]}["test-000001.tar"]
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        ensure_shard(cache, "test", entry, server.url, policy=policy)
    msg = one_line(exc)
    assert msg.startswith(f"{server.url}test/test-000001.tar: download failed after 4 tries"), msg
    assert "500" in msg and "check that the server is up" in msg
    assert server.requests["/test/test-000001.tar"] == 4 and time.monotonic() - start < 15
    # A 404 is not tried again.
    with pytest.raises(UserError) as exc:
        load_split(cache / "train")
    msg = one_line(exc)
    assert msg.startswith(f"{server.url}train/train-000004.tar: download failed after 1 try") and "404" in msg
    assert server.requests["/train/train-000004.tar"] == 1
    # Nothing listens: named too.
    dead = serve(shards7)
    dead.shutdown()
    dead.server_close()
    with pytest.raises(UserError) as exc:
        open_dataset(dead.url, tmp_path / "c2", policy=policy)
    assert one_line(exc).startswith(f"{dead.url}manifest.json: download failed after 4 tries")


# -- what is served, and where it goes ------------------------------------------------------------

@pytest.mark.timeout(120)
def test_declared_sizes_bound_what_a_server_can_put_in_the_cache(serve, shards7, tmp_path, fast_retries):
    """A cache on a real 4 MiB tmpfs: shards declaring more than it has free are refused before any download
    (one line: the cache dir, the bytes needed and free); a shard declaring more than a prepare shard of its
    images can have is refused; an endless server is cut off at the declared size."""
    from conftest import tmpfs

    total = sum(s["bytes"] for e in json.loads((shards7 / "manifest.json").read_text())["splits"].values()
                for s in e["shards"])
    server = serve(shards7)
    with tmpfs(tmp_path / "small", "4m") as small:
        with pytest.raises(UserError) as exc:
            open_dataset(server.url, small / "cache")
        msg = one_line(exc)
        assert msg.startswith(f"cache dir {small / 'cache'}: the shards of {server.url} still to download need "
                              f"{total:,} bytes but its file system has ") and " free; " in msg
        assert server.shard_requests() == {} and not list((small / "cache").rglob("*.tar"))
    tampered = tmp_path / "tampered"
    (tampered / "test").mkdir(parents=True)
    manifest = json.loads((shards7 / "manifest.json").read_text())
    manifest["splits"]["test"]["shards"][0]["bytes"] = 1 << 40  # 1 TiB for 1500 images
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    evil = serve(tampered, {"/test/test-000000.tar": "endless"})
    with pytest.raises(UserError) as exc:
        open_dataset(evil.url, tmp_path / "c1")
    assert one_line(exc).startswith(f"{evil.url}manifest.json: field 'splits.test.shards[0].bytes' declares "
                                    f"1,099,511,627,776 bytes for 1,500 images, more than the ")
    entry = dict(json.loads((shards7 / "manifest.json").read_text())["splits"]["test"]["shards"][0])
    start = time.monotonic()
    with pytest.raises(UserError) as exc:  # the honest size, an endless body: each try stops at that size
        ensure_shard(tmp_path / "c2", "test", entry, evil.url)
    msg = one_line(exc)
    assert f"sent more than the {entry['bytes']} bytes expected" in msg and time.monotonic() - start < 20
    assert list((tmp_path / "c2" / "test").iterdir()) == []  # no shard, no temporary file


@pytest.mark.timeout(120)
def test_bad_manifest_and_cache_dir_conflicts(serve, shards7, tmp_path, fast_retries):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "manifest.json").write_text("<html>not found</html>")
    server = serve(junk)
    with pytest.raises(UserError) as exc:
        open_dataset(server.url, tmp_path / "c1")
    assert one_line(exc).startswith(f"{server.url}manifest.json: not JSON")
    (junk / "manifest.json").write_text(json.dumps({"format": "distgan-mnist-shards", "version": 1}))
    with pytest.raises(UserError) as exc:
        open_dataset(server.url, tmp_path / "c2")
    assert one_line(exc).startswith(f"{server.url}manifest.json: manifest format version 1, this distgan reads "
                                    f"versions 2, 3 and 4")
    (junk / "manifest.json").write_text(json.dumps({"format": "distgan-shards", "version": 2}))
    with pytest.raises(UserError) as exc:
        open_dataset(server.url, tmp_path / "c3")
    assert one_line(exc).startswith(f"{server.url}manifest.json: field 'sample' is missing")

    good = serve(shards7)
    other = tmp_path / "other"  # another valid dataset: the same manifest with another source record
    other.mkdir()
    manifest = json.loads((shards7 / "manifest.json").read_text())
    manifest["source"] = {"note": "another dataset"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    open_dataset(good.url, tmp_path / "shared")
    with pytest.raises(UserError) as exc:  # one cache dir, another dataset
        open_dataset(serve(other).url, tmp_path / "shared")
    assert "holds another dataset" in one_line(exc)
    with pytest.raises(UserError) as exc:  # a directory that is not a cache (here, a prepare output)
        open_dataset(good.url, other)
    assert "is not empty" in one_line(exc) and not (other / REMOTE).exists()
    assert open_dataset(str(other), None) == other  # a local path is returned as is


@pytest.mark.parametrize("field, value", [("name", "train-000000.tar\n"), ("sha256", "f" * 64 + "\n")])
def test_remote_manifest_fields_must_match_exactly(serve, shards7, tmp_path, field, value):
    """`$` with re.match matched before a trailing newline: a served manifest naming "train-000000.tar\\n"
    passed validation (and the name went into the shard's URL and cache path)."""
    served = tmp_path / "served"
    served.mkdir()
    manifest = json.loads((shards7 / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0][field] = value
    (served / "manifest.json").write_text(json.dumps(manifest))
    for i, url in enumerate((serve(served).url, served.as_uri())):  # http://, file://
        with pytest.raises(UserError) as exc:
            open_dataset(url, tmp_path / "cache" / str(i))
        msg = one_line(exc)
        assert msg.startswith(f"{url.rstrip('/')}/manifest.json: field 'splits.train.shards[0].{field}'"), msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.tar"))


@pytest.mark.timeout(60)
def test_served_manifest_count_beyond_its_bytes(serve, shards7, tmp_path):
    """A served manifest goes through the same validation as a local one: a shard count raised by 10^12 (split
    count, totals and class counts kept consistent) is refused before any cache directory is made."""
    served = tmp_path / "served"
    served.mkdir()
    manifest = json.loads((shards7 / "manifest.json").read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    for counts in (shard, manifest["splits"]["train"]):
        counts["count"] += 10**12
    manifest["totals"]["train"] += 10**12
    manifest["totals"]["samples"] += 10**12
    manifest["classes"]["counts"]["train"][0] += 10**12
    (served / "manifest.json").write_text(json.dumps(manifest))
    for i, url in enumerate((serve(served).url, served.as_uri())):  # http://, file://
        with pytest.raises(UserError) as exc:
            open_dataset(url, tmp_path / "cache" / str(i))
        msg = one_line(exc)
        assert msg.startswith(f"{url.rstrip('/')}/manifest.json: field 'splits.train.shards[0].count' is "
                              f"{shard['count']:,} images, more than the {shard['bytes']:,} bytes of "
                              f"{shard['name']}"), msg
    assert not (tmp_path / "cache").exists()


@pytest.mark.timeout(60)
def test_served_manifest_over_the_cap_fails_at_the_first_try(serve, tmp_path):
    """Before the fix a manifest over MAX_MANIFEST_BYTES was fetched 6 times (~30 s of back-off) although the
    same file comes back each time; now the first try that passes the cap ends it."""
    served = tmp_path / "served"
    served.mkdir()
    with open(served / "manifest.json", "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)
    server = serve(served)
    policy = FetchPolicy(attempts=6, backoff_s=1.0, stall_s=5)
    for i, url in enumerate((server.url, served.as_uri())):  # http://, file://
        start = time.monotonic()
        with pytest.raises(UserError) as exc:
            open_dataset(url, tmp_path / "cache" / str(i), policy=policy)
        msg = one_line(exc)
        assert "download failed after 1 try" in msg, msg
        assert f"sent more than the {MAX_MANIFEST_BYTES} bytes expected" in msg, msg
        assert time.monotonic() - start < 2
    assert server.requests["/manifest.json"] == 1 and not (tmp_path / "cache").exists()


def test_fsspec_schemes_without_their_backend(tmp_path):
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    with pytest.raises(UserError) as exc:
        open_dataset("s3://some-bucket/mnist", tmp_path / "c")
    msg = one_line(exc)
    assert msg.startswith("s3://some-bucket/mnist/manifest.json") and "pip install fsspec s3fs" in msg
    with pytest.raises(UserError) as exc:
        open_dataset("nosuch://x/y", tmp_path / "c")
    assert "unsupported URL scheme 'nosuch'" in one_line(exc)


def test_policy_from_env():
    assert FetchPolicy.from_env({}) == FetchPolicy()
    assert FetchPolicy.from_env({"DISTGAN_FETCH_ATTEMPTS": "2", "DISTGAN_FETCH_STALL_S": "0.5"}) == \
        FetchPolicy(attempts=2, stall_s=0.5)
    for var, value in (("DISTGAN_FETCH_ATTEMPTS", "1.5"), ("DISTGAN_FETCH_DEADLINE_S", "-1"),
                       ("DISTGAN_FETCH_STALL_S", "nan")):
        with pytest.raises(UserError, match=var):
            FetchPolicy.from_env({var: value})


@pytest.mark.timeout(60)
def test_wait_for_lock_waits_then_names_the_holder(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from distgan.locks import wait_for_lock\n"
         f"with wait_for_lock({str(lock)!r}, timeout=5, what='t'):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(UserError) as exc, wait_for_lock(lock, timeout=0.5, what="download of X"):
            pass
        assert time.monotonic() - start >= 0.5
        msg = one_line(exc)
        assert msg.startswith("download of X: still locked by pid") and str(holder.pid) in msg
        threading.Timer(0.5, holder.kill).start()  # the holder dies while we wait: we get the lock
        with wait_for_lock(lock, timeout=20, what="download of X"):
            assert holder.poll() is not None
    finally:
        holder.kill()
        holder.wait(10)


# -- two processes --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_share_one_download_per_shard(serve, shards7, tmp_path):
    bad = "/test/test-000005.tar"
    server = serve(shards7, {bad: "corrupt_once"})
    cache, out = tmp_path / "cache", tmp_path / "probe"
    env = child_env(**{**FAST, "DISTGAN_FETCH_STALL_S": "20"})
    accelerate_launch([str(REPO / "tests" / "remote_probe.py"), server.url, str(cache), str(out), "2", "2", "2"],
                      num_processes=2, timeout=240, env=env)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert {r["local"] for r in ranks} == {str(cache)}
    # One download per shard for the node (two ranks x two workers), the corrupt one once more; none in epoch 2.
    want = {f"/test/test-{i:06d}.tar": 1 for i in range(7)}
    want[bad] = 2
    assert server.shard_requests() == want
    assert server.requests["/manifest.json"] == 2  # once per rank
    for epoch in range(2):
        per_rank = [r["epochs"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == 10000 // (2 * B)
        keys = [k for batches in per_rank for batch in batches for k in batch]
        assert len(keys) == len(set(keys)) and 10000 - len(keys) < 2 * B
        # The same batches as rank 1 of 2 read from the local prepare output.
        assert per_rank[1] == keys_of(shards7 / "test", rank=1, world_size=2, seed=7, epoch=epoch + 1)
    assert sorted(os.listdir(cache / "test")) == [f"test-{i:06d}.tar" for i in range(7)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_process_train_from_url(serve, mnist_shards, tmp_path):
    """`distgan train` with data.dir=<URL>: the same weights as from the local prepare output; the train shards
    are fetched once each (after one corrupt copy each), the test split not at all."""
    from conftest import assert_same_weights, final_weights

    bad = {"/train/train-000000.tar": "corrupt_once", "/train/train-000001.tar": "corrupt_once"}
    server = serve(mnist_shards, bad)
    common = ["-m", "distgan", "train", "--config", "configs/debug.yaml", "wandb.mode=offline", "train.steps=12",
              "train.batch_size=250", "checkpoint.every=12"]  # 12 x 500 samples: both train shards are read
    runs = {name: tmp_path / name for name in ("url", "local")}
    accelerate_launch([*common, f"data.dir={server.url}", f"data.cache_dir={tmp_path / 'cache'}",
                       f"run.dir={runs['url']}"], timeout=270, env=child_env(**FAST))
    accelerate_launch([*common, f"data.dir={mnist_shards}", f"run.dir={runs['local']}"], timeout=270)
    assert_same_weights(final_weights(runs["url"]), final_weights(runs["local"]))
    assert server.shard_requests() == dict.fromkeys(bad, 2)
    assert sorted(os.listdir(tmp_path / "cache" / "train")) == ["train-000000.tar", "train-000001.tar"]
