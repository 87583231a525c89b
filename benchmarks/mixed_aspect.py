"""Training on images of mixed aspect ratios: square batches against NaViT packing.

CIFAR-10's images are square, so this makes a dataset that is not: each image of a class-balanced
share of CIFAR-10 is cut to one of SHAPES (wide, tall or square windows of the 32x32 image, at a
seeded random position) and written as PNG into an image folder. Two runs then train the plain
ViT-CIFAR/4 for --steps steps with the demo's pre-training recipe (no crop):

- square: `data_size=32`: every image resized to cover 32x32 and centre-cropped (what a square
  pipeline does: a 16x32 image loses half its width), trained at 32 px;
- packed: `data_size=32 max_tokens=64`: every image whole at its own aspect ratio, resized to at
  most 64 patches of 4 px, packed.

Each run's top-1 is measured both ways on the test split: the square pipeline (the runs' own
evaluation, images centre-cropped) and `vitkit eval --max-tokens 64` (whole images at their own
aspect ratio, packed); --seeds training seeds each (the dataset stays the same), then the mean
and the standard deviation over them.

    .venv/bin/python benchmarks/mixed_aspect.py --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.data import open_dataset
from vitkit.data.fewshot import k_shot_indices
from vitkit.devices import describe_machine

# (H, W) windows of a 32x32 image: square, wide and tall, equally often.
SHAPES = [(32, 32), (16, 32), (32, 16), (24, 32), (32, 24)]


def write_mixed_folder(data: str, root: Path, *, per_class: dict[str, int]) -> None:
    """root/<split>/<class>/<n>.png: `per_class[split]` images per class of CIFAR-10's split,
    each cut to a shape of SHAPES at a random position (seeded)."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        dataset = open_dataset(data, split=split)
        chosen = k_shot_indices(dataset.labels, count, seed=0, num_classes=len(dataset.classes))
        for number, index in enumerate(chosen):
            height, width = SHAPES[rng.integers(len(SHAPES))]
            top, left = rng.integers(0, 33 - height), rng.integers(0, 33 - width)
            window = dataset.images[index][top : top + height, left : left + width]
            folder = root / split / dataset.classes[dataset.labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(window)).save(folder / f"{number}.png")


def vitkit(*arguments: str) -> float:
    """Run `vitkit ARGUMENTS` in a fresh process; its seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitkit.cli.main", *arguments], check=True,
                   capture_output=True, text=True)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per run")
    args = parser.parse_args()
    print(describe_machine())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = root / "mixed"
        write_mixed_folder(
            args.data, data, per_class={"train": args.train_per_class, "test": args.test_per_class}
        )
        print(f"\n{args.train_per_class * 10} training and {args.test_per_class * 10} test "
              f"images of shapes {SHAPES}, {args.steps} steps\n")  # fmt: skip
        print("| run | seed | training time | top-1, square test pipeline | top-1, packed eval |")
        print("| --- | ---: | ---: | ---: | ---: |")
        results: dict[str, list[tuple[float, float, float]]] = {}
        for name, fields in (("square", []), ("packed", ["max_tokens=64"])):
            label = f"{name} ({' '.join(['data_size=32', *fields])})"
            for seed in range(args.seeds):
                out = root / f"{name}-{seed}"
                vitkit("train", "--preset", "demo-pretrain", "--data", str(data), "--out",
                       str(out), "model=ViT-CIFAR/4", "resolution=32", "data_size=32",
                       "budget_seconds=0", f"steps={args.steps}", "eval_flip=false",
                       f"seed={seed}", *fields)  # fmt: skip
                summary = json.loads((out / "summary.json").read_text())
                vitkit("eval", "--checkpoint", str(out), "--data", str(data), "--out",
                       str(out / "packed-eval"), "--max-tokens", "64")  # fmt: skip
                packed = json.loads((out / "packed-eval" / "eval.json").read_text())["top1"]
                results.setdefault(label, []).append((summary["seconds"], summary["top1"], packed))
                print(f"| {label} | {seed} | {summary['seconds']:.1f} s | {summary['top1']:.2%} "
                      f"| {packed:.2%} |", flush=True)  # fmt: skip
        print("\n| run | training time | top-1, square test pipeline | top-1, packed eval |")
        print("| --- | ---: | ---: | ---: |")
        for label, rows in results.items():
            seconds, square, packed = (np.array(column) for column in zip(*rows))
            print(f"| {label} | {seconds.mean():.1f} s | {100 * square.mean():.2f} ± "
                  f"{100 * square.std(ddof=1) if len(rows) > 1 else 0:.2f} | "
                  f"{100 * packed.mean():.2f} ± "
                  f"{100 * packed.std(ddof=1) if len(rows) > 1 else 0:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
