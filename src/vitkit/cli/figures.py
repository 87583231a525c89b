"""`vitkit figures --checkpoint CKPT --data PATH --out DIR`: the paper's inspection figures.

Writes DIR/embedding_filters.png, position_similarity.png, attention_distance.png (+ .json),
attention_rollout.png, attention_heads.png and index.html, which shows them on one page. The mean
attention distance averages over --images test images; the first --shown get attention maps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitkit.analysis.report import figures_for_dataset
from vitkit.cli.arguments import (
    add_model_arguments,
    add_skip_bad_argument,
    int_between,
    load_for_inference,
    positive_int,
)
from vitkit.data.sources import open_for_model


def run(args: argparse.Namespace) -> int:
    model, preprocessing = load_for_inference(args.checkpoint, args)
    dataset = open_for_model(args.data, args.split, preprocessing, skip_bad=args.skip_bad)
    figures = figures_for_dataset(
        model,
        preprocessing,
        dataset,
        args.out,
        images=args.images,
        shown=args.shown,
        label=f"{args.checkpoint} on {args.data} ({args.split})",
    )
    for path in figures.values():
        print(path)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "figures",
        help="the paper's inspection figures as PNGs and an index.html",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="anything load_model takes")
    parser.add_argument("--data", required=True, help="dataset path or name (images to look at)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=positive_int, default=128, help="images averaged over")
    parser.add_argument(
        "--shown", type=int_between(1, 64), default=8, help="images with attention maps (1-64)"
    )
    add_skip_bad_argument(parser)
    add_model_arguments(parser)
    parser.set_defaults(run=run, command="figures")
