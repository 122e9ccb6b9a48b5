"""Datasets beyond MNIST, all from real images: Fashion-MNIST (IDX), an RGB image folder of MNIST digits,
.npz files; conversion (--resolution, --channels), bad and mixed-size images, format version 1, reruns,
and the loader's guarantees for any shape."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import missing, run_cli
from dataset_support import CLASS_NAMES, add_truncated_png, make_rgb_image_folder, mnist_digits, rgb_digit
from PIL import Image

from distgan.data import build_loader, dataset_info, load_split, samples_per_epoch
from distgan.data.idx import FILES, parse_idx
from distgan.data.image_folder import hash_fraction, scan
from distgan.data.prepare import prepare
from distgan.data.shards import MAX_CLASSES, Layout, check_num_classes, label_bytes_for, read_shard
from distgan.errors import UserError
from distgan.locks import LOCK_FILE

pytestmark = pytest.mark.slow  # real processes, signals, servers or file systems (unit tier: -m "not slow")

FASHION_RAW = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
N_PER_CLASS = 20


def _quiet(*args, **kwargs):
    return prepare(*args, progress=False, log=lambda s: None, **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distgan prepare: error:"), proc.stderr[-3000:]
    return lines[0]


def _keys_in_order(split: Path, world_size: int, num_workers: int, batch_size: int, **kw) -> list[list[str]]:
    per_rank = []
    for rank in range(world_size):
        loader = build_loader(split, batch_size=batch_size, rank=rank, world_size=world_size,
                              num_workers=num_workers, seed=kw.get("seed", 0), epoch=kw.get("epoch", 0),
                              start_sample=kw.get("start_sample", 0))
        per_rank.append([b["key"] for b in loader])
        assert len(per_rank[-1]) == len(loader)
    return [k for step in zip(*per_rank, strict=True) for batch in step for k in batch]


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Path:
    return make_rgb_image_folder(tmp_path_factory.mktemp("rgb") / "digits", N_PER_CLASS)


@pytest.fixture(scope="module")
def rgb_shards(tmp_path_factory, rgb_folder) -> Path:
    out = tmp_path_factory.mktemp("rgb_shards")
    _quiet(out, image_folder=rgb_folder, shard_size=48)
    return out


# -- Fashion-MNIST -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_fashion_mnist_raw_dir_end_to_end(tmp_path):
    """70,000 real images through prepare and build_loader, with the named dataset's classes."""
    if not (FASHION_RAW / FILES["train_images"]).is_file():
        missing(f"Fashion-MNIST at {FASHION_RAW}", "apt-get install dataset-fashion-mnist")
    out = tmp_path / "fashion"
    proc = run_cli(["prepare", "--raw-dir", str(FASHION_RAW), "--dataset", "fashion-mnist", "--out", str(out)],
                   timeout=300)
    assert "1x28x28 images, 10 classes" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"samples": 70000, "shards": 14, "train": 60000, "test": 10000}
    assert manifest["dataset"] == "fashion-mnist" and manifest["version"] == 2
    info = dataset_info(out)
    assert info.image_shape == (1, 28, 28) and info.num_classes == 10
    assert info.class_names[0] == "T-shirt/top" and info.class_names[-1] == "Ankle boot"
    assert info.class_frequencies == (0.1,) * 10  # 6000 per class in the training set
    images = parse_idx(FASHION_RAW / FILES["test_images"], kind="images")
    labels = parse_idx(FASHION_RAW / FILES["test_labels"], kind="labels")
    keys = _keys_in_order(out / "test", 2, 2, 250, seed=4)
    assert len(keys) == len(set(keys)) == 10000
    for batch in build_loader(out / "test", batch_size=500, rank=0, world_size=1, num_workers=0, seed=1, epoch=0):
        idx = [int(k.split("-")[1]) for k in batch["key"]]
        assert batch["image"].shape == (500, 1, 28, 28)
        assert np.array_equal(batch["image"][:, 0].numpy(), images[idx])
        assert np.array_equal(batch["label"].numpy(), labels[idx])
    assert samples_per_epoch(out / "train") == 60000
    assert "nothing to do" in run_cli(["prepare", "--raw-dir", str(FASHION_RAW), "--dataset", "fashion-mnist",
                                       "--out", str(out)], timeout=300).stdout


# -- RGB image folder ------------------------------------------------------------------------------

def test_rgb_image_folder(rgb_folder, rgb_shards):
    manifest = json.loads((rgb_shards / "manifest.json").read_text())
    assert manifest["sample"]["shape"] == [3, 32, 32] and manifest["sample"]["pack_size"] == 341
    assert manifest["classes"]["names"] == list(CLASS_NAMES) and manifest["skipped"] == []
    assert manifest["source"]["kind"] == "image-folder" and manifest["source"]["split"] == "hash"
    assert manifest["totals"]["samples"] == 10 * N_PER_CLASS
    # The split is the documented hash rule, file by file.
    found = scan(rgb_folder)
    files = sorted(p.relative_to(rgb_folder).as_posix() for p in rgb_folder.rglob("*.png"))
    assert [p.relative_to(rgb_folder).as_posix() for p, _ in found.splits["test"]] == \
        [f for f in files if hash_fraction(f) < 0.1]
    assert manifest["totals"]["test"] == len(found.splits["test"]) > 0
    info = dataset_info(rgb_shards)
    assert info.image_shape == (3, 32, 32) and info.num_classes == 10 and info.class_names == CLASS_NAMES
    assert abs(sum(info.class_frequencies) - 1) < 1e-9
    # Every image is its PNG's pixels, C x H x W, with its folder's label.
    for split in ("train", "test"):
        x, y = load_split(rgb_shards / split)
        assert x.shape == (len(found.splits[split]), 3, 32, 32) and x.dtype == torch.uint8
        for i, (path, label) in enumerate(found.splits[split]):
            assert np.array_equal(x[i].numpy(), np.asarray(Image.open(path)).transpose(2, 0, 1))
            assert y[i] == label == CLASS_NAMES.index(path.parent.name)
    # The digit itself survived: the tinted stroke is the real MNIST digit.
    digits = mnist_digits(N_PER_CLASS)
    x, _ = load_split(rgb_shards / "train")
    first_train = found.splits["train"][0][0]
    d = int(first_train.stem.split("_")[1])
    assert np.array_equal(x[0].numpy().transpose(1, 2, 0), rgb_digit(digits[d][1], digits[d][0]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_guarantees_for_rgb(rgb_shards, num_workers):
    split = rgb_shards / "train"
    n = samples_per_epoch(split)
    whole = _keys_in_order(split, 1, 0, 1, seed=3, epoch=1)
    for world in (1, 2, 3):
        keys = _keys_in_order(split, world, num_workers, 8, seed=3, epoch=1)
        assert len(keys) == len(set(keys)) and 0 <= n - len(keys) < world * 8
        assert keys == whole[:len(keys)]  # one order for (seed, epoch)
    rest = _keys_in_order(split, 2, num_workers, 8, seed=3, epoch=1, start_sample=48)
    assert rest == whole[48:48 + len(rest)]
    for batch in build_loader(split, batch_size=8, rank=1, world_size=2, num_workers=num_workers, seed=0, epoch=0):
        assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.uint8
        assert batch["label"].dtype == torch.int64 and int(batch["label"].min()) >= 0


def test_resolution_and_channels(rgb_folder, tmp_path):
    out = tmp_path / "gray16"
    manifest = _quiet(out, image_folder=rgb_folder, resolution=16, channels=1)
    assert manifest["sample"]["shape"] == [1, 16, 16]
    assert manifest["transform"] == {"resolution": 16, "channels": 1, "filter": "PIL.Image.LANCZOS",
                                     "crop": "center square"}
    found = scan(rgb_folder)
    x, y = load_split(out / "train")
    assert x.shape == (len(found.splits["train"]), 1, 16, 16)
    for i in (0, 7, len(x) - 1):  # Pillow's own luma conversion and antialiased LANCZOS resize
        want = Image.open(found.splits["train"][i][0]).convert("L").resize((16, 16), Image.Resampling.LANCZOS)
        assert np.array_equal(x[i, 0].numpy(), np.asarray(want))
    assert dataset_info(out).image_shape == (1, 16, 16)
    batch = next(iter(build_loader(out / "test", batch_size=4, rank=0, world_size=1, num_workers=0, seed=0,
                                   epoch=0)))
    assert batch["image"].shape == (4, 1, 16, 16)


def test_truncated_png_default_error_and_skip_bad(rgb_folder, tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(rgb_folder, folder)
    bad = add_truncated_png(folder)
    out = tmp_path / "out"
    line = _one_line_error(run_cli(["prepare", "--image-folder", str(folder), "--out", str(out)], timeout=120,
                                   check=False))
    assert str(bad) in line and "truncated" in line and "--skip-bad" in line, line
    assert not (out / "manifest.json").exists() and not list(out.glob("*/*.tar"))
    proc = run_cli(["prepare", "--image-folder", str(folder), "--out", str(out), "--skip-bad"], timeout=120)
    assert "skipped 1 unreadable image" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == [{"file": "digit0/truncated.png", "error": "OSError: image file is truncated"}]
    assert manifest["totals"]["samples"] == 10 * N_PER_CLASS and manifest["source"]["skip_bad"] is True
    assert manifest["classes"]["counts"]["train"][0] + manifest["classes"]["counts"]["test"][0] == N_PER_CLASS


def test_mixed_sizes_name_the_file(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    digits = mnist_digits(2)
    Image.fromarray(rgb_digit(digits[0][1], 0, 32)).save(folder / "a.png")
    Image.fromarray(rgb_digit(digits[1][1], 0, 30)).save(folder / "b.png")
    Image.fromarray(rgb_digit(digits[2][1], 1, 32)).convert("L").save(folder / "c.png")
    line = _one_line_error(run_cli(["prepare", "--image-folder", str(folder), "--out", str(tmp_path / "o"),
                                    "--test-fraction", "0"], timeout=120, check=False))
    assert str(folder / "b.png") in line and "30x30" in line and "--resolution" in line, line
    (folder / "b.png").unlink()
    line = _one_line_error(run_cli(["prepare", "--image-folder", str(folder), "--out", str(tmp_path / "o"),
                                    "--test-fraction", "0"], timeout=120, check=False))
    assert str(folder / "c.png") in line and "1 channel" in line and "--channels" in line, line
    # Converted, the flat folder is an unlabelled dataset: labels -1, no classes.
    _quiet(tmp_path / "o", image_folder=folder, resolution=24, channels=3, test_fraction=0.0)
    info = dataset_info(tmp_path / "o")
    assert info == ((3, 24, 24), None, None, None)
    x, y = load_split(tmp_path / "o" / "train")
    assert x.shape == (2, 3, 24, 24) and y.tolist() == [-1, -1]
    assert samples_per_epoch(tmp_path / "o" / "test") == 0


def test_folder_layout_errors(tmp_path, rgb_folder):
    mixed = tmp_path / "mixed"
    shutil.copytree(rgb_folder, mixed)
    shutil.copy(next((mixed / "digit1").glob("*.png")), mixed / "stray.png")
    with pytest.raises(UserError, match="holds both image files"):
        _quiet(tmp_path / "o1", image_folder=mixed)
    nested = tmp_path / "nested"
    shutil.copytree(rgb_folder, nested)
    (nested / "digit3" / "more").mkdir()
    with pytest.raises(UserError, match="inside class folder digit3"):
        _quiet(tmp_path / "o2", image_folder=nested)


def test_explicit_train_test_folders(rgb_folder, tmp_path):
    folder = tmp_path / "split"
    for split, classes in (("train", CLASS_NAMES), ("test", CLASS_NAMES[:3])):
        for c in classes:
            shutil.copytree(rgb_folder / c, folder / split / c)
    manifest = _quiet(tmp_path / "o", image_folder=folder)
    assert manifest["source"]["split"] == "folders" and manifest["totals"]["train"] == 10 * N_PER_CLASS
    assert manifest["classes"]["counts"]["test"] == [N_PER_CLASS] * 3 + [0] * 7
    shutil.copytree(rgb_folder / "digit5", folder / "test" / "shoes")
    with pytest.raises(UserError, match="test/shoes is not a class of train/"):
        _quiet(tmp_path / "o", image_folder=folder)


# -- npz -------------------------------------------------------------------------------------------

def test_npz_labelled_and_unlabelled(tmp_path):
    digits = mnist_digits(N_PER_CLASS)
    images = np.stack([d for _, d in digits])
    labels = np.array([label for label, _ in digits], np.int64)
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, images=images, labels=labels, class_names=np.array([f"n{i}" for i in range(10)]))
    manifest = _quiet(tmp_path / "a", npz=labelled, test_fraction=0.25)
    assert manifest["sample"]["shape"] == [1, 28, 28] and manifest["source"]["kind"] == "npz"
    test = [i for i in range(len(images)) if hash_fraction(str(i)) < 0.25]
    x, y = load_split(tmp_path / "a" / "test")
    assert np.array_equal(x[:, 0].numpy(), images[test]) and np.array_equal(y.numpy(), labels[test])
    assert dataset_info(tmp_path / "a").class_names == tuple(f"n{i}" for i in range(10))

    rgb = np.stack([rgb_digit(d, label) for label, d in digits])  # N x H x W x C
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, train_images=rgb[:150], test_images=rgb[150:])
    _quiet(tmp_path / "b", npz=unlabelled)
    assert dataset_info(tmp_path / "b") == ((3, 32, 32), None, None, None)
    x, y = load_split(tmp_path / "b" / "train")
    assert np.array_equal(x.numpy(), rgb[:150].transpose(0, 3, 1, 2)) and set(y.tolist()) == {-1}
    batch = next(iter(build_loader(tmp_path / "b" / "test", batch_size=50, rank=0, world_size=1, num_workers=0,
                                   seed=0, epoch=0)))
    assert batch["image"].shape == (50, 3, 32, 32) and batch["label"].tolist() == [-1] * 50

    bad = tmp_path / "float.npz"
    np.savez(bad, images=images.astype(np.float32))
    with pytest.raises(UserError, match="'images' has dtype float32, expected uint8"):
        _quiet(tmp_path / "c", npz=bad)
    chw = tmp_path / "chw.npz"
    np.savez(chw, images=rgb.transpose(0, 3, 1, 2))
    with pytest.raises(UserError, match="channels-first"):
        _quiet(tmp_path / "c", npz=chw)


# -- reruns and format versions --------------------------------------------------------------------

def test_byte_identical_reruns_and_noop(rgb_folder, rgb_shards, tmp_path):
    again = tmp_path / "again"
    _quiet(again, image_folder=rgb_folder, shard_size=48)
    assert _files(again) == _files(rgb_shards)
    lines: list[str] = []
    prepare(again, image_folder=rgb_folder, shard_size=48, progress=False, log=lines.append)
    assert any("nothing to do" in line for line in lines)
    # A changed option or a changed image is a different dataset: rewritten.
    lines.clear()
    prepare(again, image_folder=rgb_folder, shard_size=48, resolution=16, progress=False, log=lines.append)
    assert not any("nothing to do" in line for line in lines)
    digits = mnist_digits(1)
    npz = tmp_path / "d.npz"
    np.savez(npz, images=np.stack([d for _, d in digits]), labels=np.arange(10))
    _quiet(tmp_path / "n1", npz=npz, test_fraction=0.3)
    _quiet(tmp_path / "n2", npz=npz, test_fraction=0.3)
    assert _files(tmp_path / "n1") == _files(tmp_path / "n2")


def _v1_manifest(v2: dict) -> dict:
    """The manifest format version 1 wrote for the same MNIST shards (they are byte-identical)."""
    return {
        "format": "distgan-mnist-shards", "version": 1,
        "sample": {"image": [28, 28], "dtype": "uint8", "pack_size": 1000,
                   "members": {"images.u8": "n*28*28 raw uint8, row-major", "labels.u8": "n raw uint8",
                               "keys.txt": "n newline-separated sample keys"}},
        "shard_size": v2["shard_size"], "source": v2["source"]["files"], "splits": v2["splits"],
        "totals": v2["totals"],
    }


def test_version_1_output_is_refused_and_prepare_rewrites_it(mnist_shards, mnist_raw, tmp_path):
    """Format 1 (MNIST only, before the shape and classes were recorded) is no longer read: one line, and
    `distgan prepare` on the same folder rewrites it."""
    out = tmp_path / "v1"
    shutil.copytree(mnist_shards, out, ignore=shutil.ignore_patterns(LOCK_FILE))
    v2 = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(_v1_manifest(v2), indent=2, sort_keys=True) + "\n")
    with pytest.raises(UserError, match="manifest format version 1, this distgan reads versions 2, 3 and 4") as exc:
        dataset_info(out)
    assert "\n" not in str(exc.value)
    # An unknown version is refused with one line; prepare upgrades the directory in place.
    (out / "manifest.json").write_text(json.dumps({**_v1_manifest(v2), "format": "distgan-shards", "version": 5}))
    with pytest.raises(UserError, match="manifest format version 5, this distgan reads versions 2, 3 and 4") as exc:
        samples_per_epoch(out / "train")
    assert "\n" not in str(exc.value)
    (out / "manifest.json").write_text(json.dumps(_v1_manifest(v2)))
    lines: list[str] = []
    prepare(out, raw_dir=mnist_raw, progress=False, log=lines.append)
    assert not any("nothing to do" in line for line in lines)
    assert _files(out) == _files(mnist_shards)


def test_member_caps_follow_the_shape(rgb_shards, tmp_path):
    """A pack member larger than a pack of this shape can be is refused from its tar header."""
    layout = Layout((3, 32, 32))
    assert layout.max_member_bytes["images.u8"] == 341 * 3072 <= 1 << 20
    assert Layout((3, 1024, 1024)).pack_size == 1 and Layout((1, 28, 28)).pack_size == 1000
    size = layout.max_member_bytes["images.u8"] + 3072
    info = tarfile.TarInfo("train-000000.images.u8")
    info.size = size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(bytes(size)))
    path = tmp_path / "train-000000.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match=f"declares {size} bytes, more than the {341 * 3072} a pack of 341 "
                                        f"3x32x32 images allows"):
        read_shard(path, layout)
    real = rgb_shards / "train" / "train-000000.tar"
    with pytest.raises(UserError, match="rerun `distgan prepare`"):
        read_shard(real, Layout((1, 32, 32)))  # the wrong shape never reinterprets bytes
    assert hashlib.sha256(real.read_bytes()).hexdigest() == \
        json.loads((rgb_shards / "manifest.json").read_text())["splits"]["train"]["shards"][0]["sha256"]


def test_labels_and_named_dataset_classes(mnist_raw, tmp_path, rgb_folder):
    """Without --dataset the classes are 0..max label; with it, a label outside its classes stops."""
    import gzip

    raw = tmp_path / "raw"
    shutil.copytree(mnist_raw, raw)
    labels = raw / FILES["test_labels"]
    data = bytearray(gzip.decompress(labels.read_bytes()))
    data[-1] = 10  # the last test digit gets an 11th class
    labels.write_bytes(gzip.compress(bytes(data), mtime=0))
    manifest = _quiet(tmp_path / "a", raw_dir=raw)
    assert manifest["classes"]["names"] == [str(i) for i in range(11)]
    assert manifest["classes"]["counts"]["train"][10] == 0 and manifest["classes"]["counts"]["test"][10] == 1
    with pytest.raises(UserError, match=f"{labels}: label 10 out of range 0..9 \\(mnist has 10 classes"):
        _quiet(tmp_path / "b", raw_dir=raw, dataset="mnist")
    line = _one_line_error(run_cli(["prepare", "--image-folder", str(rgb_folder), "--dataset", "mnist", "--out",
                                    str(tmp_path / "c")], timeout=60, check=False))
    assert "--dataset mnist with --image-folder" in line
    line = _one_line_error(run_cli(["prepare", "--image-folder", str(rgb_folder), "--npz", "x.npz", "--out",
                                    str(tmp_path / "c")], timeout=60, check=False))
    assert "one source per run" in line


# -- more than 256 classes ---------------------------------------------------------------------------

def _many_class_folder(root: Path, num_classes: int) -> Path:
    """num_classes class folders c00000.. of one or two 8x8 grayscale PNGs whose first two pixels spell the
    class index (low byte, high byte), so that a label can be checked against its own image."""
    for k in range(num_classes):
        folder = root / f"c{k:05d}"
        folder.mkdir(parents=True)
        for j in range(1 + k % 2):
            pixels = np.full((8, 8), 17 * j, np.uint8)
            pixels[0, 0], pixels[0, 1] = k & 0xFF, k >> 8
            Image.fromarray(pixels).save(folder / f"{j}.png")
    return root


def _label_of_image(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def test_300_classes_get_16_bit_labels(tmp_path):
    """300 class folders: format version 3 with labels.u16 members; build_loader and load_split yield each
    image's folder index, 256..299 included; a rerun is a no-op."""
    root = _many_class_folder(tmp_path / "folders", 300)
    out = tmp_path / "out"
    manifest = _quiet(out, image_folder=root, shard_size=64, test_fraction=0.2)
    assert manifest["version"] == 3 and manifest["sample"]["label_dtype"] == "uint16"
    assert manifest["classes"]["names"] == [f"c{k:05d}" for k in range(300)]
    assert "labels.u16" in manifest["sample"]["members"] and "labels.u8" not in manifest["sample"]["members"]
    counts = [a + b for a, b in zip(manifest["classes"]["counts"]["train"], manifest["classes"]["counts"]["test"],
                                    strict=True)]
    assert counts == [1 + k % 2 for k in range(300)]
    with tarfile.open(out / "train" / "train-000000.tar") as tar:
        assert sorted(m.name.split(".", 1)[1] for m in tar) == ["images.u8", "keys.txt", "labels.u16"]
    info = dataset_info(out)
    assert info.num_classes == 300 and len(info.class_frequencies) == 300
    seen: list[int] = []
    for batch in build_loader(out / "train", batch_size=16, rank=0, world_size=1, num_workers=0, seed=3, epoch=0):
        assert batch["label"].dtype == torch.int64
        assert torch.equal(batch["label"], _label_of_image(batch["image"]))
        seen += batch["label"].tolist()
    x, y = load_split(out / "test")
    assert torch.equal(y, _label_of_image(x))
    assert max(seen) >= 256 and int(y.max()) >= 256  # labels past one byte, in both splits
    assert len(seen) == manifest["splits"]["train"]["count"] // 16 * 16 and len(y) + len(seen) > 400
    lines: list[str] = []
    prepare(out, image_folder=root, shard_size=64, test_fraction=0.2, progress=False, log=lines.append)
    assert any("nothing to do" in line for line in lines)


def test_class_limit_is_one_line(tmp_path):
    """65,536 classes (uint16 labels) at most; more is refused in one line before any shard is written."""
    assert MAX_CLASSES == 65536 and label_bytes_for(256) == 1 and label_bytes_for(257) == 2
    assert label_bytes_for(None) == 1 and label_bytes_for(MAX_CLASSES) == 2
    check_num_classes(MAX_CLASSES, "--image-folder X", "class folders")
    with pytest.raises(UserError, match="--image-folder X: 65,537 class folders, more than the 65,536 classes") \
            as exc:
        check_num_classes(MAX_CLASSES + 1, "--image-folder X", "class folders")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="100,000 classes, more than the 65,536"):
        label_bytes_for(100_000)
    # The CLI, from a .npz (65,537 class folders take ~10 s to make and scan; their line is the one above).
    npz, out = tmp_path / "many.npz", tmp_path / "out"
    np.savez(npz, images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 1]),
             class_names=np.array([f"c{k}" for k in range(MAX_CLASSES + 1)]))
    line = _one_line_error(run_cli(["prepare", "--npz", str(npz), "--out", str(out)], timeout=60, check=False))
    assert f"--npz {npz}: 65,537 names in 'class_names', more than the 65,536 classes" in line
    np.savez(npz, images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, MAX_CLASSES]))
    line = _one_line_error(run_cli(["prepare", "--npz", str(npz), "--out", str(out)], timeout=60, check=False))
    assert "'labels' holds 0..65536; labels must be 0..65535" in line
    assert not (out / "manifest.json").exists() and not (out / "train").exists()
