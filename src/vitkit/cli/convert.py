"""`vitkit convert SRC DST --to vitkit|timm|hf|npz`: rewrite a checkpoint in another format.

SRC is anything `vitkit.load_model` reads; the model it describes is written in the target's
format, or refused with the one reason the target cannot express it and the formats that can
(nothing is written then). Each stage is reported on stderr as it starts. For timm, DST a folder
gets timm's own layout, loaded by one `timm.create_model("local-dir:DST", pretrained=True)`; a
file gets the bare state dict and the create_model line that builds its model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vitkit.cli.arguments import add_unrecorded_settings, unrecorded_settings
from vitkit.text import printable
from vitkit.weights import load_model
from vitkit.weights.class_names import labels_file
from vitkit.weights.export import WRITERS, export_model, writes_folder
from vitkit.weights.load import SOURCE_FORMATS
from vitkit.weights.timm import timm_create_model_call
from vitkit.weights.timm_folder import timm_local_dir_call


def _progress(message: str, started: float) -> None:
    """One line per stage on stderr (reading a large checkpoint takes seconds), with the time
    since the start, so that stdout keeps only the result; paths in it shown as text."""
    line = f"[{time.perf_counter() - started:5.1f} s] {printable(message)}"
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _progress(f"reading {args.source}", started)
    model = load_model(args.source, format=args.format, **unrecorded_settings(args))
    millions = sum(param.numel() for param in model.parameters()) / 1e6
    _progress(f"read a model of {millions:.1f}M parameters; writing {args.to}", started)
    folder = writes_folder(args.destination, args.to)
    written = export_model(model, args.destination, to=args.to)
    _progress("done", started)
    print(f"wrote {printable(str(written))} ({args.to})")
    if model.class_names and not folder:  # names beside the weights
        labels = printable(str(labels_file(written)))
        print(f"wrote {labels} (the {len(model.class_names)} class names)")
    if args.to == "timm" and folder:  # timm's own layout: its config.json says everything
        print(f"load it with: {printable(timm_local_dir_call(written))}")
    elif args.to == "timm":  # a state dict records no architecture: say how to build the model
        call = timm_create_model_call(model.config, path=written, preprocessing=model.preprocessing)
        print(f"build it with: {call}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="write a checkpoint in another format",
        description="Read any checkpoint vitkit reads and write it as a vitkit directory, a timm "
        "folder (timm's own layout, config.json + model.safetensors: "
        'timm.create_model("local-dir:DST", pretrained=True) loads it) or bare timm state dict '
        "(.safetensors or .pth, with the create_model line that builds its model), a Hugging "
        "Face transformers directory or a Google .npz file. Refused, writing nothing, when the "
        "target cannot express the model.",
    )
    parser.add_argument("source", type=Path, help="checkpoint file or directory")
    parser.add_argument(
        "destination",
        type=Path,
        help="directory to write (vitkit, hf; timm: a name without suffix); file (npz; timm: "
        ".safetensors, .pth)",
    )
    parser.add_argument("--to", choices=list(WRITERS), required=True, help="target format")
    parser.add_argument(
        "--format", choices=SOURCE_FORMATS, help="the source's format, when its name does not tell"
    )
    add_unrecorded_settings(parser)
    parser.set_defaults(run=run, command="convert")
