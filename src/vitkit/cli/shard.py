"""`vitkit shard`: pack one split of an image dataset into shuffled WebDataset tar shards."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from vitkit.cli.arguments import int_between, positive_int
from vitkit.data.shards import write_shards
from vitkit.data.sources import open_image_by_image


def run(args: argparse.Namespace) -> int:
    dataset = open_image_by_image(args.source, args.split)
    index = write_shards(
        dataset,
        args.out_dir,
        classes=dataset.classes,
        shard_size=args.shard_size,
        seed=args.seed,
        image_format=args.format,
        progress=True,
    )
    shards = math.ceil(len(dataset) / args.shard_size)
    print(f"{len(dataset)} images of {len(dataset.classes)} classes in {shards} shards; {index}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shard",
        help="pack a dataset split into shuffled WebDataset tar shards with an index",
        description="Reads one split of SOURCE (an image folder SOURCE/<split>/<class>/<images>, "
        "a .tar/.tar.gz of one, or cifar10/cifar100), shuffles it with --seed and writes "
        "OUT_DIR/shard-000000.tar, ... and OUT_DIR/index.json.",
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="image folder, archive of one, or a dataset name"
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new folder for shards")
    parser.add_argument("--shard-size", type=positive_int, required=True, help="images per shard")
    parser.add_argument(
        "--seed", type=int_between(0, 2**32 - 1), required=True, help="seed of the global shuffle"
    )
    parser.add_argument("--split", default="train", help="sub-folder of SOURCE (default: train)")
    parser.add_argument(
        "--format",
        choices=("png", "jpg"),
        default="png",
        help="image encoding: png is lossless, jpg (quality 95) smaller (default: png)",
    )
    parser.set_defaults(run=run, command="shard")
