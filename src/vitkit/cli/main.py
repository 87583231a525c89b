"""`vitkit` entry point: one argparse sub-command per module, bad input reported in one line.

Each command module exposes `add_parser(subparsers)`, which registers its arguments and sets
`run(args) -> int` as the handler; this file only dispatches and turns the library's input errors
into exit code 2, so users see what is wrong with their file instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from vitkit import __version__
from vitkit.cli import (
    classify,
    convert,
    demo,
    evaluate,
    experiment,
    export_onnx,
    fewshot,
    figures,
    models,
    pretrained,
    shard,
    train,
)
from vitkit.errors import VitkitError
from vitkit.text import printable

USAGE_ERROR = 2  # argparse's exit status for bad arguments; bad input files are the same kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers (Dosovitskiy et al., ICLR 2021)."
    )
    # What a bug report needs: vitkit's version and the torch it runs on.
    parser.add_argument(
        "--version", action="version", version=f"vitkit {__version__} (torch {torch.__version__})"
    )
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for command in (
        models,
        pretrained,
        classify,
        demo,
        train,
        experiment,
        evaluate,
        fewshot,
        figures,
        shard,
        convert,
        export_onnx,
    ):
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except VitkitError as error:
        print(f"vitkit {args.command}: error: {printable(str(error))}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
