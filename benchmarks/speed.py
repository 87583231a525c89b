"""vitkit against timm, side by side: inference and training speed, peak memory, and the share of
the machine's own matmul peak that each reaches.

Every row builds a timm model and the vitkit model of the same architecture with the same weights
(vitkit reads the timm model's state dict; the logits are checked equal first), then times both
in the same process, interleaved, several repeats (median, min-max). Training is a full step:
forward, soft cross-entropy, backward, gradient clipping at norm 1, AdamW, each toolkit with its
own optimizer factory (`vitkit.training.build_optimizer`, `timm.optim.create_optimizer_v2`).
FLOPs are counted by `torch.utils.flop_counter` (attention by its math formula) and divided by
the median time; the peak is a large matmul in the same dtype, measured in the same run. Peak
memory is measured per toolkit in a child process (CPU: the resident-set high-water mark,
reset before the step; GPU: `torch.cuda.max_memory_allocated`).

    .venv/bin/python benchmarks/speed.py                      # every row, printed
    .venv/bin/python benchmarks/speed.py --write              # and appended to RESULTS.md
    .venv/bin/python benchmarks/speed.py --models R+ViT-CIFAR/4@16 --tasks train --modes eager

A row whose estimated time per call (FLOPs / measured peak) exceeds --max-call-seconds is listed
as skipped with that estimate: on a CPU without native bf16 matmuls, most bf16 rows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import timm.optim
import torch
import torch.nn.functional as F
from results import append_to_results
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitkit.models.config import get_config
from vitkit.models.vit import VisionTransformer
from vitkit.training.config import TrainConfig
from vitkit.training.optim import build_optimizer, clip_gradients
from vitkit.weights.timm import TIMM_MODEL_NAME, timm_model_kwargs, timm_to_vitkit

TASKS = ("infer1", "infer", "train")
TASK_NAMES = {"infer1": "inference, batch 1", "infer": "inference", "train": "training step"}
LR, WEIGHT_DECAY, NUM_CLASSES = 1e-3, 0.05, 10


@dataclass(frozen=True)
class Row:
    """One architecture at one resolution, with its batch sizes on a CPU and on a GPU."""

    model: str
    img_size: int
    cpu_batch: dict[str, int]
    gpu_batch: dict[str, int]

    @property
    def key(self) -> str:
        return f"{self.model}@{self.img_size}"


ROWS = [
    Row("ViT-Ti/16", 224, dict(infer=16, train=8), dict(infer=512, train=256)),
    Row("ViT-S/16", 224, dict(infer=16, train=8), dict(infer=512, train=256)),
    Row("ViT-B/16", 224, dict(infer=8, train=4), dict(infer=256, train=256)),
    # The demo's model (vitkit demo) at its pre-training and fine-tuning resolutions.
    Row("R+ViT-CIFAR/4", 16, dict(infer=256, train=128), dict(infer=1024, train=512)),
    Row("R+ViT-CIFAR/4", 32, dict(infer=256, train=128), dict(infer=1024, train=512)),
]


def timm_twin(name: str, img_size: int) -> nn.Module:
    """The timm model with vitkit preset `name`'s architecture (random weights, fixed seed)."""
    config = get_config(name, img_size=img_size, num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    if not config.is_hybrid:
        return timm.create_model(TIMM_MODEL_NAME, pretrained=False, **timm_model_kwargs(config))
    if config.resnet_layers != () or config.resnet_width != 64:
        raise ValueError(f"{name}: only hybrids with the ResNet root alone have a timm twin here")
    return timm.create_model(  # timm's ResNet-root hybrid, with vitkit's transformer on top
        "vit_tiny_r_s16_p8_224",
        pretrained=False,
        img_size=img_size,
        patch_size=config.patch_size,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim / config.width,
        num_classes=NUM_CLASSES,
        class_token=config.class_token,
        global_pool="token" if config.classifier == "token" else "avg",
        fc_norm=False,
    )


def build_pair(row: Row, device: torch.device) -> dict[str, nn.Module]:
    """{"vitkit": ..., "timm": ...} with identical weights, checked to give the same logits."""
    reference = timm_twin(row.model, row.img_size).to(device)
    num_heads = get_config(row.model).num_heads
    config, state = timm_to_vitkit(
        reference.state_dict(), img_size=row.img_size, num_heads=num_heads
    )
    model = VisionTransformer(config).to(device)
    model.load_state_dict(state)
    images = torch.randn(2, 3, row.img_size, row.img_size, device=device)
    with torch.no_grad():
        error = (model.eval()(images) - reference.eval()(images)).abs().max().item()
    if error > 1e-4:
        raise AssertionError(f"{row.key}: vitkit and timm logits differ by {error:.2e}")
    return {"vitkit": model, "timm": reference}


def make_call(
    toolkit: str,
    model: nn.Module,
    task: str,
    batch: int,
    img_size: int,
    dtype: torch.dtype,
    compiled: bool,
    device: torch.device,
) -> Callable[[], None]:
    """A closure running one call of `task` (one inference batch or one training step)."""
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    forward = torch.compile(model) if compiled else model
    if task != "train":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast:
                forward(images)

        return infer
    model.train()
    targets = F.one_hot(torch.randint(0, NUM_CLASSES, (batch,), device=device), NUM_CLASSES)
    targets = targets.float()
    if toolkit == "vitkit":
        config = TrainConfig(lr=LR, weight_decay=WEIGHT_DECAY, steps=1, device=device.type)
        optimizer = build_optimizer(model, config)
        clip = clip_gradients
    else:
        optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)
        clip = nn.utils.clip_grad_norm_

    def step() -> None:
        with autocast:
            logits = forward(images)
        loss = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        loss.backward()
        clip(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], None], count: int, device: torch.device) -> float:
    """Seconds per call over `count` calls (CUDA events on a GPU, the wall clock on a CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(count):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / count
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count


def count_flops(
    model: nn.Module, task: str, batch: int, img_size: int, device: torch.device
) -> int:
    """FLOPs of one call: the forward (inference) or forward + backward (training), in fp32."""
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        if task == "train":
            model.train()(images).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model.eval()(images)
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """FLOP/s of a large square `F.linear` in `dtype` (the op behind every layer of a ViT; on a
    CPU bf16 `F.linear` takes oneDNN's path, ~10x faster than `torch.mm` there): the machine's
    practical peak."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    call = lambda: F.linear(a, b)  # noqa: E731
    call()
    synchronize(device)
    count = 20 if device.type == "cuda" else 2
    seconds = statistics.median(time_calls(call, count, device) for _ in range(repeats))
    return 2 * size**3 / seconds


@contextlib.contextmanager
def rss_high_water() -> Iterator[dict[str, float]]:
    """Linux: the resident-set growth of this process inside the block, in MiB (the high-water
    mark is reset on entry by /proc/self/clear_refs)."""

    def status(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    Path("/proc/self/clear_refs").write_text("5")
    baseline = status("VmRSS")
    result: dict[str, float] = {}
    yield result
    result["mib"] = status("VmHWM") - baseline


def probe_memory(row: Row, task: str, dtype_name: str, device: torch.device) -> dict[str, float]:
    """Peak memory of one call per toolkit (run in a child process with glibc's mmap threshold
    fixed, so freed blocks leave the resident set and the next toolkit starts clean)."""
    dtype = DTYPES[dtype_name]
    batch = batch_for(row, task, device)
    models = build_pair(row, device)
    peaks = {}
    for toolkit, model in models.items():
        call = make_call(toolkit, model, task, batch, row.img_size, dtype, False, device)
        call()  # optimizer state, allocator warm-up
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            call()
            synchronize(device)
            peaks[toolkit] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        else:
            with rss_high_water() as growth:
                call()
            peaks[toolkit] = growth["mib"]
    return peaks


def memory_in_child(row: Row, task: str, dtype_name: str, device: torch.device) -> dict:
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [
        sys.executable,
        __file__,
        "--probe-memory",
        row.key,
        task,
        dtype_name,
        "--device",
        str(device),
    ]
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def batch_for(row: Row, task: str, device: torch.device) -> int:
    if task == "infer1":
        return 1
    return (row.gpu_batch if device.type == "cuda" else row.cpu_batch)[task]


def measure(
    row: Row,
    task: str,
    dtype_name: str,
    compiled: bool,
    args: argparse.Namespace,
    peak: float,
    device: torch.device,
) -> dict:
    """One table row: both toolkits timed interleaved, FLOP rate, memory."""
    torch._dynamo.reset()  # each row compiles afresh, for its own static shapes
    batch = batch_for(row, task, device)
    models = build_pair(row, device)
    flops = count_flops(models["vitkit"], task, batch, row.img_size, device)
    result = {
        "row": row.key,
        "task": task,
        "dtype": dtype_name,
        "mode": "compile" if compiled else "eager",
        "batch": batch,
        "gflop": flops / 1e9,
    }
    estimate = flops / peak
    if estimate > args.max_call_seconds:
        result["skipped"] = f"~{estimate:.0f} s per call at the measured {peak / 1e9:.1f} GFLOP/s"
        return result
    calls = {
        name: make_call(
            name, model, task, batch, row.img_size, DTYPES[dtype_name], compiled, device
        )
        for name, model in models.items()
    }
    started = time.perf_counter()
    for call in calls.values():  # warm-up: compilation, allocation, optimizer state
        call()
        call()
    synchronize(device)
    warmup = time.perf_counter() - started
    # Calls per timing: about args.min_seconds of work, judged from the slower warm-up call.
    one_call = max(time_calls(call, 1, device) for call in calls.values())
    count = max(1, round(args.min_seconds / one_call))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(args.repeats):
        order = list(calls) if repeat % 2 == 0 else list(reversed(calls))
        for name in order:
            times[name].append(time_calls(calls[name], count, device))
    for name, values in times.items():
        median = statistics.median(values)
        result[name] = {
            "median_s": median,
            "min_s": min(values),
            "max_s": max(values),
            "images_per_s": batch / median,
            "fraction_of_peak": flops / median / peak,
        }
    result["ratio"] = times["timm"] and result["timm"]["median_s"] / result["vitkit"]["median_s"]
    result["warmup_s"] = warmup
    if not compiled and args.memory:
        result["memory_mib"] = memory_in_child(row, task, dtype_name, device)
    return result


def format_row(result: dict) -> str:
    head = (
        f"| {result['row']} | {TASK_NAMES[result['task']]} | {result['dtype']} | "
        f"{result['mode']} | {result['batch']} |"
    )
    if "skipped" in result:
        return head + f" skipped: {result['skipped']} | | | | | |"
    cells = []
    for name in ("vitkit", "timm"):
        timing = result[name]
        if result["task"] == "infer1":
            cells.append(
                f"{timing['median_s'] * 1e3:.1f} ms ({timing['min_s'] * 1e3:.1f}-"
                f"{timing['max_s'] * 1e3:.1f})"
            )
        else:
            low, high = (result["batch"] / timing[key] for key in ("max_s", "min_s"))
            cells.append(f"{timing['images_per_s']:,.1f} img/s ({low:,.1f}-{high:,.1f})")
    memory = result.get("memory_mib", {})
    memory_cell = f"{memory['vitkit']:,.1f} / {memory['timm']:,.1f}" if "vitkit" in memory else "-"
    return (
        head + f" {cells[0]} | {cells[1]} | **{result['ratio']:.2f}** | "
        f"{result['vitkit']['fraction_of_peak']:.0%} / {result['timm']['fraction_of_peak']:.0%}"
        f" | {memory_cell} |"
    )


def pipeline(args: argparse.Namespace, device: torch.device) -> str:
    """The demo's pre-training stage, per step: the input pipeline alone (ArrayLoader batch +
    batched augmentation), the training step alone (one fixed batch), and both end to end."""
    from vitkit.data.loader import ArrayLoader
    from vitkit.data.sources import open_dataset
    from vitkit.training.build import build_augment, build_model
    from vitkit.training.presets import get_preset

    config = dataclasses.replace(get_preset("demo-pretrain"), device=device.type)
    dataset = open_dataset(args.data, split="train")
    model = build_model(config, num_classes=len(dataset.classes)).to(device)
    augment = build_augment(config, model, num_classes=len(dataset.classes))
    optimizer = build_optimizer(model, config)
    loader = ArrayLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True)
    batches = enumerate(loader)

    def data() -> tuple[torch.Tensor, torch.Tensor]:
        step, (images, labels) = next(batches)
        return augment(images.to(device), labels.to(device), key=(config.seed, step))

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        loss = -(targets * F.log_softmax(model(inputs), dim=-1)).sum(-1).mean()
        loss.backward()
        clip_gradients(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fixed = data()
    calls = {
        "input pipeline alone": data,
        "training step alone": lambda: step(*fixed),
        "end to end": lambda: step(*data()),
    }
    steps = 20
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            times[name].append(time_calls(call, steps, device))
    lines = [
        f"\nDemo's input pipeline (`demo-pretrain`: {config.model} at {config.resolution} px, "
        f"batch {config.batch_size}, crop_scale_min {config.crop_scale_min}, flips, label "
        f"smoothing {config.label_smoothing}; data {args.data}), "
        f"{args.repeats} repeats of {steps} steps:\n",
        "| what | images/s (median, min-max) |",
        "| --- | ---: |",
    ]
    for name, values in times.items():
        rates = sorted(config.batch_size / value for value in values)
        lines.append(
            f"| {name} | {statistics.median(rates):,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f}) |"
        )
    return "\n".join(lines) + "\n"


def profile_step(row: Row, device: torch.device, steps: int = 5) -> str:
    """Where vitkit's fp32 training step of `row` spends its time (torch.profiler, self time per
    operator, summed over `steps` steps), as a Markdown table."""
    from torch.profiler import ProfilerActivity, profile

    batch = batch_for(row, "train", device)
    model = build_pair(row, device)["vitkit"]
    step = make_call("vitkit", model, "train", batch, row.img_size, torch.float32, False, device)
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    events = sorted(
        profiler.key_averages(),
        key=lambda e: e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total,
        reverse=True,
    )
    self_time = [
        (
            e.key,
            (e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total)
            / steps
            / 1e3,
            e.count // steps,
        )
        for e in events
    ]
    total = sum(ms for _, ms, _ in self_time)
    lines = [
        f"\nProfile of vitkit's fp32 training step, {row.key}, batch {batch} (`speed.py "
        f"--profile {row.key}`): {total:.1f} ms of operator self time per step.\n",
        "| operator | ms per step | share | calls per step |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, ms, calls in self_time[:15]:
        lines.append(f"| `{name}` | {ms:.1f} | {ms / total:.0%} | {calls} |")
    return "\n".join(lines) + "\n"


TABLE_HEAD = (
    "| model@px | task | dtype | mode | batch | vitkit (median, min-max) | timm (median, min-max) "
    "| vitkit/timm speed | share of matmul peak (vitkit / timm) | peak MiB (vitkit / timm) |\n"
    "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="*", default=[row.key for row in ROWS], choices=[row.key for row in ROWS]
    )
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument(
        "--modes", nargs="*", default=["eager", "compile"], choices=["eager", "compile"]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=0.5,
        help="work per timing (calls are repeated to reach it)",
    )
    parser.add_argument("--max-call-seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument(
        "--data",
        default="../shared/data/cifar10-jpg.tar.gz",
        help="CIFAR-10 for the input-pipeline rows ('' to skip them)",
    )
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument(
        "--profile",
        choices=[row.key for row in ROWS],
        help="only profile vitkit's fp32 training step of this row",
    )
    parser.add_argument(
        "--probe-memory", nargs=3, metavar=("ROW", "TASK", "DTYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if hasattr(os, "sched_setaffinity") and device.type == "cpu":
        os.sched_setaffinity(0, range(args.threads))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.probe_memory:
        key, task, dtype_name = args.probe_memory
        row = next(row for row in ROWS if row.key == key)
        print(json.dumps(probe_memory(row, task, dtype_name, device)))
        return
    if args.profile:
        table = profile_step(next(row for row in ROWS if row.key == args.profile), device)
        print(table)
        if args.write:
            append_to_results(table)
        return

    peaks = {name: matmul_peak(DTYPES[name], device, args.repeats) for name in args.dtypes}
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {args.threads} threads"
    )
    print(
        f"{machine}; torch {torch.__version__}, timm {timm.__version__}; matmul peak: "
        + ", ".join(f"{name} {peak / 1e9:,.1f} GFLOP/s" for name, peak in peaks.items())
    )
    lines = [TABLE_HEAD]
    print(TABLE_HEAD, flush=True)
    for row in (row for row in ROWS if row.key in args.models):
        for task in args.tasks:
            for dtype_name in args.dtypes:
                for mode in args.modes:
                    result = measure(
                        row, task, dtype_name, mode == "compile", args, peaks[dtype_name], device
                    )
                    lines.append(format_row(result))
                    print(lines[-1], flush=True)
    header = (
        f"\n## Speed: vitkit vs timm, {time.strftime('%Y-%m-%d')}\n\n"
        f"Machine: {machine}; torch {torch.__version__}, timm {timm.__version__}. Command: "
        f"`.venv/bin/python benchmarks/speed.py {' '.join(sys.argv[1:])}`. Matmul peak "
        "(square matmul, same run): "
        + ", ".join(f"{name} {peak / 1e9:,.1f} GFLOP/s" for name, peak in peaks.items())
        + f". {args.repeats} interleaved repeats of >= {args.min_seconds} s each; speed ratio "
        "= timm's median time / vitkit's (above 1: vitkit faster).\n\n"
    )
    table = header + "\n".join(lines) + "\n"
    if args.data:
        table += pipeline(args, device)
    print(table)
    if args.write:
        append_to_results(table)


if __name__ == "__main__":
    main()
