"""`vitkit export-onnx CKPT OUT.onnx [--img-size N] [--batch N|dynamic]`: an ONNX graph of any
checkpoint `vitkit.load_model` reads, at the checkpoint's resolution or `--img-size`, with a
dynamic batch unless `--batch N`; its metadata records the preprocessing and class names."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitkit.cli.arguments import (
    add_unrecorded_settings,
    load_checkpoint,
    positive_int,
    unrecorded_settings,
)
from vitkit.weights.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx


def batch_size(text: str) -> int | None:
    return None if text == "dynamic" else positive_int(text)


def run(args: argparse.Namespace) -> int:
    model = load_checkpoint(args.checkpoint, args.img_size, settings=unrecorded_settings(args))
    # Tracing and converting take seconds (minutes for ViT-H): say so before the wait.
    print(f"exporting {args.checkpoint} to ONNX (this takes a few seconds)", file=sys.stderr)
    export_onnx(model, args.output, batch_size=args.batch, opset_version=args.opset)
    height, width = model.config.img_size
    batch = "batch" if args.batch is None else args.batch
    names = "with" if model.class_names else "without"
    print(
        f"wrote {args.output}: {INPUT_NAME} ({batch}, {model.config.in_chans}, {height}, {width}) "
        f"float32 -> {OUTPUT_NAME} ({batch}, {model.config.num_classes or model.config.width}); "
        f"metadata: preprocessing, {names} class names"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="write a checkpoint as an ONNX graph",
        description="Export any checkpoint vitkit reads to ONNX (PyTorch's dynamo exporter; "
        "needs the onnx and onnxscript packages). Inputs are normalised images at one size.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint file or directory")
    parser.add_argument("output", type=Path, help="the .onnx file to write")
    add_unrecorded_settings(parser)
    parser.add_argument(
        "--img-size",
        type=positive_int,
        help="resolution of the graph (default: the checkpoint's); position embeddings resized",
    )
    parser.add_argument(
        "--batch",
        type=batch_size,
        default=None,
        help="batch size of the graph, or 'dynamic' for any (default: dynamic)",
    )
    parser.add_argument("--opset", type=positive_int, help="ONNX opset (default: PyTorch's)")
    parser.set_defaults(run=run, command="export-onnx")
