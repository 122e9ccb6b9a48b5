"""The sources of `distgan prepare`, one per run, each turned into the same thing: per split uint8
images (N, C, H, W) and integer labels 0..K-1 (or None: unlabelled), the class names, and a `source` entry for
the manifest that changes whenever the input or an option does (the up-to-date check compares it).

- IDX quadruple (`--raw-dir DIR`, or `--dataset NAME` downloaded): the official train/test split.
  Classes: the named dataset's (`--dataset` with or without `--raw-dir`; a label outside them stops),
  else "0".."max label".
- Image folder (`--image-folder DIR`): see distgan.data.image_folder.
- `.npz` (`--npz FILE`, read with allow_pickle=False): `train_images` [+ `test_images`] (with
  `train_labels`/`test_labels` if labelled), or `images` [+ `labels`] split like an image folder's
  files, by hash_fraction(str(index)) < --test-fraction. Images uint8 N x H x W (grayscale) or
  N x H x W x C (C = 1 or 3); labels integers 0..65535; optional `class_names` (strings), else
  "0".."max label".
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distgan.data import image_folder
from distgan.data.datasets import NamedDataset, named_dataset
from distgan.data.datasets import resolve_mirrors as dataset_mirrors
from distgan.data.download import download_dataset
from distgan.data.idx import FILES, MAX_BODY_BYTES, MAX_ITEMS, MAX_SIDE, find_raw_files, load_pair
from distgan.data.imaging import Transform, apply_to_array
from distgan.data.shards import BYTE_CLASSES, CHANNELS, MAX_CLASSES, SPLITS, check_num_classes
from distgan.errors import UserError
from distgan.hashing import file_sha256

# split -> (role of its images file, role of its labels file) in distgan.data.idx.FILES
IDX_SPLITS: dict[str, tuple[str, str]] = {"train": ("train_images", "train_labels"),
                                          "test": ("test_images", "test_labels")}


@dataclass
class SourceData:
    """What every source yields to `prepare`."""

    splits: dict[str, tuple[np.ndarray, np.ndarray | None]]  # split -> (uint8 N,C,H,W, integer N or None)
    classes: tuple[str, ...] | None
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Source:
    """A chosen source: `describe` (checksums and options, for the manifest) and `load` (the data)."""

    describe: Callable[[], dict[str, Any]]
    load: Callable[[Callable[[str], None]], SourceData]
    dataset: str | None = None  # the named dataset, if any


def _numbered_classes(labels: Sequence[np.ndarray], where: str) -> tuple[str, ...]:
    top = max((int(y.max()) for y in labels if len(y)), default=0)
    if top + 1 > MAX_CLASSES:
        raise UserError(f"{where}: label {top} is more than {MAX_CLASSES - 1}")
    return tuple(str(i) for i in range(top + 1))


def _check_labels(labels: np.ndarray, classes: Sequence[str], where: str, hint: str) -> None:
    if len(labels) and int(labels.max()) >= len(classes):
        raise UserError(f"{where}: label {int(labels.max())} out of range 0..{len(classes) - 1} ({hint})")


# -- IDX --------------------------------------------------------------------------------------------

def idx_source(paths_of: Callable[[], dict[str, Path]], spec: NamedDataset | None, transform: Transform) -> Source:
    """An IDX quadruple; `paths_of` finds (or downloads) the four files."""
    paths: dict[str, Path] = {}

    def files() -> dict[str, Path]:
        if not paths:
            paths.update(paths_of())
        return paths

    def describe() -> dict[str, Any]:
        return {"kind": "idx", "files": {FILES[role]: {"file": p.name, "md5": file_sha256(p, "md5"),
                                                        "sha256": file_sha256(p)}
                                         for role, p in sorted(files().items())}}

    def load(log: Callable[[str], None]) -> SourceData:
        pairs = {split: load_pair(files()[img], files()[lab]) for split, (img, lab) in IDX_SPLITS.items()}
        if spec is not None:
            for split, (_, lab) in IDX_SPLITS.items():
                _check_labels(pairs[split][1], spec.classes, str(files()[lab]),
                              f"{spec.name} has {len(spec.classes)} classes; is this {spec.name}?")
            classes = spec.classes
        else:
            classes = _numbered_classes([y for _, y in pairs.values()], str(files()["train_labels"]))
        shapes = {x.shape[1:] for x, _ in pairs.values() if len(x)}
        if len(shapes) > 1 and transform.resolution is None:
            raise UserError(f"{files()['test_images']}: images are {'x'.join(map(str, pairs['test'][0].shape[1:]))}"
                            f" but the train images are {'x'.join(map(str, pairs['train'][0].shape[1:]))}; "
                            f"pass --resolution R to resize both")
        splits = {s: (apply_to_array(x[:, None], transform, str(files()[IDX_SPLITS[s][0]])), y)
                  for s, (x, y) in pairs.items()}
        return SourceData(splits, classes)

    return Source(describe, load, spec.name if spec is not None else None)


# -- npz --------------------------------------------------------------------------------------------

def _npz_images(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise UserError(f"{path}: {key!r} has dtype {arr.dtype}, expected uint8 (0..255)")
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[-1] in CHANNELS:
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    hint = "; it looks channels-first, pass images.transpose(0, 2, 3, 1)" if arr.ndim == 4 and \
        arr.shape[1] in CHANNELS else ""
    raise UserError(f"{path}: {key!r} has shape {arr.shape}, expected N x H x W or N x H x W x C with C 1 or "
                    f"3{hint}")


def _npz_labels(arr: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if arr.ndim != 1 or len(arr) != n or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"{path}: {key!r} must be {n} integers (one per image), not {arr.dtype} {arr.shape}")
    if n and (int(arr.min()) < 0 or int(arr.max()) >= MAX_CLASSES):
        raise UserError(f"{path}: {key!r} holds {int(arr.min())}..{int(arr.max())}; labels must be "
                        f"0..{MAX_CLASSES - 1}")
    return arr.astype(np.uint8 if not n or int(arr.max()) < BYTE_CLASSES else np.uint16)


# The arrays a .npz source may hold; np.load reads only these (any other array is left unread).
NPZ_ARRAYS = ("images", "labels", "train_images", "train_labels", "test_images", "test_labels", "class_names")


def _npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) from the .npy header of zip member `member`, reading nothing else."""
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # 3.0 is only for structured dtypes with non-Latin-1 field names: never images
            raise ValueError(f".npy format version {version[0]}.{version[1]}")
        return tuple(shape), dtype, f.tell()


def _check_npz_member(zf: zipfile.ZipFile, member: str, where: str, archive_bytes: int) -> None:
    """Check one member's zip record and .npy header (see check_npz_arrays); UserError starting with `where`."""
    info = zf.getinfo(member)
    # The zip's sizes are its own claims: the member's data must lie inside the file, and a stored
    # (uncompressed) member holds exactly the bytes it says.
    if info.header_offset + info.compress_size > archive_bytes or \
            (info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size):
        raise UserError(f"{where}: the zip records {info.file_size} bytes ({info.compress_size} stored) that the "
                        f"file cannot hold; it is truncated or corrupt, write it again with numpy.savez")
    try:
        shape, dtype, header = _npy_header(zf, member)
    # read_magic / read_array_header_*: not a .npy array, or a bad header (ValueError); a header literal such as
    # {[]: 1} (TypeError, from ast.literal_eval), nested thousands deep (RecursionError), or one that numpy's
    # Python 2 header filter cannot tokenize ("{" alone: TokenError; lines indented badly: IndentationError)
    except (ValueError, TypeError, RecursionError, SyntaxError, tokenize.TokenError) as e:
        raise UserError(f"{where} has no valid .npy header ({(str(e).splitlines() or [''])[0]}); write the file "
                        f"with numpy.savez") from None
    if any(isinstance(d, bool) or d < 0 for d in shape):  # numpy's header check lets (True, 1) and (-1, -1) by
        raise UserError(f"{where} has no valid .npy header (shape {shape}); write the file with numpy.savez")
    if dtype.hasobject:
        raise UserError(f"{where} holds Python objects ({dtype}); save plain arrays (uint8 images, integer labels, "
                        f"str class names)")
    declared = math.prod(shape) * dtype.itemsize
    if (shape and shape[0] > MAX_ITEMS) or any(d > MAX_SIDE for d in shape[1:]) or declared > MAX_BODY_BYTES:
        raise UserError(f"{where}: its header declares shape {shape} of {dtype} ({declared} bytes); at most "
                        f"{MAX_ITEMS} items, sides up to {MAX_SIDE} and {MAX_BODY_BYTES} bytes per array are read "
                        f"here (split the dataset, or use --image-folder)")
    if header + declared != info.file_size:
        raise UserError(f"{where}: its header declares shape {shape} of {dtype} ({declared} bytes) but the member "
                        f"holds {info.file_size - header} bytes of data; the file is corrupt, write it again with "
                        f"numpy.savez")


def check_npz_arrays(path: Path, keys: Sequence[str] = NPZ_ARRAYS, label: str = "--npz ") -> None:
    """Check the members of .npz `path` that hold arrays `keys` before np.load allocates what their .npy
    headers declare: that size must be the member's (uncompressed) size in the zip and within the IDX limits
    (MAX_ITEMS items, sides up to MAX_SIDE, MAX_BODY_BYTES per array). One-line UserError starting with
    `label` + path and naming the member. A compressed member's zip size is its uncompressed size, so this
    also bounds np.savez_compressed files. zipfile.BadZipFile (and OSError) propagate.
    """
    archive_bytes = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        members = {name.removesuffix(".npy"): name for name in names}  # array -> member, as np.load maps them:
        members.update((name, name) for name in names)  # a member named exactly `images` wins over images.npy
        for key in keys:
            if key in members:
                _check_npz_member(zf, members[key], f"{label}{path}: member {members[key]} (array {key!r})",
                                  archive_bytes)


def _read_npz(path: Path, test_fraction: float) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]],
                                                           tuple[str, ...] | None, str]:
    try:
        check_npz_arrays(path)
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            arrays = {k: npz[k] for k in NPZ_ARRAYS if k in names}
    except FileNotFoundError as e:
        raise UserError(f"--npz {path}: no such file") from e
    except MemoryError:  # arrays within the caps that this machine (or its memory limit) cannot hold
        raise UserError(f"--npz {path}: not enough memory to load its arrays; free memory, or split the "
                        f"dataset") from None
    # zlib.error: a damaged deflate stream; NotImplementedError: a compression method zipfile lacks;
    # RuntimeError: an encrypted member. BadZipFile also covers a CRC mismatch found while reading.
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError,
            RuntimeError) as e:
        detail = (str(e).splitlines() or [""])[0]
        raise UserError(f"--npz {path}: cannot read as .npz ({type(e).__name__}: {detail}); "
                        f"write it with numpy.savez") from None
    if "train_images" in arrays:
        rule = "keys"
        parts = {}
        for split in SPLITS:
            if f"{split}_images" not in arrays:
                parts[split] = (np.empty((0, *_npz_images(arrays['train_images'], path, 'train_images').shape[1:]),
                                         np.uint8), None)
                continue
            x = _npz_images(arrays[f"{split}_images"], path, f"{split}_images")
            y = arrays.get(f"{split}_labels")
            parts[split] = (x, _npz_labels(y, len(x), path, f"{split}_labels") if y is not None else None)
        if len(parts["test"][0]) and (parts["train"][1] is None) != (parts["test"][1] is None):
            raise UserError(f"{path}: has one of 'train_labels' and 'test_labels' but not the other")
        if parts["test"][1] is None and parts["train"][1] is not None:
            parts["test"] = (parts["test"][0], np.empty(0, np.uint8))
    elif "images" in arrays:
        rule = "hash"
        x = _npz_images(arrays["images"], path, "images")
        y = _npz_labels(arrays["labels"], len(x), path, "labels") if "labels" in arrays else None
        test = np.array([image_folder.hash_fraction(str(i)) < test_fraction for i in range(len(x))], bool)
        parts = {"train": (x[~test], y[~test] if y is not None else None),
                 "test": (x[test], y[test] if y is not None else None)}
    else:
        raise UserError(f"--npz {path}: no 'images' (or 'train_images') array; it has "
                        f"{', '.join(map(repr, names)) or 'nothing'}")  # repr: a member may be named "\n"
    classes: tuple[str, ...] | None = None
    if parts["train"][1] is not None:
        labels = [y for _, y in parts.values() if y is not None]
        if "class_names" in arrays:
            names = arrays["class_names"]
            check_num_classes(names.size, f"--npz {path}", "names in 'class_names'")  # size: a 0-d array has no len
            if names.ndim != 1 or names.dtype.kind != "U" or not 1 <= len(names) <= MAX_CLASSES:
                raise UserError(f"{path}: 'class_names' must be 1..{MAX_CLASSES} strings")
            classes = tuple(str(n) for n in names)
            for y in labels:
                _check_labels(y, classes, str(path), f"'class_names' names {len(classes)} classes")
        else:
            classes = _numbered_classes(labels, str(path))
    return parts, classes, rule


def npz_source(path: Path, transform: Transform, test_fraction: float) -> Source:
    """A .npz file of images (and labels)."""
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"--test-fraction {test_fraction}: must be in [0, 1)")
    if not path.is_file():
        raise UserError(f"--npz {path}: no such file")
    rule: list[str] = []

    def describe() -> dict[str, Any]:
        return {"kind": "npz", "file": path.name, "sha256": file_sha256(path), "test_fraction": test_fraction}

    def load(log: Callable[[str], None]) -> SourceData:
        parts, classes, how = _read_npz(path, test_fraction)
        rule.append(how)
        if not len(parts["train"][0]):
            raise UserError(f"--npz {path}: no training images")
        shapes = {x.shape[1:] for x, _ in parts.values() if len(x)}
        if len(shapes) > 1 and transform.identity:
            raise UserError(f"{path}: 'test_images' are {parts['test'][0].shape[1:]} but 'train_images' "
                            f"{parts['train'][0].shape[1:]} (C, H, W); pass --resolution R and --channels C")
        return SourceData({s: (apply_to_array(x, transform, str(path)), y) for s, (x, y) in parts.items()}, classes)

    return Source(describe, load)


# -- image folder -----------------------------------------------------------------------------------

def folder_source(root: Path, transform: Transform, test_fraction: float, skip_bad: bool) -> Source:
    """A folder of image files (distgan.data.image_folder)."""
    found = image_folder.scan(root, test_fraction)

    def load(log: Callable[[str], None]) -> SourceData:
        images = image_folder.read_images(found, transform, skip_bad=skip_bad, log=log)
        return SourceData(images.splits, found.classes, images.skipped)

    return Source(lambda: image_folder.describe(found, skip_bad=skip_bad), load)


# -- choice -----------------------------------------------------------------------------------------

def choose_source(*, out: Path, raw_dir: str | os.PathLike[str] | None, dataset: str | None,
                  image_folder_dir: str | os.PathLike[str] | None, npz: str | os.PathLike[str] | None,
                  mirrors: Sequence[str] | None, md5: Mapping[str, str] | None, transform: Transform,
                  test_fraction: float, skip_bad: bool, progress: bool) -> Source:
    """The one source the options name; no option at all means `--dataset mnist` (download)."""
    given = [name for name, v in (("--raw-dir", raw_dir), ("--image-folder", image_folder_dir), ("--npz", npz))
             if v is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)}: give one source per run")
    if dataset is not None and given and given[0] != "--raw-dir":
        raise UserError(f"--dataset {dataset} with {given[0]}: --dataset names an IDX dataset (downloaded, or "
                        f"read from --raw-dir); drop one of them")
    if image_folder_dir is not None:
        return folder_source(Path(image_folder_dir), transform, test_fraction, skip_bad)
    if npz is not None:
        return npz_source(Path(npz), transform, test_fraction)
    spec = named_dataset(dataset) if dataset is not None else None
    if raw_dir is not None:
        return idx_source(lambda: find_raw_files(raw_dir), spec, transform)
    spec = spec or named_dataset("mnist")
    urls = dataset_mirrors(spec, list(mirrors) if mirrors else None)
    return idx_source(lambda: download_dataset(spec, out / "raw", urls, md5=md5, progress=progress), spec,
                      transform)


__all__ = ["SourceData", "Source", "idx_source", "npz_source", "folder_source", "choose_source",
           "check_npz_arrays"]
