"""Time to accuracy: vitkit's demo recipe against the recipe a timm user writes, on one machine.

Every arm trains on the CIFAR-10 training split of the shared tarball, on the same machine, one
after another, and every model is scored by the same test-time pipeline on the 10,000 test images
(this script's `score`: the 32 px images resized to the model's resolution, normalised as the
model was trained, logits averaged with the mirror image's; single-view top-1 is recorded too).

- **vitkit**: the demo's recipe (`vitkit demo` without its 16 px comparison stage): pre-training
  at 16 px, then fine-tuning at 32 px, the time split 3:1 as the demo splits it, each stage an
  ordinary `vitkit train` run (`report=false`: no figures). It is run for several budgets
  (--fractions of --budget; 0.8 is the demo's own two stages, which get 0.6 and 0.2 of its
  budget), since a budgeted recipe's time to an accuracy is the budget of the shortest run that
  reaches it. Its seconds are wall seconds of both stages, including their
  model building, data loading and their own end-of-stage evaluations.
- **timm user**: the public recipe of omihub777/ViT-CIFAR (over 90% on CIFAR-10 from scratch in
  200 epochs: Adam lr 1e-3 and weight decay 5e-5, 5 warm-up epochs then cosine decay to 1e-5,
  batch 128, label smoothing 0.1, AutoAugment's CIFAR-10 policy after a 4 px padded random crop
  and a flip, CIFAR's mean and std), written with timm and torchvision: `timm.create_model`,
  `timm.optim.create_optimizer_v2`, `timm.scheduler.CosineLRScheduler`, torchvision's ImageFolder,
  transforms and a DataLoader with --workers worker processes over the extracted tarball. The
  schedule is fitted to the budget (warm-up 2.5% of it, as 5 of 200 epochs), which a user could
  only guess; so this arm is the recipe at its best length. Two architectures: `vit-cifar`, the
  recipe's own (7 blocks of width 384, 12 heads, MLP 384, 8x8 patches at 32 px) as a timm
  VisionTransformer, and `same`, the demo's R+ViT-CIFAR/4 as timm builds it, both at 32 px. Each
  is scored at --marks evenly spaced times; the clock stops while it is scored.

One-time preparations are left out of both clocks: extracting the tarball for the timm user,
decoding it into vitkit's cache. Accuracy between measured times is interpolated linearly, which
for rising, flattening curves errs towards more time; nothing is assumed before a curve's first
measured point (when vitkit's shortest run already reaches an accuracy, its time is an upper
bound). The record (--out/record.json) keeps every finished arm, so an interrupted run resumes,
and each run adds to it (`--seeds 0` trains nothing and reports the record); the report covers
every arm and seed in the record. The last line printed is `time ratio: X`: the timm user's time
to its final accuracy over vitkit's time to the same accuracy (with the stronger timm arm, on
the seed-averaged curves).

    .venv/bin/python benchmarks/time_to_accuracy.py --seeds 2 [--write]   # about 75 minutes
    .venv/bin/python benchmarks/time_to_accuracy.py --budget 60 --seeds 1 --fractions 0.8 \\
        --marks 2 --timm-arms vit-cifar --out /tmp/tta-check           # a 4-minute check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import timm
import timm.optim
import timm.scheduler
import torch
import torch.nn.functional as F
from pipeline import TARBALL, extract_split
from results import append_to_results
from speed import timm_twin
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from vitkit.cli.demo import DEFAULT_BUDGET_SECONDS
from vitkit.devices import describe_machine
from vitkit.io import atomic_write_json
from vitkit.training.demo import FINETUNE_SHARE, PRETRAIN_SHARE, stage_configs
from vitkit.training.trainer import train
from vitkit.weights import load_model

# omihub777/ViT-CIFAR's recipe (its README's hyperparameter table and its data pipeline).
RECIPE = dict(lr=1e-3, lr_min=1e-5, weight_decay=5e-5, batch_size=128, warmup=5 / 200,
              label_smoothing=0.1)  # fmt: skip
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SCHEDULE_UNITS = 10_000  # the timm scheduler's clock: fractions of the budget, in these units


def vit_cifar() -> nn.Module:
    """omihub777/ViT-CIFAR's architecture as a timm VisionTransformer (6.3M parameters)."""
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32,
                             patch_size=8, embed_dim=384, depth=7, num_heads=12, mlp_ratio=1.0,
                             num_classes=10)  # fmt: skip


TIMM_ARMS: dict[str, Callable[[], nn.Module]] = {
    "vit-cifar": vit_cifar,
    "same": lambda: timm_twin("R+ViT-CIFAR/4", 32),
}


@dataclasses.dataclass(frozen=True)
class TestSet:
    """The test split decoded once: [0, 1] pixels, labels and class names in ImageFolder's order."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def load_test_set(folder: Path) -> TestSet:
    dataset = datasets.ImageFolder(str(folder), transform=T.ToTensor())
    images, labels = zip(*dataset)
    return TestSet(torch.stack(images), torch.tensor(labels), dataset.classes)


def normalised_batches(
    test: TestSet, resolution: int, mean, std, batch: int = 500
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) of the test set in batches, resized to `resolution` and normalised."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for start in range(0, len(test.labels), batch):
        images = test.images[start : start + batch]
        if images.shape[-1] != resolution:
            images = F.interpolate(images, size=(resolution, resolution), mode="bilinear",
                                   antialias=True, align_corners=False)  # fmt: skip
        yield (images - mean) / std, test.labels[start : start + batch]


def score(model: nn.Module, test: TestSet, resolution: int, mean, std,
          columns: list[int] | None = None) -> dict[str, float]:  # fmt: skip
    """Top-1 of `model` on the test set, flip-averaged and single-view, by one pipeline for all
    arms. `columns`: which logit is which of `test.classes` (None: the same order)."""
    model.eval()
    right = right_flipped = 0
    with torch.inference_mode():
        for images, labels in normalised_batches(test, resolution, mean, std):
            logits = model(images)
            both = logits + model(images.flip(-1))
            if columns is not None:
                logits, both = logits[:, columns], both[:, columns]
            right += (logits.argmax(1) == labels).sum().item()
            right_flipped += (both.argmax(1) == labels).sum().item()
    model.train()
    return {"top1": right_flipped / len(test.labels), "top1_single": right / len(test.labels)}


def run_vitkit(data: str, out: Path, budget: float, seed: int, test: TestSet) -> dict:
    """The demo's pre-train -> fine-tune recipe with `budget` seconds of training in all."""
    stages = stage_configs(data, out, budget / (PRETRAIN_SHARE + FINETUNE_SHARE))
    started = time.perf_counter()
    for name in ("pretrain", "finetune"):
        config = dataclasses.replace(stages[name], seed=seed, report=False)
        summary = train(config, out / name)
    seconds = time.perf_counter() - started
    model = load_model(out / "finetune")
    columns = [list(model.class_names).index(name) for name in test.classes]
    prep = model.preprocessing
    scores = score(model, test, prep.resolution[0], prep.mean, prep.std, columns)
    return {"seconds": seconds, **scores, "own_eval_top1": summary.top1}


def run_timm_user(arm: str, folder: Path, budget: float, seed: int, marks: int, workers: int,
                  test: TestSet) -> dict:  # fmt: skip
    """The timm user's recipe for `budget` seconds, scored at `marks` evenly spaced times."""
    torch.manual_seed(seed)
    started, paused = time.perf_counter(), 0.0
    model = TIMM_ARMS[arm]()
    transform = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10), T.ToTensor(),
        T.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])  # fmt: skip
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(dataset, batch_size=RECIPE["batch_size"], shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    optimizer = timm.optim.create_optimizer_v2(model, opt="adam", lr=RECIPE["lr"],
                                               weight_decay=RECIPE["weight_decay"])  # fmt: skip
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer, t_initial=SCHEDULE_UNITS, lr_min=RECIPE["lr_min"],
        warmup_t=round(RECIPE["warmup"] * SCHEDULE_UNITS), warmup_lr_init=RECIPE["lr_min"],
        t_in_epochs=False,
    )  # fmt: skip
    curve, steps, next_mark = [], 0, 1

    def elapsed() -> float:
        return time.perf_counter() - started - paused

    while next_mark <= marks:
        for images, labels in loader:
            scheduler.step_update(min(round(SCHEDULE_UNITS * elapsed() / budget), SCHEDULE_UNITS))
            loss = F.cross_entropy(model(images), labels,
                                   label_smoothing=RECIPE["label_smoothing"])  # fmt: skip
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if elapsed() >= next_mark * budget / marks:
                seconds, scoring = elapsed(), time.perf_counter()
                scores = score(model, test, 32, CIFAR_MEAN, CIFAR_STD)
                curve.append({"seconds": seconds, "steps": steps, **scores})
                print(f"  {arm} seed {seed}: {seconds:.0f} s, {steps} steps, "
                      f"top-1 {scores['top1']:.2%}", flush=True)  # fmt: skip
                paused += time.perf_counter() - scoring
                next_mark += 1
                if next_mark > marks:
                    break
    return {
        "curve": curve,
        "images_per_second": steps * RECIPE["batch_size"] / curve[-1]["seconds"],
    }


def time_to(points: list[tuple[float, float]], accuracy: float) -> float | None:
    """Seconds at which the measured curve `points` (seconds, top-1) first reaches `accuracy`,
    interpolated linearly between measured points; None if it never does. Nothing is assumed
    before the first point: when it already reaches `accuracy`, its seconds are returned (an
    upper bound; `first_point_reaches` says so)."""
    previous = None
    for seconds, top1 in sorted(points):
        if top1 >= accuracy:
            if previous is None or top1 == previous[1]:
                return seconds
            share = (accuracy - previous[1]) / (top1 - previous[1])
            return previous[0] + max(0.0, share) * (seconds - previous[0])
        previous = (seconds, top1)
    return None


def first_point_reaches(points: list[tuple[float, float]], accuracy: float) -> bool:
    return min(points)[1] >= accuracy


def arms_in(record: dict) -> dict[str, list[dict]]:
    """The record's runs grouped by arm ("vitkit@0.8", "timm-vit-cifar", ...), in seed order."""
    arms: dict[str, list[dict]] = {}
    for key in sorted(record):
        arms.setdefault(key.split("/seed")[0], []).append(record[key])
    return arms


def averaged(runs: list[dict]) -> list[tuple[float, float]]:
    """An arm's (seconds, top-1) points averaged over its seeds, point by point."""
    if "curve" not in runs[0]:
        return [(statistics.mean(run["seconds"] for run in runs),
                 statistics.mean(run["top1"] for run in runs))]  # fmt: skip
    return [(statistics.mean(run["curve"][i]["seconds"] for run in runs),
             statistics.mean(run["curve"][i]["top1"] for run in runs))
            for i in range(len(runs[0]["curve"]))]  # fmt: skip


def seed_cell(point: dict) -> str:
    """One seed's top-1; for vitkit also what its own end-of-run evaluation printed."""
    own = f" (its own eval {point['own_eval_top1']:.2%})" if "own_eval_top1" in point else ""
    return f"{point['top1']:.2%}{own}"


def comparison(record: dict, command: str) -> tuple[str, float]:
    """The report (markdown) of every arm in the record, and the time ratio."""
    arms = arms_in(record)
    curves = {arm: averaged(runs) for arm, runs in arms.items()}
    vitkit = sorted(curves[arm][0] for arm in arms if arm.startswith("vitkit"))
    timm_arms = [arm for arm in arms if arm.startswith("timm")]
    best_arm = max(timm_arms, key=lambda arm: curves[arm][-1][1])
    timm_curve = curves[best_arm]
    timm_final, vitkit_final = timm_curve[-1][1], max(top1 for _, top1 in vitkit)
    timm_time = time_to(timm_curve, timm_final)
    vitkit_time = time_to(vitkit, timm_final)
    ratio = timm_time / vitkit_time if vitkit_time else float("nan")
    timm_to_vitkit = time_to(timm_curve, vitkit_final)
    lines = [
        f"## Time to accuracy against a timm user's recipe, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {describe_machine()}. Command: `{command}`. Top-1 on the 10,000 test "
        "images, flip-averaged by one pipeline for every arm (single view in brackets), the mean "
        "of the seeds in the last column.",
        "",
        "| arm | seconds | top-1 | per seed |",
        "| --- | ---: | ---: | --- |",
    ]
    for arm, runs in arms.items():
        for i, (seconds, top1) in enumerate(curves[arm]):
            points = [run["curve"][i] if "curve" in run else run for run in runs]
            single = statistics.mean(point["top1_single"] for point in points)
            per_seed = ", ".join(map(seed_cell, points))
            lines.append(f"| {arm} | {seconds:.0f} | {top1:.2%} ({single:.2%}) | {per_seed} |")
    reached = f"{timm_to_vitkit:.0f} s" if timm_to_vitkit else "not within its budget"
    lines += [
        "",
        f"The stronger timm arm ({best_arm}) ends at {timm_final:.2%}, first reached at "
        f"{timm_time:.0f} s; vitkit's recipe reaches it in "
        + ("at most " if vitkit_time and first_point_reaches(vitkit, timm_final) else "")
        + (f"{vitkit_time:.0f} s" if vitkit_time else "none of its runs")
        + f". vitkit's best ({vitkit_final:.2%}) is reached by the timm user: {reached}.",
        f"time ratio: {ratio:.2f}",
    ]
    return "\n".join(lines), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=TARBALL)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_SECONDS,
                        help="the timm user's training seconds (default: the demo's)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.8, 0.27, 0.09],
                        help="vitkit's budgets, as fractions of --budget")  # fmt: skip
    parser.add_argument("--timm-arms", nargs="+", default=list(TIMM_ARMS), choices=TIMM_ARMS)
    parser.add_argument("--marks", type=int, default=8, help="times the timm user is scored")
    parser.add_argument("--workers", type=int, default=2, help="the timm user's loader workers")
    parser.add_argument("--extract-to", type=Path, default=Path(tempfile.gettempdir()) / "cifar10")
    parser.add_argument("--out", type=Path, default=Path("runs/time_to_accuracy"))
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    train_folder = extract_split(args.data, args.extract_to, "train")
    test = load_test_set(extract_split(args.data, args.extract_to, "test"))
    record_path = args.out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    warm_vitkit_cache(str(args.data), args.out / "warm-up")
    for seed in seeds:
        for fraction in args.fractions:
            key = f"vitkit@{fraction:g}/seed{seed}"
            if key not in record:
                print(f"== {key}", flush=True)
                shutil.rmtree(args.out / key, ignore_errors=True)  # a stopped run's clock is lost
                record[key] = run_vitkit(str(args.data), args.out / key, fraction * args.budget,
                                         seed, test)  # fmt: skip
                atomic_write_json(record_path, record)
        for arm in args.timm_arms:
            key = f"timm-{arm}/seed{seed}"
            if key not in record:
                print(f"== {key}", flush=True)
                record[key] = run_timm_user(arm, train_folder, args.budget, seed, args.marks,
                                            args.workers, test)  # fmt: skip
                atomic_write_json(record_path, record)
    report, _ = comparison(record, "python " + " ".join(sys.argv))
    if args.write:
        append_to_results(report)
    print("\n" + report)


def warm_vitkit_cache(data: str, out: Path) -> None:
    """Two steps of each stage, so that vitkit's decoded-image cache is built before any clock
    starts (the timm user's extraction is outside its clock too). The runs are thrown away: a
    warm-up left by an earlier invocation is removed, not resumed."""
    shutil.rmtree(out, ignore_errors=True)
    for name, config in stage_configs(data, out, 1.0).items():
        if name != "finetune_at_pretrain_res":
            train(dataclasses.replace(config, budget_seconds=0.0, steps=2, report=False),
                  out / name)  # fmt: skip


if __name__ == "__main__":
    main()
