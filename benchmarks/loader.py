"""Images per second delivered for training: vitkit's cached path against a plain torchvision
ImageFolder + DataLoader, on the shared CIFAR-10 JPEG tarball, in the same run.

Both paths produce the same thing: batches of normalised float images at 32x32 with an Inception
crop and a horizontal flip, and their labels.
- plain: the tarball's train split extracted to a folder (not timed), torchvision's ImageFolder
  with RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, DataLoader with workers.
- vitkit: `open_dataset(tarball)` (decoded once into the memory-mapped cache; the build is timed
  separately), `ArrayLoader` + `TrainAugment` on uint8 batches in the main process.

    .venv/bin/python benchmarks/loader.py [--tarball PATH] [--images 20000] [--workers 2]

Appends a dated section to benchmarks/RESULTS.md (use --no-write to only print).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import torch
from results import append_to_results
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from vitkit.data import ArrayLoader, AugmentConfig, TrainAugment
from vitkit.data.sources import open_dataset

ROOT = Path(__file__).resolve().parents[1]
MEAN = STD = (0.5, 0.5, 0.5)


def images_per_second(batches: Iterable, count: int) -> float:
    """Consume batches until `count` images have passed; the first batch (start-up) is excluded
    from the clock, as a training run amortises it."""
    iterator = iter(batches)
    first = next(iterator)
    seen, start = 0, time.perf_counter()
    for batch in iterator:
        seen += len(batch[1])
        if seen >= count:
            break
    del first
    return seen / (time.perf_counter() - start)


def extract_split(tarball: Path, split: str, out: Path) -> Path:
    with tarfile.open(tarball) as archive:
        members = [m for m in archive.getmembers() if m.name.split("/")[0] == split]
        archive.extractall(out, members=members, filter="data")
    return out / split


def plain_batches(folder: Path, batch_size: int, workers: int) -> DataLoader:
    transform = T.Compose(
        [
            T.RandomResizedCrop(32, antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0,
    )  # fmt: skip


def vitkit_batches(dataset, batch_size: int):
    loader = ArrayLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    augment = TrainAugment(AugmentConfig(resolution=(32, 32), num_classes=len(dataset.classes)))
    epoch, step = 0, 0
    while True:
        loader.set_epoch(epoch)
        for images, labels in loader:
            yield augment(images, labels, key=(0, step))
            step += 1
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tarball", type=Path, default=ROOT.parent / "shared/data/cifar10-jpg.tar.gz"
    )
    parser.add_argument("--images", type=int, default=20_000, help="images timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = Path(scratch) / "cache"
        start = time.perf_counter()
        dataset = open_dataset(args.tarball, split="train", cache_dir=cache_dir)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        open_dataset(args.tarball, split="train", cache_dir=cache_dir)
        reopen_s = time.perf_counter() - start
        folder = extract_split(args.tarball, "train", Path(scratch) / "extracted")

        plain, cached = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine state
            plain.append(
                images_per_second(plain_batches(folder, args.batch_size, args.workers), args.images)
            )
            cached.append(images_per_second(vitkit_batches(dataset, args.batch_size), args.images))
            print(f"plain {plain[-1]:8.0f} img/s   vitkit cached {cached[-1]:8.0f} img/s")
        shutil.rmtree(folder)

    plain_median, cached_median = statistics.median(plain), statistics.median(cached)
    lines = [
        f"## Input pipeline, {date.today().isoformat()}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}. Command: `.venv/bin/python {' '.join(sys.argv)}`. "
        f"CIFAR-10 train split ({len(dataset)} JPEGs) from `{args.tarball.name}`, batches of "
        f"{args.batch_size}, Inception crop + flip to 32x32, normalised float; median of "
        f"{args.repeats} interleaved repeats of {args.images} images.",
        "",
        "| path | images/s (median) | all repeats |",
        "| --- | ---: | --- |",
        f"| torchvision ImageFolder + DataLoader ({args.workers} workers) | {plain_median:,.0f} | "
        + ", ".join(f"{value:,.0f}" for value in plain)
        + " |",
        f"| vitkit cache + ArrayLoader + batched augmentation (main process) | "
        f"{cached_median:,.0f} | " + ", ".join(f"{value:,.0f}" for value in cached) + " |",
        "",
        f"Ratio vitkit / plain: **{cached_median / plain_median:.1f}x**. One-time cache build "
        f"(decode all {len(dataset)} JPEGs from the tarball): {build_s:.1f} s; reopening the "
        f"cache (checksum verified): {reopen_s:.2f} s.",
        "",
    ]
    print("\n".join(lines))
    if not args.no_write:
        append_to_results("\n".join(lines))


if __name__ == "__main__":
    main()
