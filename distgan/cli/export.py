"""`distgan export`: a checkpoint's EMA generator as a self-contained folder (distgan.generator.export)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory, a run directory (its latest), or an earlier export")
    parser.add_argument("--out", required=True, help="output folder (created, or an earlier export replaced)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write generator.onnx (needs the `export` extra: onnx, onnxscript)")
    parser.add_argument("--scores", default=None,
                        help="JSON of `distgan eval --json` for the model card (default: RUN_DIR/metrics.jsonl "
                             "at the checkpoint's step, if any)")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="then upload the folder to this Hugging Face Hub model repo (user/name)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def run(args: argparse.Namespace) -> int:
    from distgan.exporting import export_checkpoint
    from distgan.generator.export import push_to_hub

    meta = export_checkpoint(args.checkpoint, args.out, onnx=args.onnx, scores_file=args.scores)
    shape = "x".join(map(str, meta["image_shape"]))
    print(f"exported {meta['arch']} generator ({shape}, step {meta['step']}) from {meta['source']} to {args.out}")
    if args.push_to_hub:
        url = push_to_hub(args.out, args.push_to_hub, private=args.private)
        print(f"pushed {args.out} to {url}")
    return 0
