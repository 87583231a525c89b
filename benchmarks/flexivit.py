"""FlexiViT on CIFAR-10: one model trained with a patch size drawn per step, evaluated at each
patch size, against models trained at one patch size each for the same number of steps.

Every run is `vitkit train --preset demo-pretrain` at 32 px with the demo's transformer without
its ResNet root (ViT-CIFAR/4, width 128, 6 blocks) for --steps steps; `--model R+ViT-CIFAR/4
--patch-sizes 1 2 4` runs the demo's hybrid itself, its patches cut from the root's stride-4
map. The flexible run keeps the largest patch size as its own (FlexiViT's underlying kernel is
its largest) and draws from --patch-sizes; each fixed run trains at one of them. Each model is
then evaluated on the test set at every patch size it was trained for (the flexible one through
`load_model(..., patch_size=P)`), timing the evaluation: a speed/accuracy curve per patch size.

    .venv/bin/python benchmarks/flexivit.py --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitkit.data.arrays import ArrayDataset
from vitkit.data.sources import open_dataset
from vitkit.devices import describe_machine
from vitkit.evaluation.accuracy import top1_accuracy
from vitkit.weights import load_model


def train(out: Path, data: str, model: str, steps: int, *fields: str) -> None:
    """One fixed-step `vitkit train` run of the demo's pre-training recipe at 32 px."""
    command = [sys.executable, "-m", "vitkit.cli.main", "train", "--preset", "demo-pretrain",
               "--data", data, "--out", str(out), f"model={model}", "resolution=32",
               "budget_seconds=0", f"steps={steps}", "test_split=", *fields]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def evaluate(run: Path, patch_size: int, test: ArrayDataset) -> tuple[float, float, int]:
    """(top-1, test images per second, patch tokens per image) of the run's model at
    `patch_size` (a hybrid's patches are cut from its ResNet's feature map)."""
    model = load_model(run, patch_size=patch_size)
    start = time.perf_counter()
    accuracy = top1_accuracy(model, test, preprocessing=model.preprocessing)
    height, width = model.config.grid_size
    return accuracy, len(test) / (time.perf_counter() - start), height * width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--model", default="ViT-CIFAR/4")
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = sorted(args.patch_sizes)
    test = open_dataset(args.data, split="test")
    print(f"{args.model}, {args.steps} steps per run, seed {args.seed}; {describe_machine()}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        seed = f"seed={args.seed}"
        started = time.perf_counter()
        choices = ",".join(map(str, sizes))
        train(root / "flexible", args.data, args.model, args.steps, seed,
              f"model_fields=patch_size={sizes[-1]}", f"patch_sizes={choices}")  # fmt: skip
        print(f"flexible run: {time.perf_counter() - started:.0f} s", flush=True)
        print(
            "| patch size | tokens | flexible top-1 | fixed top-1 | eval img/s | fixed run's time |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for size in sizes:
            started = time.perf_counter()
            train(root / f"fixed{size}", args.data, args.model, args.steps, seed,
                  f"model_fields=patch_size={size}")  # fmt: skip
            seconds = time.perf_counter() - started
            flexible, speed, tokens = evaluate(root / "flexible", size, test)
            fixed, _, _ = evaluate(root / f"fixed{size}", size, test)
            print(f"| {size} | {tokens} | {flexible:.2%} | {fixed:.2%} | {speed:.0f} | "
                  f"{seconds:.0f} s |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
