"""`vitkit models`: every registered architecture with its size and cost at 224 px."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

from vitkit.models.complexity import count_flops, count_params
from vitkit.models.config import get_config, list_models

# The paper compares models at ImageNet's 224 px with a 1000-class head (Table 1 and 6).
TABLE_RESOLUTION = 224
TABLE_CLASSES = 1000


def format_table(names: Iterable[str]) -> str:
    """One row per preset: parameters, GFLOPs (multiply-add = 2) and tokens at 224 px."""
    rows = [f"{'model':<12} {'params':>9} {'GFLOPs':>8} {'tokens':>7}"]
    for name in names:
        config = dataclasses.replace(
            get_config(name), img_size=(TABLE_RESOLUTION,) * 2, num_classes=TABLE_CLASSES
        )
        params = f"{count_params(config) / 1e6:.1f}M"
        gflops = f"{count_flops(config) / 1e9:.1f}"
        rows.append(f"{name:<12} {params:>9} {gflops:>8} {config.num_tokens:>7}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    print(
        f"At {TABLE_RESOLUTION}x{TABLE_RESOLUTION} px with a {TABLE_CLASSES}-class head; "
        "GFLOPs per image, a multiply-add counted as 2:"
    )
    print(format_table(list_models()))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list the registered architectures with parameters and FLOPs"
    )
    parser.set_defaults(run=run, command="models")
