"""`distgan prepare`: a dataset -> webdataset shards + manifest.json (distgan.data.prepare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from distgan.data.datasets import DATASETS
from distgan.data.image_folder import DEFAULT_TEST_FRACTION
from distgan.data.prepare import DEFAULT_SHARD_SIZE, FORMATS, prepare, prepare_webdataset
from distgan.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `distgan prepare`."""
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (shards + manifest.json); locked while prepare runs, and "
                             "refused if it holds another tool's dataset. Required, except with --webdataset "
                             "of local shards (the manifest then goes next to them)")
    src = parser.add_argument_group("source (one per run; none given: download MNIST, as --dataset mnist)")
    src.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                     help="download this IDX dataset from its mirrors (md5-checked); with --raw-dir, read it "
                          "from there instead and take its class names")
    src.add_argument("--raw-dir", type=Path, default=None,
                     help="read an IDX quadruple (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                          "t10k-...) from here; any N x H x W uint8 images with labels 0..255")
    src.add_argument("--image-folder", type=Path, default=None,
                     help="PNG/JPEG/WebP/BMP files: class folders (sorted names = classes) or a flat folder "
                          "(unlabelled); train/ and test/ folders, if both exist, are the splits")
    src.add_argument("--npz", type=Path, default=None,
                     help="a .npz with uint8 `images` (N x H x W or N x H x W x C) [+ `labels`], or "
                          "`train_images`/`test_images` [+ `train_labels`/`test_labels`]; optional `class_names`")
    src.add_argument("--mirror", action="append", default=None, metavar="URL",
                     help="download mirror (repeatable, tried in order); default: $DISTGAN_<DATASET>_MIRRORS "
                          "(comma separated, e.g. DISTGAN_MNIST_MIRRORS) or the dataset's public mirrors")
    src.add_argument("--webdataset", default=None, metavar="PATTERN",
                     help="train on existing standard webdataset shards in place (one image per sample: "
                          ".png/.jpg/.jpeg/.webp, optional .cls or .json label): a path or URL (http(s), s3, gs, "
                          "pipe:) with braces, e.g. 'data/shard-{000000..000099}.tar'; writes only manifest.json "
                          "(per shard: count, bytes, sha256), next to local shards or into --out")
    src.add_argument("--webdataset-test", default=None, metavar="PATTERN",
                     help="with --webdataset: the shards of the test split")
    conv = parser.add_argument_group("conversion")
    conv.add_argument("--resolution", type=int, default=None, metavar="R",
                      help="square R x R output: central square crop, then an antialiased LANCZOS resize; "
                           "without it, all images must share one size")
    conv.add_argument("--channels", type=int, choices=(1, 3), default=None,
                      help="convert to 1 (grayscale) or 3 (RGB) channels; without it, all images must share "
                           "one mode (L or RGB)")
    conv.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                      help=f"share of images for the test split when the source has no split of its own "
                           f"(by a hash of each file's path or array index; default {DEFAULT_TEST_FRACTION})")
    conv.add_argument("--skip-bad", action="store_true",
                      help="leave unreadable or truncated images out (counted and listed in the manifest) "
                           "instead of stopping at the first")
    parser.add_argument("--format", choices=FORMATS, default="packed",
                        help="packed (default): 1,000s of raw images per tar sample, fastest to load; standard: "
                             "one PNG (+ .cls) per sample, readable by any webdataset pipeline")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"images per shard (default {DEFAULT_SHARD_SIZE})")


def run(args: argparse.Namespace) -> int:
    """Run `distgan prepare`."""
    if args.webdataset_test and not args.webdataset:
        raise UserError("--webdataset-test needs --webdataset (the train shards)")
    if args.webdataset:
        others = [f"--{n.replace('_', '-')}" for n in ("raw_dir", "dataset", "image_folder", "npz")
                  if getattr(args, n) is not None]
        if others or args.format != "packed":
            raise UserError(f"--webdataset reads shards in place: drop {', '.join(others) or '--format'}")
        prepare_webdataset(args.webdataset, test=args.webdataset_test, out=args.out, resolution=args.resolution,
                           channels=args.channels, skip_bad=args.skip_bad, log=lambda s: print(s, flush=True))
        return 0
    if args.out is None:
        raise UserError("--out DIR is required (where the shards and manifest.json go)")
    prepare(args.out, raw_dir=args.raw_dir, dataset=args.dataset, image_folder=args.image_folder, npz=args.npz,
            mirrors=args.mirror, resolution=args.resolution, channels=args.channels,
            test_fraction=args.test_fraction, skip_bad=args.skip_bad, shard_size=args.shard_size, progress=True,
            log=lambda s: print(s, flush=True), format=args.format)
    return 0
