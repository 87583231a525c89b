"""`vitkit shard`: pack one split of an image dataset into shuffled WebDataset tar shards."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitkit.cli.arguments import positive_int
from vitkit.data.arrays import ArrayDataset
from vitkit.data.folder import ImageSource, scan_folder
from vitkit.data.images import load_rgb
from vitkit.data.shards import write_shards
from vitkit.data.sources import open_dataset
from vitkit.errors import DataError


@dataclass(frozen=True)
class LazyImageFolder:
    """One split of an image folder, decoded image by image when `write_shards` asks for it,
    so a folder larger than memory or disk cache can be sharded."""

    source: ImageSource

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def __len__(self) -> int:
        return len(self.source.entries)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.source.entries[index]
        return np.asarray(load_rgb(path)), label


def open_for_sharding(source: str, split: str) -> LazyImageFolder | ArrayDataset:
    """An image folder, read lazily; anything else `open_dataset` reads (CIFAR by name or
    release, .tar/.tar.gz of an image tree) through its decoded array."""
    path = Path(source)
    if path.is_dir() and (path / split).is_dir():
        return LazyImageFolder(scan_folder(path, split))
    dataset = open_dataset(source, split=split)
    if not isinstance(dataset, ArrayDataset):
        raise DataError(f"{source}: is already sharded")
    return dataset


def run(args: argparse.Namespace) -> int:
    dataset = open_for_sharding(args.source, args.split)
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
    parser.add_argument("--seed", type=int, required=True, help="seed of the global shuffle")
    parser.add_argument("--split", default="train", help="sub-folder of SOURCE (default: train)")
    parser.add_argument(
        "--format",
        choices=("png", "jpg"),
        default="png",
        help="image encoding: png is lossless, jpg (quality 95) smaller (default: png)",
    )
    parser.set_defaults(run=run, command="shard")
