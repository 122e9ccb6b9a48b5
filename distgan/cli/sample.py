"""`distgan sample`: images from a checkpoint's EMA generator (distgan.training.sampling)."""

from __future__ import annotations

import argparse

import torch

from distgan.training.sampling import write_samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (its latest)")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .npz (key `images`, uint8 N x 28 x 28)")
    parser.add_argument("--grid", default=None, help="also write a PNG grid of the images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace) -> int:
    images = write_samples(args.checkpoint, n=args.n, seed=args.seed, out=args.out, grid=args.grid,
                           device=args.device)
    print(f"wrote {len(images)} images to {args.out}")
    if args.grid:
        print(f"wrote grid to {args.grid}")
    return 0
