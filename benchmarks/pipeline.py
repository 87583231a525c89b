"""The whole training pipeline, vitkit against the one a timm user runs: images/s end to end.

Both train the demo's pre-training model (R+ViT-CIFAR/4 at 16 px, batch 128, AdamW lr 1e-3 and
weight decay 0.05, gradient clipping at 1, label smoothing 0.1, whole images resized and flipped)
on the CIFAR-10 training split of the shared tarball:

- vitkit: the decode-once cache, ArrayLoader, the batched augmentation and vitkit's TrainStep,
  the parts `vitkit train` runs (training/build.py).
- a timm user: the tarball extracted once to a folder, torchvision ImageFolder with
  Resize + RandomHorizontalFlip + ToTensor + Normalize, a DataLoader with worker processes, the
  same architecture built by `timm.create_model`, `timm.optim.create_optimizer_v2`, the same
  loss and clipping.

The two run interleaved in one process, in blocks of --steps optimizer steps, --repeats blocks
each after one warm-up block; each step's time is split into waiting for the batch (data) and
the rest (augmentation where it runs in the main process, forward, backward, optimizer).

    .venv/bin/python benchmarks/pipeline.py                 # the table, printed
    .venv/bin/python benchmarks/pipeline.py --write         # and appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import timm.optim
import torch
import torch.nn.functional as F
from results import append_to_results
from speed import timm_twin
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from vitkit.training import build
from vitkit.training.distributed import World
from vitkit.training.optim import clip_gradients
from vitkit.training.presets import get_preset
from vitkit.training.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def vitkit_steps(data: Path, device: torch.device) -> Iterator[tuple[float, float]]:
    """(data seconds, step seconds) of each step of vitkit's own training pipeline."""
    config = dataclasses.replace(get_preset("demo-pretrain"), data=str(data), device=device.type)
    train_set = build.open_train(config)
    world = World()
    model = build.new_model(config, num_classes=len(train_set.classes), device=device)
    state = build.build_state(config, model, precision="fp32", device=device, world=world)
    augment = build.build_augment(config, model, num_classes=len(train_set.classes))
    with tempfile.TemporaryDirectory() as folder:
        step = build.build_step(config, augment, precision="fp32", device=device, world=world,
                                run_dir=RunDir(folder))  # fmt: skip
    loader = build.build_loader(config, train_set, world)

    def epoch(number: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader.set_epoch(number)
        return iter(loader)

    return timed_steps(epoch, lambda images, labels: step(state, images, labels, lr=config.lr))


def timm_user_steps(
    folder: Path, device: torch.device, workers: int
) -> Iterator[tuple[float, float]]:
    """(data seconds, step seconds) of each step of the pipeline a timm user writes."""
    config = get_preset("demo-pretrain")
    transform = T.Compose([
        T.Resize(config.resolution, antialias=True), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize((0.5,) * 3, (0.5,) * 3),
    ])  # fmt: skip
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
    model = timm_twin(config.model, config.resolution).to(device).train()
    optimizer = timm.optim.create_optimizer_v2(
        model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay
    )

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
        loss.backward()
        clip_gradients(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed_steps(lambda number: iter(loader), step)


def timed_steps(
    epoch: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    step: Callable[[torch.Tensor, torch.Tensor], None],
) -> Iterator[tuple[float, float]]:
    """(seconds waiting for the batch, seconds of the rest of the step) of each step, over the
    batches of epochs 0, 1, 2, ..."""
    number = 0
    while True:
        batches = epoch(number)
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            fetched = time.perf_counter()
            step(*batch)
            yield fetched - started, time.perf_counter() - fetched
        number += 1


def time_block(steps: Iterator[tuple[float, float]], count: int) -> tuple[float, float, float]:
    """(wall seconds, data seconds, step seconds) of the next `count` steps."""
    started = time.perf_counter()
    data = compute = 0.0
    for _ in range(count):
        waited, stepped = next(steps)
        data, compute = data + waited, compute + stepped
    return time.perf_counter() - started, data, compute


def extract_split(tarball: Path, out: Path, split: str = "train") -> Path:
    """The tarball's `split` folder (train/ or test/), extracted once (what a torchvision user
    starts from)."""
    if not (out / split).is_dir():
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.split("/")[0] == split]
            archive.extractall(out, members=members, filter="data")
    return out / split


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if "Model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=TARBALL)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="the timm user's loader workers")
    parser.add_argument("--extract-to", type=Path, default=Path(tempfile.gettempdir()) / "cifar10")
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = get_preset("demo-pretrain").batch_size

    folder = extract_split(args.data, args.extract_to)
    pipelines: dict[str, Iterator[tuple[float, float]]] = {
        "vitkit (cache + ArrayLoader + batched augmentation + TrainStep)": vitkit_steps(
            args.data, device
        ),
        f"timm user (ImageFolder + DataLoader, {args.workers} workers + timm model and "
        "optimizer)": timm_user_steps(folder, device, args.workers),
    }
    blocks: dict[str, list[tuple[float, float, float]]] = {name: [] for name in pipelines}
    for repeat in range(args.repeats + 1):
        for name, steps in pipelines.items():
            timed = time_block(steps, args.steps)
            if repeat:  # the first block warms up: workers, allocations, first epoch's shuffle
                blocks[name].append(timed)
    table = format_table(blocks, args, batch, device)
    print(table)
    if args.write:
        append_to_results(table)


def format_table(
    blocks: dict[str, list[tuple[float, float, float]]],
    args: argparse.Namespace,
    batch: int,
    device: torch.device,
) -> str:
    def rate(block: tuple[float, float, float]) -> float:
        return args.steps * batch / block[0]

    lines = [
        f"## Training pipeline end to end, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}, device {device}. Command: `.venv/bin/python benchmarks/"
        f"pipeline.py --steps {args.steps} --repeats {args.repeats} --workers {args.workers}`. "
        f"The demo's pre-training (R+ViT-CIFAR/4, 16 px, batch {batch}); median of "
        f"{args.repeats} interleaved blocks of {args.steps} steps after a warm-up block.",
        "",
        "| pipeline | images/s (median) | all blocks | data wait | rest of the step |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    medians = {}
    for name, timed in blocks.items():
        medians[name] = statistics.median(map(rate, timed))
        wall = sum(b[0] for b in timed)
        data, step = sum(b[1] for b in timed) / wall, sum(b[2] for b in timed) / wall
        lines.append(
            f"| {name} | {medians[name]:,.0f} | {', '.join(f'{rate(b):,.0f}' for b in timed)} "
            f"| {data:.0%} | {step:.0%} |"
        )
    ours, theirs = medians.values()
    lines += ["", f"Ratio vitkit / timm user: **{ours / theirs:.2f}x**."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
