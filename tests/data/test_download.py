"""Downloading the MNIST files from mirrors, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, missing, run_cli
from conftest import test_env as child_env  # aliased: pytest would collect a `test_*` name

from distgan.data.datasets import FASHION_MNIST
from distgan.data.download import DEFAULT_MIRRORS, OFFICIAL_MD5, download_dataset, resolve_mirrors
from distgan.data.idx import FILES
from distgan.data.prepare import prepare
from distgan.errors import UserError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    """serve(directory) -> mirror URL of a real HTTP server on 127.0.0.1 serving that directory."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _idx(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture
def small_mnist(tmp_path) -> tuple[Path, dict[str, str]]:
    """A directory with tiny valid IDX files under the official names, and their md5 table."""
    rng = np.random.default_rng(0)
    d = tmp_path / "mirror_good"
    d.mkdir()
    for split, n in (("train", 30), ("test", 20)):
        prefix = "train" if split == "train" else "t10k"
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            _idx(rng.integers(0, 256, (n, 28, 28)), 0x803))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(rng.integers(0, 10, (n,)), 0x801))
    md5 = {name: hashlib.md5((d / name).read_bytes()).hexdigest() for name in FILES.values()}
    return d, md5


@pytest.fixture
def bad_mirror(tmp_path, small_mnist) -> Path:
    """The same names, each with one byte changed (so the md5 check fails)."""
    good, _ = small_mnist
    d = tmp_path / "mirror_bad"
    d.mkdir()
    for name in FILES.values():
        data = bytearray((good / name).read_bytes())
        data[-5] ^= 0xFF
        (d / name).write_bytes(bytes(data))
    return d


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


def test_default_table_and_mirrors():
    assert OFFICIAL_MD5 == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in DEFAULT_MIRRORS
    assert resolve_mirrors(None, {}) == list(DEFAULT_MIRRORS)
    assert resolve_mirrors(None, {"DISTGAN_MNIST_MIRRORS": "http://a/x, http://b/"}) == ["http://a/x/", "http://b/"]
    assert resolve_mirrors(["http://c"], {"DISTGAN_MNIST_MIRRORS": "http://a/"}) == ["http://c/"]
    env = {"DISTGAN_FASHION_MNIST_MIRRORS": "http://f/", "DISTGAN_MNIST_MIRRORS": "http://a/"}
    assert resolve_mirrors(None, env, dataset="fashion-mnist") == ["http://f/"]
    assert resolve_mirrors(None, {}, dataset="fashion-mnist")[0] == \
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    with pytest.raises(UserError, match="unknown dataset; known: mnist, fashion-mnist"):
        resolve_mirrors(None, {}, dataset="cifar")


def test_good_mirror_with_progress(serve, small_mnist, tmp_path, capsys):
    good, md5 = small_mnist
    paths = download_dataset("mnist", tmp_path / "raw", [serve(good)], md5=md5, progress=True)
    for role, name in FILES.items():
        assert paths[role] == tmp_path / "raw" / name
        assert paths[role].read_bytes() == (good / name).read_bytes()
    err = capsys.readouterr().err
    assert "100%" in err and "train-images-idx3-ubyte.gz" in err
    # Present with the right md5: not downloaded again (the mirror is gone now).
    assert download_dataset("mnist", tmp_path / "raw", [_closed_port_url()], md5=md5, progress=False) == paths


def test_bad_checksum_falls_through(serve, small_mnist, bad_mirror, tmp_path, capsys):
    good, md5 = small_mnist
    missing = tmp_path / "empty"
    missing.mkdir()
    mirrors = [serve(bad_mirror), serve(missing), serve(good)]  # md5 mismatch, then 404, then good
    paths = download_dataset("mnist", tmp_path / "raw", mirrors, md5=md5, progress=True)
    for name in FILES.values():
        assert hashlib.md5((tmp_path / "raw" / name).read_bytes()).hexdigest() == md5[name]
    assert len(paths) == 4
    err = capsys.readouterr().err
    assert "md5" in err and "404" in err


def test_all_mirrors_fail_leaves_nothing(serve, small_mnist, bad_mirror, tmp_path):
    _, md5 = small_mnist
    missing = tmp_path / "empty"
    missing.mkdir()
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as exc:
        download_dataset("mnist", dest, [serve(bad_mirror), serve(missing)], md5=md5, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "train-images-idx3-ubyte.gz" in msg and "md5" in msg and "404" in msg
    assert list(dest.iterdir()) == []  # no partial file, no temporary file


def test_no_network(tmp_path):
    with pytest.raises(UserError) as exc:
        download_dataset("mnist", tmp_path / "raw", [_closed_port_url(), _closed_port_url()], progress=False)
    msg = str(exc.value)
    assert msg.startswith("no network") and "--raw-dir" in msg and "\n" not in msg
    assert list((tmp_path / "raw").iterdir()) == []


def test_prepare_from_download(serve, small_mnist, tmp_path):
    good, md5 = small_mnist
    manifest = prepare(tmp_path / "out", mirrors=[serve(good)], md5=md5, progress=False, log=lambda s: None)
    assert manifest["totals"] == {"samples": 50, "shards": 2, "train": 30, "test": 20}
    assert manifest["source"]["files"]["t10k-images-idx3-ubyte.gz"]["md5"] == md5["t10k-images-idx3-ubyte.gz"]
    assert manifest["dataset"] == "mnist" and manifest["classes"]["names"] == [str(i) for i in range(10)]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in (tmp_path / "out" / "raw").iterdir()) == sorted(FILES.values())


@pytest.mark.slow
def test_cli_official_md5_rejects_the_train_subset(serve, mnist_raw, tmp_path):
    """Through the CLI with the real (official) table: the local 10k train subset is not official MNIST."""
    out = tmp_path / "out"
    proc = run_cli(["prepare", "--out", str(out), "--mirror", _closed_port_url(), "--mirror", serve(mnist_raw)],
                   timeout=60, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distgan prepare: error: train-images-idx3-ubyte.gz: download failed"), proc.stderr
    assert "md5" in last and "--raw-dir" in last
    assert "%" in proc.stderr  # progress was shown
    assert not (out / "raw" / "train-images-idx3-ubyte.gz").exists()
    assert [p.name for p in (out / "raw").iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_cli_env_mirrors_no_network(tmp_path):
    proc = run_cli(["prepare", "--out", str(tmp_path / "out")], timeout=60, check=False,
                   env=child_env(DISTGAN_MNIST_MIRRORS=f"{_closed_port_url()},{_closed_port_url()}"))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distgan prepare: error: no network") and "--raw-dir" in last, proc.stderr


FASHION_RAW = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FASHION_GZ_MD5 = {  # zalandoresearch/fashion-mnist README (also in that package's README.md.gz)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


@pytest.fixture(scope="module")
def fashion_raw() -> Path:
    if not (FASHION_RAW / "train-images-idx3-ubyte.gz").is_file():
        missing(f"Fashion-MNIST at {FASHION_RAW}", "apt-get install dataset-fashion-mnist")
    return FASHION_RAW


@pytest.mark.slow
def test_fashion_mnist_download_checks_the_official_checksums(serve, fashion_raw, tmp_path):
    """The real Fashion-MNIST files, served over HTTP. Debian recompressed them, so their gzip md5 is not
    the README's: they pass on their decompressed content's official md5 and size; a changed byte fails."""
    assert dict(FASHION_MNIST.md5) == FASHION_GZ_MD5
    assert all(hashlib.md5((fashion_raw / n).read_bytes()).hexdigest() != m for n, m in FASHION_GZ_MD5.items())
    paths = download_dataset("fashion-mnist", tmp_path / "raw", [serve(fashion_raw)], progress=False)
    for role, name in FILES.items():
        assert paths[role].read_bytes() == (fashion_raw / name).read_bytes()
        want = FASHION_MNIST.content[name]
        data = gzip.decompress(paths[role].read_bytes())
        assert len(data) == want.size and hashlib.md5(data).hexdigest() == want.md5
    # One changed image byte, recompressed as a valid gzip: neither checksum matches, nothing is kept.
    bad = tmp_path / "bad_mirror"
    bad.mkdir()
    for name in FILES.values():
        data = bytearray(gzip.decompress((fashion_raw / name).read_bytes()))
        data[-1] ^= 0x01
        (bad / name).write_bytes(gzip.compress(bytes(data), compresslevel=1, mtime=0))
    with pytest.raises(UserError) as exc:
        download_dataset("fashion-mnist", tmp_path / "raw2", [serve(bad)], progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "train-images-idx3-ubyte.gz" in msg and "md5" in msg and "decompressed" in msg
    assert list((tmp_path / "raw2").iterdir()) == []


@pytest.mark.slow
def test_cli_fashion_mnist_from_a_mirror(serve, fashion_raw, tmp_path):
    """`prepare --dataset fashion-mnist --mirror URL`: 70,000 images, the official class names."""
    out = tmp_path / "out"
    proc = run_cli(["prepare", "--dataset", "fashion-mnist", "--mirror", serve(fashion_raw), "--out", str(out)],
                   timeout=300)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "fashion-mnist" and manifest["totals"]["samples"] == 70000
    assert manifest["classes"]["names"][0] == "T-shirt/top" and manifest["classes"]["names"][9] == "Ankle boot"
    assert manifest["classes"]["counts"]["train"] == [6000] * 10
    assert "train: 60000 images in 12 shards" in proc.stdout
