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
and the standard deviation over them. The folder, the runs, their record and report.html stay in
--out, and the same command resumes.

    .venv/bin/python benchmarks/mixed_aspect.py --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from results import Benchmark, Summary, benchmark_arguments

from vitkit.cli.main import main as vitkit
from vitkit.data import open_dataset
from vitkit.data.fewshot import k_shot_indices
from vitkit.experiments.engine import Outcome, Request, Seed
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.statistics import Spread
from vitkit.training.config import parse_overrides
from vitkit.training.presets import get_preset

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


ARMS = {"square": [], "packed": ["max_tokens=64"]}  # fields beyond data_size=32


def arm_runs(arm: str, seed: int, request: Request, record: ExperimentRecord) -> list:
    """The arm's one run: ViT-CIFAR/4 at 32 px with the demo's pre-training recipe, no crop."""
    fields = [
        "model=ViT-CIFAR/4",
        "resolution=32",
        "data_size=32",
        "budget_seconds=0",
        f"steps={record.content['settings']['steps']}",
        "eval_flip=false",
        *ARMS[arm],
    ]
    base = dataclasses.replace(get_preset("demo-pretrain"), data=request.data, seed=seed)
    return [(arm, parse_overrides(base, fields))]  # fmt: skip


def measure_packed(record: ExperimentRecord, seed: Seed) -> None:
    """Each run's top-1 from `vitkit eval --max-tokens 64`: whole images, packed."""
    for keys in seed.keys.values():
        run = record.run_folder(keys[-1])

        def packed_top1(run: Path = run) -> float:
            out = run / "packed-eval"
            command = ["eval", "--checkpoint", str(run), "--data", seed.request.data,
                       "--out", str(out), "--max-tokens", "64"]  # fmt: skip
            if vitkit(command) != 0:
                raise SystemExit(f"vitkit {' '.join(command)} failed")
            return json.loads((out / "eval.json").read_text())["top1"]

        record.measured(keys[-1], "packed_top1", packed_top1)


def summarise(record: ExperimentRecord, outcome: Outcome) -> Summary:
    """Per run its time and both top-1s; per arm their means and standard deviations."""
    settings = record.content["settings"]
    rows, means = [], []
    for arm, values in outcome.top1.items():
        label = f"{arm} ({' '.join(['data_size=32', *ARMS[arm]])})"
        runs = [record.runs[f"seed{seed}/{arm}"] for seed in settings["seeds"]]
        packed = [run["measured"]["packed_top1"] for run in runs]
        for seed, run, square_top1, packed_top1 in zip(settings["seeds"], runs, values, packed,
                                                       strict=True):  # fmt: skip
            rows.append([label, str(seed), f"{run['seconds']:.1f} s", f"{square_top1:.2%}",
                         f"{packed_top1:.2%}"])  # fmt: skip
        means.append(f"{label}: {Spread.of(values).percent()} with the square test pipeline, "
                     f"{Spread.of(packed).percent()} packed.")  # fmt: skip
    return Summary(
        "Mixed aspect ratios: square batches against NaViT packing (fixed steps)",
        [
            f"{settings['train_per_class'] * 10} training and {settings['test_per_class'] * 10} "
            f"test images of shapes {SHAPES}, {settings['steps']} steps."
        ],  # fmt: skip
        ["run", "seed", "training time", "top-1, square test pipeline", "top-1, packed eval"],
        rows,
        means,
    )


BENCHMARK = Benchmark.of(
    "mixed-aspect",
    "Mixed aspect ratios: square batches against NaViT packing",
    arms=tuple(ARMS),
    runs=arm_runs,
    summarise=summarise,
    layout="runs/seedN/ARM",
    own_fields=("max_tokens", "data_size", "resolution"),
    measure=measure_packed,
    data_size=32,
)


def main() -> None:
    parser = benchmark_arguments(__doc__.split("\n\n")[0], out="mixed_aspect", seeds=[0, 1, 2])
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    sizes = {"train": args.train_per_class, "test": args.test_per_class}
    folder = args.out / f"mixed-{args.train_per_class}-{args.test_per_class}"
    if not folder.is_dir():  # written beside, then renamed: a stopped write is not taken as done
        shutil.rmtree(folder.with_suffix(".partial"), ignore_errors=True)
        write_mixed_folder(args.data, folder.with_suffix(".partial"), per_class=sizes)
        folder.with_suffix(".partial").rename(folder)
    settings = {"steps": args.steps, "train_per_class": args.train_per_class,
                "test_per_class": args.test_per_class}  # fmt: skip
    BENCHMARK.run(args, settings, data=str(folder))


if __name__ == "__main__":
    main()
