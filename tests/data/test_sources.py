"""distgan.data.sources in-process, on small files of real MNIST digits: the .npz source (hash and key
splits, label widths, class names, every array check in one line), check_npz_arrays (each .npy header
check, before anything is allocated), the IDX source (classes, manifest entry, the four files found once,
size checks), the image-folder source, and choose_source's choice of one source."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distgan.data.datasets import named_dataset
from distgan.data.idx import FILES, find_raw_files, load_pair
from distgan.data.image_folder import hash_fraction
from distgan.data.imaging import Transform
from distgan.data.sources import check_npz_arrays, choose_source, folder_source, idx_source, npz_source
from distgan.errors import UserError

IDENTITY = Transform()


@pytest.fixture(scope="module")
def digits(mnist_raw) -> tuple[np.ndarray, np.ndarray]:
    """The first 20 real MNIST test digits (20 x 28 x 28 uint8) and their labels (int64)."""
    images, labels = load_pair(mnist_raw / FILES["test_images"], mnist_raw / FILES["test_labels"])
    return images[:20].copy(), labels[:20].astype(np.int64)


def _load(path: Path, transform: Transform = IDENTITY, test_fraction: float = 0.1):
    return npz_source(path, transform, test_fraction).load(lambda _: None)


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as exc:
        call(*args, **kwargs)
    assert "\n" not in str(exc.value)
    return str(exc.value)


# -- .npz -------------------------------------------------------------------------------------------

def test_npz_hash_split_and_manifest_entry(tmp_path, digits):
    x, y = digits
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=y)
    data = _load(path, test_fraction=0.3)
    test = np.array([hash_fraction(str(i)) < 0.3 for i in range(20)])
    assert 0 < test.sum() < 20
    (train_x, train_y), (test_x, test_y) = data.splits["train"], data.splits["test"]
    assert train_x.shape == (20 - test.sum(), 1, 28, 28) and np.array_equal(train_x[:, 0], x[~test])
    assert np.array_equal(test_x[:, 0], x[test]) and np.array_equal(test_y, y[test])
    assert train_y.dtype == np.uint8 and np.array_equal(train_y, y[~test])
    assert data.classes == tuple(str(i) for i in range(int(y.max()) + 1)) and data.skipped == []
    assert npz_source(path, IDENTITY, 0.3).describe() == {
        "kind": "npz", "file": "d.npz", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "test_fraction": 0.3}


def test_npz_key_split_colour_and_class_names(tmp_path, digits):
    x, y = digits
    rgb = np.stack([x, 255 - x, x // 2], axis=-1)  # N x H x W x 3
    path = tmp_path / "d.npz"
    names = np.array([f"digit{i}" for i in range(10)])
    np.savez(path, train_images=rgb[:15], train_labels=y[:15], test_images=rgb[15:], test_labels=y[15:],
             class_names=names)
    data = _load(path, test_fraction=0.5)  # ignored: the keys split
    assert np.array_equal(data.splits["train"][0], rgb[:15].transpose(0, 3, 1, 2))
    assert np.array_equal(data.splits["test"][1], y[15:]) and data.classes == tuple(names)
    np.savez(path, train_images=x, train_labels=y)  # no test split: an empty one, of the same shape
    test_x, test_y = _load(path).splits["test"]
    assert test_x.shape == (0, 1, 28, 28) and test_y.dtype == np.uint8 and len(test_y) == 0
    np.savez(path, train_images=x)
    data = _load(path)
    assert data.classes is None and data.splits["train"][1] is None and data.splits["test"][1] is None


def test_npz_labels_past_one_byte_are_uint16(tmp_path, digits):
    np.savez(tmp_path / "d.npz", images=digits[0][:3], labels=np.array([0, 300, 2]))
    data = _load(tmp_path / "d.npz", test_fraction=0.0)
    assert data.splits["train"][1].dtype == np.uint16 and data.splits["train"][1].tolist() == [0, 300, 2]
    assert len(data.classes) == 301 and data.splits["test"][0].shape == (0, 1, 28, 28)


def test_npz_resize_makes_differing_splits_fit(tmp_path, digits):
    x = digits[0]
    np.savez(tmp_path / "d.npz", train_images=x[:5, :20, :20], test_images=x[5:8])
    msg = _error(_load, tmp_path / "d.npz")
    assert msg == f"{tmp_path / 'd.npz'}: 'test_images' are (1, 28, 28) but 'train_images' (1, 20, 20) (C, H, W); " \
                  f"pass --resolution R and --channels C"
    data = _load(tmp_path / "d.npz", Transform(resolution=16))
    assert data.splits["train"][0].shape == (5, 1, 16, 16) and data.splits["test"][0].shape == (3, 1, 16, 16)


X = np.zeros((4, 5, 6), np.uint8)
NPZ_ERRORS = {
    "labels_negative": (dict(images=X, labels=np.array([0, -1, 2, 3])),
                        "'labels' holds -1..3; labels must be 0..65535"),
    "labels_too_big": (dict(images=X, labels=np.full(4, 65536)),
                       "'labels' holds 65536..65536; labels must be 0..65535"),
    "labels_count": (dict(images=X, labels=np.zeros(3, int)),
                     "'labels' must be 4 integers (one per image), not int64 (3,)"),
    "labels_float": (dict(images=X, labels=np.zeros(4)),
                     "'labels' must be 4 integers (one per image), not float64 (4,)"),
    "two_channels": (dict(images=np.zeros((4, 5, 6, 2), np.uint8)),
                     "'images' has shape (4, 5, 6, 2), expected N x H x W or N x H x W x C with C 1 or 3"),
    "one_label_file": (dict(train_images=X, train_labels=np.zeros(4, int), test_images=X),
                       "has one of 'train_labels' and 'test_labels' but not the other"),
    "too_few_names": (dict(images=X, labels=np.array([0, 1, 2, 0]), class_names=np.array(["a", "b"])),
                      "label 2 out of range 0..1 ('class_names' names 2 classes)"),
    "names_not_str": (dict(images=X, labels=np.zeros(4, int), class_names=np.array([1, 2])),
                      "'class_names' must be 1..65536 strings"),
    "names_0d": (dict(images=X, labels=np.zeros(4, int), class_names=np.array("ab")),
                 "'class_names' must be 1..65536 strings"),
}


@pytest.mark.parametrize("case", NPZ_ERRORS)
def test_npz_array_errors_are_one_line(tmp_path, case):
    arrays, message = NPZ_ERRORS[case]
    np.savez(tmp_path / "d.npz", **arrays)
    assert _error(_load, tmp_path / "d.npz", IDENTITY, 0.0) == f"{tmp_path / 'd.npz'}: {message}"


def test_npz_file_errors_are_one_line(tmp_path):
    path = tmp_path / "d.npz"
    assert _error(npz_source, path, IDENTITY, 0.1) == f"--npz {path}: no such file"
    np.savez(path, pictures=X, notes=np.zeros(1))
    assert _error(_load, path) == f"--npz {path}: no 'images' (or 'train_images') array; it has 'pictures', 'notes'"
    for fraction in (-0.1, 1.0):
        assert _error(npz_source, path, IDENTITY, fraction) == f"--test-fraction {fraction}: must be in [0, 1)"
    np.savez(path, images=X[:0])
    assert _error(_load, path) == f"--npz {path}: no training images"
    path.write_bytes(b"not a zip at all")
    assert _error(_load, path) == f"--npz {path}: cannot read as .npz (BadZipFile: File is not a zip file); " \
                                  f"write it with numpy.savez"


# -- check_npz_arrays -------------------------------------------------------------------------------

def _npy(shape, descr: str = "|u1", body: bytes | None = None, version: int = 1) -> bytes:
    """A .npy member: a header declaring (shape, descr), then `body` (default: the bytes it declares)."""
    buf = io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == 1 else np.lib.format.write_array_header_2_0
    write(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + (bytes(int(np.prod(shape)) * np.dtype(descr).itemsize) if body is None else body)


def _zip(path: Path, **members: bytes) -> Path:
    """A zip of the given members as they are; a trailing `_npy` in a keyword stands for `.npy`."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name.replace("_npy", ".npy"), data)
    return path


BAD_HEADER = " has no valid .npy header"
CAPS = "at most 10000000 items, sides up to 4096 and 2147483648 bytes per array are read here (split the dataset, " \
       "or use --image-folder)"
NPY_ERRORS = {  # member images.npy -> what the message says after naming it
    "bool_dim": (_npy((True, 1), body=b"\0"), f"{BAD_HEADER} (shape (True, 1)); write the file with numpy.savez"),
    "negative_dim": (_npy((-1, 3), body=b""), f"{BAD_HEADER} (shape (-1, 3)); write the file with numpy.savez"),
    "objects": (_npy((2,), descr="|O", body=b""), " holds Python objects (object); save plain arrays (uint8 images, "
                                                  "integer labels, str class names)"),
    "not_npy": (b"hello world", f"{BAD_HEADER} (the magic string is not correct; expected b'\\x93NUMPY', got "
                                f"b'hello '); write the file with numpy.savez"),
    "version_3": (_npy((2, 3, 3))[:6] + b"\x03\x00" + _npy((2, 3, 3))[8:],
                  f"{BAD_HEADER} (.npy format version 3.0); write the file with numpy.savez"),
    "too_many_items": (_npy((10_000_001,), body=b""),
                       f": its header declares shape (10000001,) of uint8 (10000001 bytes); {CAPS}"),
    "side_too_long": (_npy((1, 4097, 1), body=b""), f": its header declares shape (1, 4097, 1) of uint8 (4097 bytes); "
                                                    f"{CAPS}"),
    "short_body": (_npy((2, 3, 3), body=bytes(17)), ": its header declares shape (2, 3, 3) of uint8 (18 bytes) but "
                   "the member holds 17 bytes of data; the file is corrupt, write it again with numpy.savez"),
    "long_body": (_npy((2, 3, 3), body=bytes(19)), ": its header declares shape (2, 3, 3) of uint8 (18 bytes) but "
                  "the member holds 19 bytes of data; the file is corrupt, write it again with numpy.savez"),
}


@pytest.mark.parametrize("case", NPY_ERRORS)
def test_npy_header_checks(tmp_path, case):
    member, message = NPY_ERRORS[case]
    path = _zip(tmp_path / "d.npz", images_npy=member)
    assert _error(check_npz_arrays, path) == f"--npz {path}: member images.npy (array 'images')" + message


def test_npy_header_checks_look_only_at_the_named_arrays(tmp_path):
    good = _npy((2, 3, 3), version=2)
    check_npz_arrays(_zip(tmp_path / "a.npz", images_npy=good, notes_npy=b"junk"))  # not an array of ours
    path = _zip(tmp_path / "b.npz", images_npy=good, labels_npy=b"junk")
    check_npz_arrays(path, keys=("images",))
    assert _error(check_npz_arrays, path, ("labels",), "--samples ").startswith(
        f"--samples {path}: member labels.npy (array 'labels'){BAD_HEADER}")
    path = _zip(tmp_path / "c.npz", images=b"junk", images_npy=good)  # np.load reads the bare name first
    assert _error(check_npz_arrays, path).startswith(f"--npz {path}: member images (array 'images'){BAD_HEADER}")


def test_a_zip_claiming_more_than_the_file_holds(tmp_path):
    path = _zip(tmp_path / "d.npz", images_npy=_npy((2, 3, 3)))
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    data[central + 20:central + 24] = struct.pack("<I", 10 ** 6)  # stored size: more than the whole file
    path.write_bytes(bytes(data))
    assert _error(check_npz_arrays, path) == (
        f"--npz {path}: member images.npy (array 'images'): the zip records {len(_npy((2, 3, 3)))} bytes (1000000 "
        f"stored) that the file cannot hold; it is truncated or corrupt, write it again with numpy.savez")


# -- IDX --------------------------------------------------------------------------------------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    data = struct.pack(">I", 0x803 if array.ndim == 3 else 0x801) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _raw_dir(root: Path, train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray) -> Path:
    """The four IDX files, the images gzipped (official names), the labels not (names without .gz)."""
    root.mkdir()
    for role, array in (("train_images", train), ("train_labels", train_y), ("test_images", test),
                        ("test_labels", test_y)):
        name = FILES[role] if role.endswith("images") else FILES[role].removesuffix(".gz")
        _write_idx(root / name, array)
    return root


def test_idx_source_classes_entry_and_one_lookup(tmp_path, digits):
    x, y = digits
    y = np.minimum(y, 4)  # labels 0..4
    raw = _raw_dir(tmp_path / "raw", x[:12], y[:12], x[12:], y[12:])
    lookups = []

    def paths_of():
        lookups.append(1)
        return find_raw_files(raw)

    source = idx_source(paths_of, None, IDENTITY)
    entry = source.describe()
    data = source.load(lambda _: None)
    assert lookups == [1] and source.dataset is None  # a download would happen once
    assert data.classes == ("0", "1", "2", "3", "4")
    assert np.array_equal(data.splits["train"][0][:, 0], x[:12]) and np.array_equal(data.splits["test"][1], y[12:])
    assert entry["kind"] == "idx" and sorted(entry["files"]) == sorted(FILES.values())
    name = FILES["train_labels"]  # described under its official name, though found without .gz
    content = (raw / name.removesuffix(".gz")).read_bytes()
    assert entry["files"][name] == {"file": name.removesuffix(".gz"), "md5": hashlib.md5(content).hexdigest(),
                                    "sha256": hashlib.sha256(content).hexdigest()}
    named = idx_source(lambda: find_raw_files(raw), named_dataset("mnist"), IDENTITY)
    assert named.dataset == "mnist" and named.load(lambda _: None).classes == tuple(str(i) for i in range(10))


def test_idx_source_size_mismatch_needs_a_resolution(tmp_path, digits):
    x, y = digits
    raw = _raw_dir(tmp_path / "raw", x[:12], y[:12], x[12:, :20, :24], y[12:])
    source = idx_source(lambda: find_raw_files(raw), None, IDENTITY)
    assert _error(source.load, lambda _: None) == (
        f"{raw / FILES['test_images']}: images are 20x24 but the train images are 28x28; pass --resolution R to "
        f"resize both")
    data = idx_source(lambda: find_raw_files(raw), None, Transform(resolution=20)).load(lambda _: None)
    assert data.splits["train"][0].shape == (12, 1, 20, 20) and data.splits["test"][0].shape == (8, 1, 20, 20)


# -- image folder and the choice of source ----------------------------------------------------------

def test_folder_source_reads_classes_and_skips_bad_files(tmp_path, digits):
    x, y = digits
    for i in range(6):
        (tmp_path / "pics" / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(tmp_path / "pics" / f"class{i % 2}" / f"{i}.png")
    (tmp_path / "pics" / "class1" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = folder_source(tmp_path / "pics", IDENTITY, 0.0, skip_bad=True)
    data = source.load(lambda _: None)
    assert data.classes == ("class0", "class1") and data.splits["train"][1].tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(data.splits["train"][0][:, 0], x[[0, 2, 4, 1, 3, 5]])
    assert [s["file"] for s in data.skipped] == ["class1/9.png"] and len(data.splits["test"][0]) == 0
    assert source.describe()["kind"] == "image-folder" and source.describe()["images"] == 7


def _choose(tmp_path, **given):
    options = dict(raw_dir=None, dataset=None, image_folder_dir=None, npz=None)
    options.update(given)
    return choose_source(out=tmp_path / "out", mirrors=None, md5=None, transform=IDENTITY, test_fraction=0.1,
                         skip_bad=False, progress=False, **options)


def test_choose_source_takes_one_source(tmp_path):
    assert _error(_choose, tmp_path, raw_dir="r", npz="d.npz") == "--raw-dir and --npz: give one source per run"
    assert _error(_choose, tmp_path, dataset="mnist", image_folder_dir="f") == (
        "--dataset mnist with --image-folder: --dataset names an IDX dataset (downloaded, or read from --raw-dir); "
        "drop one of them")
    assert _error(_choose, tmp_path, dataset="cifar").startswith("--dataset cifar: unknown dataset; known: ")
    default = _choose(tmp_path)  # no option: MNIST, downloaded only when described or loaded
    assert default.dataset == "mnist" and not (tmp_path / "out").exists()
    assert _choose(tmp_path, raw_dir=tmp_path / "nowhere", dataset="fashion-mnist").dataset == "fashion-mnist"
