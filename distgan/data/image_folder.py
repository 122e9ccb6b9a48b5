"""`prepare --image-folder DIR`: PNG, JPEG, WebP and BMP files read with Pillow.

Layout rules (hidden files and folders, and files with other suffixes, are ignored):

- Splits: if DIR has both a `train/` and a `test/` folder, those are the splits. Otherwise every image
  goes to `test` when the first 8 bytes of sha256(its path relative to DIR, "/"-separated) read as a
  big-endian integer, divided by 2**64, fall below `--test-fraction` (default 0.1), else to `train`:
  deterministic, and a file keeps its split when others are added or removed.
- Labels: a collection (DIR, or each of DIR/train and DIR/test) holding only folders is labelled: each
  folder is a class, the sorted folder names are the class names, label = position (at most 65,536 class
  folders: distgan.data.shards.MAX_CLASSES, checked before any image is opened). With explicit
  splits the class names are train/'s and every test/ folder must be one of them. A collection holding
  only image files is unlabelled. Folders and images side by side, or folders inside class folders,
  stop with one line naming the path.
- Order: images sorted by relative path; image i of a split gets the key `<split>-<i>`.
- Bad images (unreadable, truncated, not one of the four formats): one line naming the file by
  default; with `skip_bad` they are left out and listed in the manifest (`skipped`).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from distgan.data.imaging import Transform
from distgan.data.shards import check_num_classes
from distgan.errors import UserError

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
DEFAULT_TEST_FRACTION = 0.1


def hash_fraction(text: str) -> float:
    """A stable number in [0, 1) for `text`: the first 8 bytes of its sha256, over 2**64."""
    # surrogateescape: a file name that is not UTF-8 (b"\xff.png" reads as "\udcff.png") hashes its own bytes
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2.0 ** 64


def _visible(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


@dataclass
class _Collection:
    """The images of one folder: (path, class folder name or None) in sorted order."""

    files: list[tuple[Path, str | None]]
    classes: list[str] | None


def _scan_collection(folder: Path) -> _Collection:
    entries = _visible(folder)
    dirs = [p for p in entries if p.is_dir()]
    images = [p for p in entries if _is_image(p)]
    if dirs and images:
        raise UserError(f"--image-folder: {folder} holds both image files ({images[0].name}...) and folders "
                        f"({dirs[0].name}...); use class folders only, or images only (unlabelled)")
    if not dirs:
        return _Collection([(p, None) for p in images], None)
    check_num_classes(len(dirs), f"--image-folder {folder}", "class folders")
    files: list[tuple[Path, str | None]] = []
    for d in dirs:
        for p in _visible(d):
            if p.is_dir():
                raise UserError(f"--image-folder: {p} is a folder inside class folder {d.name}; only one level "
                                f"of class folders is read, move its images up")
            if _is_image(p):
                files.append((p, d.name))
    return _Collection(files, [d.name for d in dirs])


@dataclass
class FolderScan:
    """Where every image goes: split -> [(path, label or None)], the class names, the split rule."""

    root: Path
    splits: dict[str, list[tuple[Path, int | None]]]
    classes: tuple[str, ...] | None
    rule: str  # "folders" (train/ and test/) or "hash"
    test_fraction: float | None

    def fingerprint(self) -> tuple[int, str]:
        """(number of files, sha256 over every file's relative path and content sha256, in order)."""
        h = hashlib.sha256()
        n = 0
        for split in ("train", "test"):
            for path, label in self.splits[split]:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                h.update(f"{split}\t{label}\t{path.relative_to(self.root).as_posix()}\t{digest}\n"
                         .encode("utf-8", "surrogateescape"))
                n += 1
        return n, h.hexdigest()


def scan(root: str | os.PathLike[str], test_fraction: float = DEFAULT_TEST_FRACTION) -> FolderScan:
    """Apply the layout rules to DIR (no image is opened)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--image-folder {root}: not a directory")
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"--test-fraction {test_fraction}: must be in [0, 1)")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _scan_collection(root / "train"), _scan_collection(root / "test")
        if (train.classes is None) != (test.classes is None):
            raise UserError(f"--image-folder {root}: train/ and test/ must both hold class folders or both "
                            f"hold images (unlabelled)")
        classes = train.classes
        if classes is not None and test.classes is not None:
            extra = sorted(set(test.classes) - set(classes))
            if extra:
                raise UserError(f"--image-folder {root}: test/{extra[0]} is not a class of train/ "
                                f"({', '.join(classes[:5])}...); the class folders must match")
        parts, rule, fraction = {"train": train.files, "test": test.files}, "folders", None
    else:
        coll = _scan_collection(root)
        classes = coll.classes
        parts = {"train": [], "test": []}
        for path, cls in coll.files:
            rel = path.relative_to(root).as_posix()
            parts["test" if hash_fraction(rel) < test_fraction else "train"].append((path, cls))
        rule, fraction = "hash", test_fraction
    index = {name: i for i, name in enumerate(classes)} if classes is not None else {}
    splits = {s: [(p, index[c] if c is not None else None) for p, c in sorted(files, key=lambda f: f[0])]
              for s, files in parts.items()}
    if not splits["train"]:
        raise UserError(f"--image-folder {root}: no {', '.join(SUFFIXES)} images for the train split")
    return FolderScan(root, splits, tuple(classes) if classes is not None else None, rule, fraction)


@dataclass
class FolderImages:
    """Decoded images: split -> (uint8 N x C x H x W, int64 labels or None); skipped files and why."""

    splits: dict[str, tuple[np.ndarray, np.ndarray | None]]
    skipped: list[dict[str, str]] = field(default_factory=list)


def _open(path: Path, transform: Transform, rel: str) -> np.ndarray:
    """Decode one file completely and transform it; OSError/ValueError/SyntaxError if it is bad."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(path.read_bytes()), formats=FORMATS) as img:
            img.load()  # the whole image: a truncated file fails here, not later
            return transform.apply(img, str(path))


def read_images(found: FolderScan, transform: Transform, *, skip_bad: bool,
                log: Callable[[str], None] = print) -> FolderImages:
    """Decode every image of `found`; without a resolution/channels transform all must share one shape."""
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    skipped: list[dict[str, str]] = []
    first: tuple[tuple[int, ...], Path] | None = None
    for split, files in found.splits.items():
        arrays: list[np.ndarray] = []
        labels: list[int] = []
        for path, label in files:
            rel = path.relative_to(found.root).as_posix()
            try:
                arr = _open(path, transform, rel)
            except UserError:
                raise
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning) as e:
                msg = (str(e).split("\n")[0] or type(e).__name__).replace(str(found.root), "DIR")
                if not skip_bad:
                    raise UserError(f"{path}: cannot read image ({type(e).__name__}: {msg}); fix or remove it, "
                                    f"or pass --skip-bad to leave unreadable images out") from e
                skipped.append({"file": rel, "error": f"{type(e).__name__}: {msg}"})
                continue
            if first is None:
                first = (arr.shape, path)
            elif arr.shape != first[0]:
                c, h, w = arr.shape
                c0, h0, w0 = first[0]
                raise UserError(f"{path}: {w}x{h} with {c} channel(s), but {first[1]} is {w0}x{h0} with {c0}; "
                                f"all images must share one size and mode, or pass --resolution R "
                                f"(and --channels 1|3) to convert them")
            arrays.append(arr)
            labels.append(label if label is not None else 0)
        shape = first[0] if first is not None else (transform.channels or 1, 1, 1)
        images = np.stack(arrays) if arrays else np.empty((0, *shape), np.uint8)
        out[split] = (images, np.asarray(labels, np.int64) if found.classes is not None else None)
        log(f"{split}: decoded {len(arrays)} images from {found.root}")
    if skipped:
        log(f"skipped {len(skipped)} unreadable image(s) (--skip-bad), listed in the manifest: "
            f"{', '.join(s['file'] for s in skipped[:3])}{', ...' if len(skipped) > 3 else ''}")
    if not len(out["train"][0]):
        raise UserError(f"--image-folder {found.root}: no readable image for the train split")
    return FolderImages(out, skipped)


def describe(found: FolderScan, *, skip_bad: bool) -> dict[str, Any]:
    """The manifest's `source` entry (no absolute paths: identical for identical input)."""
    n, digest = found.fingerprint()
    return {"kind": "image-folder", "images": n, "sha256": digest, "split": found.rule,
            "test_fraction": found.test_fraction, "skip_bad": skip_bad}


__all__ = ["SUFFIXES", "FORMATS", "DEFAULT_TEST_FRACTION", "hash_fraction", "FolderScan", "scan", "FolderImages",
           "read_images", "describe"]
