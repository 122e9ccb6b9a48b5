"""Webdataset both ways (distgan.data.standard): standard shards written by stock `webdataset.ShardWriter`
are adopted in place by `prepare --webdataset` (a manifest only) and loaded exactly once over ranks and
workers, resumably, also from an HTTP server; bad samples stop prepare in one line or are skipped; other
sizes are resized at load time; distgan's own packs read back through a stock `wds.WebDataset` pipeline
(`expand_packs`) and `prepare --format standard` give the loader's images. In-process and small, except one
test with two 2-process runs (training, and the loader's exactly-once probe)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import REPO, accelerate_launch
from PIL import Image

from distgan.cli import main as cli_main
from distgan.data import build_loader, dataset_info, expand_packs, load_split
from distgan.data.imaging import Transform
from distgan.data.prepare import prepare, prepare_webdataset
from distgan.data.remote import open_dataset
from distgan.data.shards import read_manifest
from distgan.data.standard import iter_samples, parse_label, samples
from distgan.errors import UserError

SIZES = (37, 23)  # two shards of unequal size


def _images(n: int, seed: int, side: int = 8, channels: int = 3) -> np.ndarray:
    """n smooth-ish H x W x C uint8 images (JPEG keeps them close; exactness never relies on it)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, channels), dtype=np.uint8)
    return (base + rng.integers(0, 40, (n, side, side, channels), dtype=np.uint8)).astype(np.uint8)


def write_shards(root: Path, ext: str = "png", labelled: bool = True, sizes: tuple[int, ...] = SIZES,
                 side: int = 8) -> Path:
    """Stock ShardWriter output: ROOT/shard-00000{0,1}.tar, one image (+ .cls) per sample."""
    root.mkdir(parents=True, exist_ok=True)
    images = _images(sum(sizes), 1, side)
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=sizes[0], verbose=0) as sink:
        for i, img in enumerate(images):
            sample = {"__key__": f"img{i:04d}", ext: img}
            if labelled:
                sample["cls"] = i % 5
            sink.write(sample)
    return root


def stock_images(root: Path, pattern: str = "shard-{000000..000001}.tar") -> dict[str, tuple[np.ndarray, int]]:
    """key -> (C x H x W image, label or -1) as a stock webdataset pipeline decodes them."""
    out = {}
    for s in wds.WebDataset(str(root / pattern), shardshuffle=False).decode("rgb8"):
        img = next(v for k, v in s.items() if k in ("png", "jpg"))
        out[s["__key__"]] = (img.transpose(2, 0, 1), int(s.get("cls", -1)))
    return out


def all_batches(split, world_size: int, workers: int = 0, epoch: int = 0, start: int = 0, batch: int = 4):
    """Per rank: the list of its batches (keys, images, labels)."""
    return [[(b["key"], b["image"].numpy(), b["label"].numpy())
             for b in build_loader(split, batch_size=batch, rank=r, world_size=world_size, num_workers=workers,
                                   seed=3, epoch=epoch, start_sample=start)] for r in range(world_size)]


@pytest.mark.parametrize("ext,labelled", [("png", True), ("jpg", True), ("png", False), ("jpg", False)])
def test_shardwriter_shards_adopted_in_place_and_read_exactly_once(tmp_path, ext, labelled):
    root = write_shards(tmp_path / "wds", ext, labelled)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    manifest = prepare_webdataset(str(root / "shard-{000000..000001}.tar"), log=lambda _: None)
    # a manifest (and prepare's lock file) next to the shards: nothing copied, the shards untouched
    assert sorted(p.name for p in root.iterdir()) == sorted([*before, "manifest.json", ".lock"])
    assert all((root / n).read_bytes() == b for n, b in before.items())
    assert manifest["version"] == 4 and manifest["sample"]["encoding"] == "standard"
    assert manifest["sample"]["image_ext"] == ext and manifest["sample"]["shape"] == [3, 8, 8]
    assert manifest["sample"]["label_ext"] == ("cls" if labelled else None)
    shards = manifest["splits"]["train"]["shards"]
    assert [s["count"] for s in shards] == list(SIZES)
    assert [s["url"] for s in shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert [s["sha256"] for s in shards] == [hashlib.sha256(before[s["url"]]).hexdigest() for s in shards]
    assert [s["bytes"] for s in shards] == [len(before[s["url"]]) for s in shards]
    info = dataset_info(root)
    assert info.image_shape == (3, 8, 8) and info.num_classes == (5 if labelled else None)

    want = stock_images(root)
    per_rank = all_batches(root / "train", world_size=2)
    assert len(per_rank[0]) == len(per_rank[1]) == sum(SIZES) // 8  # equal batches, < 8 samples left out
    keys = [k for rank in per_rank for keys, _, _ in rank for k in keys]
    assert len(keys) == len(set(keys)) == sum(SIZES) // 8 * 8 and set(keys) <= set(want)
    for rank in per_rank:
        for batch_keys, images, labels in rank:
            for k, img, label in zip(batch_keys, images, labels, strict=True):
                assert np.array_equal(img, want[k][0]) and label == want[k][1]


def test_workers_and_resume_give_the_same_batches(tmp_path):
    root = write_shards(tmp_path / "wds")
    prepare_webdataset(str(root / "shard-{000000..000001}.tar"), log=lambda _: None)
    split = root / "train"
    plain = all_batches(split, world_size=2, epoch=1)
    two_workers = all_batches(split, world_size=2, workers=2, epoch=1)
    assert [[k for k, _, _ in r] for r in plain] == [[k for k, _, _ in r] for r in two_workers]
    assert all(np.array_equal(a[1], b[1]) for r, s in zip(plain, two_workers, strict=True)
               for a, b in zip(r, s, strict=True))
    resumed = all_batches(split, world_size=2, epoch=1, start=3 * 8)  # after 3 steps of 2 x 4
    assert [[k for k, _, _ in r] for r in resumed] == [[k for k, _, _ in r[3:]] for r in plain]
    other_epoch = all_batches(split, world_size=2, epoch=2)
    assert [k for k, _, _ in other_epoch[0]] != [k for k, _, _ in plain[0]]
    # a test split from its own pattern, the manifest into --out (absolute urls: the shards are elsewhere)
    manifest = prepare_webdataset(str(root / "shard-000000.tar"), test=str(root / "shard-000001.tar"),
                                  out=tmp_path / "out", log=lambda _: None)
    assert manifest["totals"] == {"samples": 60, "shards": 2, "train": 37, "test": 23}
    assert manifest["splits"]["test"]["shards"][0]["url"] == str(root / "shard-000001.tar")
    assert len(load_split(tmp_path / "out" / "test")[0]) == 23


def test_fast_index_groups_like_webdataset(tmp_path):
    root = write_shards(tmp_path / "wds", "png")
    for shard in root.glob("*.tar"):
        data = shard.read_bytes()
        assert list(samples(data, "u")) == list(iter_samples(data, "u"))
    # a compressed shard takes webdataset's own path, with the same samples
    import gzip
    data = (root / "shard-000001.tar").read_bytes()
    assert list(samples(gzip.compress(data), "u")) == list(iter_samples(data, "u"))


def _bad_shards(root: Path) -> Path:
    """One good shard and one with an undecodable image, a missing label and a wrong size."""
    root.mkdir(parents=True)
    good = _images(6, 2)
    with wds.TarWriter(str(root / "part-0.tar")) as sink:
        for i, img in enumerate(good):
            sink.write({"__key__": f"a{i}", "png": img, "cls": 1})
    with wds.TarWriter(str(root / "part-1.tar")) as sink:
        sink.write({"__key__": "b0", "png": good[0], "cls": 2})
        sink.write({"__key__": "b1", "png": b"\x89PNG not really", "cls": 2})
        sink.write({"__key__": "b2", "png": good[1]})
        sink.write({"__key__": "b3", "png": _images(1, 3, side=6)[0], "cls": 0})
        sink.write({"__key__": "b4", "png": good[2], "cls": 3})
    return root


def test_bad_samples_stop_in_one_line_or_are_skipped(tmp_path):
    root = _bad_shards(tmp_path / "bad")
    pattern = str(root / "part-{0..1}.tar")
    with pytest.raises(UserError) as e:
        prepare_webdataset(pattern, log=lambda _: None)
    msg = str(e.value)
    assert "\n" not in msg and "part-1.tar" in msg and "sample b1" in msg and "--skip-bad" in msg
    assert not (root / "manifest.json").exists()
    manifest = prepare_webdataset(pattern, skip_bad=True, log=lambda _: None)
    assert [s["key"] for s in manifest["skipped"]] == ["b1", "b2", "b3"]
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [6, 2]
    assert manifest["splits"]["train"]["shards"][1]["skip"] == ["b1", "b2", "b3"]
    assert manifest["classes"]["counts"]["train"] == [0, 6, 1, 1]
    x, y = load_split(root / "train")
    assert x.shape == (8, 3, 8, 8) and sorted(y.tolist()) == [1] * 6 + [2, 3]


def test_other_sizes_are_resized_at_load_time(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    rng = np.random.default_rng(5)
    originals = {}
    with wds.TarWriter(str(root / "s.tar")) as sink:
        for i, (h, w) in enumerate([(12, 12), (10, 16), (8, 8), (20, 9)]):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            originals[f"k{i}"] = img
            sink.write({"__key__": f"k{i}", "png": img, "cls": i})
    prepare_webdataset(str(root / "s.tar"), out=tmp_path / "out", resolution=8, log=lambda _: None)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["sample"]["shape"] == [3, 8, 8] and manifest["transform"]["resolution"] == 8
    assert manifest["splits"]["train"]["shards"][0]["url"] == str(root / "s.tar")  # absolute: outside --out
    batches = all_batches(tmp_path / "out" / "train", world_size=1, batch=2)
    again = all_batches(tmp_path / "out" / "train", world_size=1, batch=2)
    transform = Transform(8, None)
    for (keys, images, _), (_, images2, _) in zip(batches[0], again[0], strict=True):
        assert np.array_equal(images, images2)  # deterministic
        for k, img in zip(keys, images, strict=True):
            assert np.array_equal(img, transform.apply(Image.fromarray(originals[k]), k))


def _packed_npz(tmp_path: Path, channels: int = 1) -> Path:
    rng = np.random.default_rng(9)
    shape = (50, 6, 6) if channels == 1 else (50, 6, 6, 3)
    path = tmp_path / "small.npz"
    np.savez(path, train_images=rng.integers(0, 256, shape, dtype=np.uint8),
             train_labels=rng.integers(0, 4, 50).astype(np.uint8),
             test_images=rng.integers(0, 256, (20, *shape[1:]), dtype=np.uint8),
             test_labels=rng.integers(0, 4, 20).astype(np.uint8))
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_packs_through_a_stock_pipeline_give_the_loaders_images(tmp_path, channels):
    out = tmp_path / "packed"
    prepare(out, npz=_packed_npz(tmp_path, channels), shard_size=30, progress=False, log=lambda _: None)
    x, y = load_split(out / "train")
    urls = sorted(str(p) for p in (out / "train").glob("*.tar"))
    stage = functools.partial(expand_packs, shape=tuple(x.shape[1:]))
    got = list(wds.WebDataset(urls, shardshuffle=False).compose(stage))
    assert len(got) == len(x) == 50 and [s["__key__"] for s in got] == sorted(s["__key__"] for s in got)
    for s, img, label in zip(got, x.numpy(), y.tolist(), strict=True):
        hwc = img[0] if channels == 1 else img.transpose(1, 2, 0)
        assert np.array_equal(s["image"], hwc) and s["cls"] == label
    squares = list(wds.WebDataset(urls, shardshuffle=False).compose(expand_packs))  # shape from the bytes
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(got, squares, strict=True))


def test_format_standard_is_readable_by_stock_webdataset_and_loads_the_same(tmp_path):
    npz = _packed_npz(tmp_path, 3)
    prepare(tmp_path / "packed", npz=npz, shard_size=30, progress=False, log=lambda _: None)
    manifest = prepare(tmp_path / "std", npz=npz, shard_size=30, progress=False, log=lambda _: None,
                       format="standard")
    assert manifest["version"] == 4 and manifest["sample"]["image_ext"] == "png"
    for split in ("train", "test"):
        xp, yp = load_split(tmp_path / "packed" / split)
        xs, ys = load_split(tmp_path / "std" / split)
        assert np.array_equal(xp.numpy(), xs.numpy()) and np.array_equal(yp.numpy(), ys.numpy())
    urls = sorted(str(p) for p in (tmp_path / "std" / "train").glob("*.tar"))
    stock = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    xp, yp = load_split(tmp_path / "packed" / "train")
    assert len(stock) == 50 and {k for k in stock[0] if not k.startswith("__")} == {"png", "cls"}
    assert all(np.array_equal(s["png"].transpose(2, 0, 1), img) and s["cls"] == label
               for s, img, label in zip(stock, xp.numpy(), yp.tolist(), strict=True))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_root(tmp_path):
    """(directory, its URL) served by a real HTTP server on 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_standard_shards_over_http(tmp_path, http_root, monkeypatch):
    root, url = http_root
    write_shards(root, "png")
    pattern = f"{url}/shard-{{000000..000001}}.tar"
    with pytest.raises(UserError, match="--out"):
        prepare_webdataset(pattern, log=lambda _: None)
    out = tmp_path / "manifest-here"
    manifest = prepare_webdataset(pattern, out=out, log=lambda _: None)
    assert [s["url"] for s in manifest["splits"]["train"]["shards"]] == [
        f"{url}/shard-000000.tar", f"{url}/shard-000001.tar"]
    want = stock_images(root)
    # data.dir = the local manifest's directory (or the manifest file): the shards come through the cache
    cache = open_dataset(out / "manifest.json", tmp_path / "cache")
    assert cache == tmp_path / "cache" and sorted(p.name for p in (cache / "train").iterdir()) == []
    batches = all_batches(cache / "train", world_size=2)
    keys = [k for r in batches for ks, _, _ in r for k in ks]
    assert len(set(keys)) == len(keys) == 56
    assert all(np.array_equal(img, want[k][0]) for r in batches for ks, imgs, _ in r
               for k, img in zip(ks, imgs, strict=True))
    assert sorted(p.name for p in (cache / "train").glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    # the manifest served next to the shards (relative urls): data.dir = the URL
    prepare_webdataset(str(root / "shard-{000000..000001}.tar"), log=lambda _: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    served = open_dataset(url)
    x, _ = load_split(served / "train")
    assert len(x) == sum(SIZES) and (served / "train" / "train-000001.tar").is_file()


def test_json_labels_and_pipe_urls(tmp_path):
    """A .json label (an integer, or an object with "label"/"cls"/"class"), and shards read through `pipe:`
    (as data.dir reads them): the manifest pass and the loader go through the verified cache."""
    assert [parse_label(b, "json") for b in (b"3", b'{"label": 4}', b'{"cls": 5, "x": 1}')] == [3, 4, 5]
    for bad in (b'"3"', b"true", b"{}", b"-1"):
        with pytest.raises(ValueError):
            parse_label(bad, "json")
    root = tmp_path / "json"
    root.mkdir()
    images = _images(10, 4)
    with wds.TarWriter(str(root / "j-0.tar")) as sink:
        for i, img in enumerate(images):
            webp = io.BytesIO()
            Image.fromarray(img).save(webp, format="WEBP", lossless=True)
            sink.write({"__key__": f"j{i}", "webp": webp.getvalue(), "json": {"label": i % 3}})
    manifest = prepare_webdataset(f"pipe:cat {root}/j-{{0..0}}.tar", out=tmp_path / "out", log=lambda _: None)
    assert manifest["sample"]["label_ext"] == "json" and manifest["sample"]["image_ext"] == "webp"
    assert manifest["classes"]["counts"]["train"] == [4, 3, 3]
    cache = open_dataset(tmp_path / "out", tmp_path / "cache")
    x, y = load_split(cache / "train")
    assert sorted(y.tolist()) == sorted(i % 3 for i in range(10)) and x.shape == (10, 3, 8, 8)


def test_manifest_refuses_bad_fields_in_one_line(tmp_path):
    root = write_shards(tmp_path / "wds")
    prepare_webdataset(str(root / "shard-{000000..000001}.tar"), log=lambda _: None)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["sample"]["image_ext"] = "tiff"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="sample.image_ext") as e:
        read_manifest(root)
    assert "\n" not in str(e.value)


@pytest.mark.slow  # two real 2-process runs
def test_cli_adopts_and_two_processes_train(tmp_path, capsys):
    """`distgan prepare --webdataset` (the CLI in-process), then the one 2-process run: `distgan train` with
    data.dir at the manifest's directory under accelerate (gloo), a few steps of the debug config; then every
    sample exactly once over the 2 processes and their loader workers."""
    root = write_shards(tmp_path / "wds", "jpg", sizes=(400, 300), side=8)
    assert cli_main(["prepare", "--webdataset", str(root / "shard-{000000..000001}.tar"), "--format",
                     "standard"]) == 2
    assert capsys.readouterr().err.strip() == ("distgan prepare: error: --webdataset reads shards in place: "
                                               "drop --format")
    assert cli_main(["prepare", "--webdataset", str(root / "shard-{000000..000001}.tar")]) == 0
    assert "no shard copied" in capsys.readouterr().out
    run = tmp_path / "run"
    accelerate_launch(["-m", "distgan", "train", "--config", "configs/debug.yaml", f"data.dir={root}",
                       f"run.dir={run}", "wandb.mode=disabled", "train.steps=4", "train.batch_size=8",
                       "log.every=2", "checkpoint.every=4"], timeout=120)
    state = json.loads((run / "checkpoints/step_0000004/trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["state"]["start_sample"] == 4 * 8 * 2
    # Exactly once over 2 real processes with 2 loader workers each (tests/loader_probe.py: batches of 64,
    # one all-reduce per batch, so unequal batch counts would hang), and the same batches as simulated ranks.
    out = tmp_path / "probe"
    accelerate_launch([str(REPO / "tests" / "loader_probe.py"), str(root / "train"), str(out), "2", "2"],
                      num_processes=2, timeout=120)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 700 // 128
    keys = [k for r in ranks for batch in r["batches"] for k in batch]
    assert len(keys) == len(set(keys)) == 700 // 128 * 128
    simulated = build_loader(root / "train", batch_size=64, rank=1, world_size=2, num_workers=0, seed=7, epoch=1)
    assert [b["key"] for b in simulated] == ranks[1]["batches"]
