"""`vitkit shard`: pack one split of an image dataset into shuffled WebDataset tar shards."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitkit.data.images import DataError, list_images, load_rgb
from vitkit.data.shards import write_shards


@dataclass(frozen=True)
class ImageFolderSplit:
    """`root/<split>/<class>/**/image` as (H, W, 3) uint8 images and labels, decoded on access.

    Random access like `ArrayDataset`, so `write_shards` can shuffle by index without decoding
    the whole split into memory first.
    """

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return np.asarray(load_rgb(self.paths[index])), self.labels[index]


def image_folder_split(root: Path, split: str) -> ImageFolderSplit:
    """The images of `root/split`, labelled by their class folder, classes sorted by name."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected {root}/<split>/<class>/<images>)")
    class_folders = sorted(path for path in folder.iterdir() if path.is_dir())
    if not class_folders:
        raise DataError(f"{folder}: no class folders in it")
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_folder in enumerate(class_folders):
        images = list_images(class_folder)
        paths.extend(images)
        labels.extend([label] * len(images))
    classes = tuple(path.name for path in class_folders)
    return ImageFolderSplit(paths=tuple(paths), labels=tuple(labels), classes=classes)


def run(args: argparse.Namespace) -> int:
    dataset = image_folder_split(args.source, args.split)
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shard",
        help="pack an image folder split into shuffled WebDataset tar shards with an index",
        description="Reads SOURCE/<split>/<class>/<images>, shuffles the whole split with "
        "--seed and writes OUT_DIR/shard-000000.tar, ... and OUT_DIR/index.json.",
    )
    parser.add_argument("source", type=Path, metavar="SOURCE", help="image folder tree root")
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
