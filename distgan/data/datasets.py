"""Named IDX datasets that `distgan prepare --dataset NAME` can download: their four files, official
checksums, mirrors and class names.

Each file has two official checksums: the md5 of the gzipped file (the number publishers print) and the
md5 and size of its decompressed IDX content. A download is accepted if either matches, because some
mirrors (Debian's `dataset-fashion-mnist` package, for one) recompress the same IDX bytes, which changes
the gzip md5 but not the content.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from distgan.data.idx import FILES
from distgan.errors import UserError


@dataclass(frozen=True)
class Content:
    """md5 and byte size of a file's decompressed IDX content."""

    md5: str
    size: int


@dataclass(frozen=True)
class NamedDataset:
    """An IDX quadruple published under the official file names (distgan.data.idx.FILES)."""

    name: str
    md5: Mapping[str, str]  # official gzip file name -> md5 of the .gz
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    content: Mapping[str, Content] = field(default_factory=dict)  # official name -> decompressed md5/size

    @property
    def mirrors_env(self) -> str:
        """The environment variable that overrides the mirrors, e.g. DISTGAN_FASHION_MNIST_MIRRORS."""
        return f"DISTGAN_{self.name.upper().replace('-', '_')}_MIRRORS"


MNIST = NamedDataset(
    name="mnist",
    # The official MNIST md5s (the same table torchvision checks).
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    classes=tuple(str(i) for i in range(10)),
)

FASHION_MNIST = NamedDataset(
    name="fashion-mnist",
    # The gzip md5s of zalandoresearch/fashion-mnist's README (also torchvision's FashionMNIST.resources).
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    # The decompressed IDX files (60000 or 10000 items of 28x28 images or labels, plus the header).
    content={
        "train-images-idx3-ubyte.gz": Content("f4a8712d7a061bf5bd6d2ca38dc4d50a", 47_040_016),
        "train-labels-idx1-ubyte.gz": Content("9018921c3c673c538a1fc5bad174d6f9", 60_008),
        "t10k-images-idx3-ubyte.gz": Content("8181f5470baa50b63fa0f6fddb340f0a", 7_840_016),
        "t10k-labels-idx1-ubyte.gz": Content("15d484375f8d13e6eb1aabb0c3f46965", 10_008),
    },
)

DATASETS: dict[str, NamedDataset] = {d.name: d for d in (MNIST, FASHION_MNIST)}
assert all(set(d.md5) == set(FILES.values()) for d in DATASETS.values())


def named_dataset(name: str) -> NamedDataset:
    """The dataset called `name`; a one-line UserError listing the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"--dataset {name}: unknown dataset; known: {', '.join(DATASETS)} (for other data "
                        f"use --raw-dir, --image-folder or --npz)") from None


def resolve_mirrors(dataset: NamedDataset, cli_mirrors: list[str] | tuple[str, ...] | None,
                    environ: Mapping[str, str] = os.environ) -> list[str]:
    """Mirrors to try, in order: `--mirror` options, else $DISTGAN_<NAME>_MIRRORS, else the defaults."""
    env = dataset.mirrors_env
    if cli_mirrors:
        mirrors = list(cli_mirrors)
    elif environ.get(env, "").strip():
        mirrors = [m.strip() for m in environ[env].split(",") if m.strip()]
    else:
        mirrors = list(dataset.mirrors)
    return [m if m.endswith("/") else m + "/" for m in mirrors]


__all__ = ["Content", "NamedDataset", "MNIST", "FASHION_MNIST", "DATASETS", "named_dataset", "resolve_mirrors"]
