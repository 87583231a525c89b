"""`vitkit` entry point: one argparse sub-command per module, bad input reported in one line.

Each command module exposes `add_parser(subparsers)`, which registers its arguments and sets
`run(args) -> int` as the handler; this file only dispatches and turns the library's input errors
into exit code 2, so users see what is wrong with their file instead of a traceback.

Only the module of the command being run is imported: training, reports and experiments bring
FSDP, matplotlib and scipy, about 1.5 s that `vitkit classify` or `convert` would otherwise wait
for at every start. `vitkit --help` (or an unknown command) loads them all, to list them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import torch

from vitkit import __version__
from vitkit.errors import VitkitError
from vitkit.text import printable

USAGE_ERROR = 2  # argparse's exit status for bad arguments; bad input files are the same kind
# Each command's name -> its module in vitkit.cli, in the order `vitkit --help` lists them.
COMMAND_MODULES = {
    "models": "models",
    "pretrained": "pretrained",
    "classify": "classify",
    "demo": "demo",
    "train": "train",
    "experiment": "experiment",
    "eval": "evaluate",
    "fewshot": "fewshot",
    "figures": "figures",
    "shard": "shard",
    "convert": "convert",
    "export-onnx": "export_onnx",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `command` alone when it is one of COMMAND_MODULES, else of every command."""
    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers (Dosovitskiy et al., ICLR 2021)."
    )
    # What a bug report needs: vitkit's version and the torch it runs on.
    parser.add_argument(
        "--version", action="version", version=f"vitkit {__version__} (torch {torch.__version__})"
    )
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    chosen = [command] if command in COMMAND_MODULES else list(COMMAND_MODULES)
    for name in chosen:
        importlib.import_module(f"vitkit.cli.{COMMAND_MODULES[name]}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in words if not word.startswith("-")), None)
    args = build_parser(command).parse_args(words)
    try:
        return args.run(args)
    except VitkitError as error:
        print(f"vitkit {args.command}: error: {printable(str(error))}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
