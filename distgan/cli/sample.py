"""`distgan sample`: images from a checkpoint's EMA generator (distgan.generator.sampling)."""

from __future__ import annotations

import argparse

import torch

from distgan.generator.loading import write_samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (its latest)")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", default=None, metavar="all|K|K1,K2,...",
                        help="conditional generators only: the classes to draw; all (default) takes every "
                             "class in turn, K one class, K1,K2,... those classes in turn (classes 0..K-1). A "
                             "self-conditioned generator's classes are clusters; its default draws them in "
                             "their training frequencies")
    parser.add_argument("--out", required=True, help="output .npz (key `images`, uint8 N x H x W or N x H x W x 3; "
                        "and `labels`, int64 N, for a conditional generator; `clusters` for a self-conditioned "
                        "one)")
    parser.add_argument("--grid", default=None, help="also write a PNG grid of the images (one row per class for "
                        "a conditional generator)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace) -> int:
    images = write_samples(args.checkpoint, n=args.n, seed=args.seed, out=args.out, grid=args.grid,
                           device=args.device, labels=args.labels)
    print(f"wrote {len(images)} images to {args.out}")
    if args.grid:
        print(f"wrote grid to {args.grid}")
    return 0
