"""One training step of the demo's pre-training with AdamW, vitkit's Muon and PyTorch's Muon.

PyTorch's `torch.optim.Muon` runs its Newton-Schulz iteration in bf16; vitkit's (training/muon.py)
does so only where bf16 is native, fp32 elsewhere. `--avx2` measures as a CPU without native bf16
would: it restarts itself with oneDNN, MKL and ATen limited to AVX2
(ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2), so vitkit finds
bf16 not native. That restricts the instruction set, not the clock.

Each variant: the demo-pretrain step (batch 128, 16 px, R+ViT-CIFAR/4) on one fixed random batch,
3 warm-up steps, then --repeats interleaved rounds of --steps timed steps; median ms per step.

    .venv/bin/python benchmarks/optimizer_step.py [--avx2] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from pipeline import machine
from results import append_to_results

from vitkit import devices
from vitkit.training import build
from vitkit.training.distributed import World
from vitkit.training.presets import get_preset
from vitkit.training.run_dir import RunDir

AVX2_ONLY = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}
VARIANTS = {  # name -> (optimizer field, lr, use PyTorch's Muon for the matrices)
    "AdamW (lr 1e-3)": ("adamw", 1e-3, False),
    "Muon, vitkit's (lr 4e-3)": ("muon", 4e-3, False),
    "Muon, PyTorch's (lr 4e-3)": ("muon", 4e-3, True),
}


def make_step(optimizer: str, lr: float, pytorch_muon: bool):
    """A zero-argument function running one training step of the variant."""
    cpu, world = torch.device("cpu"), World()
    config = dataclasses.replace(get_preset("demo-pretrain"), optimizer=optimizer, lr=lr)
    model = build.new_model(config, num_classes=10, device=cpu)
    state = build.build_state(config, model, precision="fp32", device=cpu, world=world)
    if pytorch_muon:
        matrices = [p for group in state.optimizer.muon.param_groups for p in group["params"]]
        state.optimizer.muon = torch.optim.Muon(
            matrices, lr=lr, weight_decay=config.weight_decay, adjust_lr_fn="match_rms_adamw"
        )
    augment = build.build_augment(config, model, num_classes=10)
    step = build.build_step(config, augment, precision="fp32", device=cpu, world=world,
                            run_dir=RunDir(tempfile.gettempdir()))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), dtype=torch.uint8,
                           generator=generator)  # fmt: skip
    labels = torch.arange(config.batch_size) % 10
    return lambda: step(state, images, labels, lr=lr)


def measure(steps: int, repeats: int) -> dict[str, list[float]]:
    runs = {name: make_step(*variant) for name, variant in VARIANTS.items()}
    for run in runs.values():
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--avx2", action="store_true", help="as a CPU without native bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    if args.avx2 and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        completed = subprocess.run([sys.executable, *sys.argv], env={**os.environ, **AVX2_ONLY})
        sys.exit(completed.returncode)
    torch.set_num_threads(os.cpu_count() or 1)
    times = measure(args.steps, args.repeats)
    flags = "AVX2 only (--avx2)" if args.avx2 else "native"
    bf16 = devices.native_bf16(torch.device("cpu")) or "no native bf16"
    lines = [
        f"## Optimizer step, {flags}, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}, {bf16}. Command: "
        f"`.venv/bin/python benchmarks/optimizer_step.py{' --avx2' if args.avx2 else ''} "
        f"--steps {args.steps} --repeats {args.repeats}`. Demo pre-training step, batch 128.",
        "",
        "| optimizer | ms per step (median) | all rounds |",
        "| --- | ---: | --- |",
        *(f"| {name} | {statistics.median(values):.1f} | "
          f"{', '.join(f'{v:.1f}' for v in values)} |" for name, values in times.items()),
    ]  # fmt: skip
    table = "\n".join(lines)
    print(table)
    if args.write:
        append_to_results(table)


if __name__ == "__main__":
    main()
