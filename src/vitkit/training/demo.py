"""The demo: the paper's pre-train -> higher-resolution fine-tune workflow, on CIFAR-10.

    vitkit demo --data ../shared/data/cifar10-jpg.tar.gz --out runs/demo [--budget 780]

1. Pre-train a small ViT from scratch at 16x16 px (CIFAR images downscaled).
2. Fine-tune it at 32x32 px with the same patch size, so the patch grid grows from 4x4 to 8x8:
   the position embeddings are resized by 2D interpolation and the head is replaced by a
   zero-initialised one, as in section 3.2 of the paper.
3. For comparison, fine-tune the same pre-trained model for the same time at 16 px: the paper's
   claim is that the higher resolution wins.

Each stage is an ordinary `vitkit train` run in its own sub-directory, so an interrupted demo
resumes where it stopped. The stages' steps come from the time budget (measured throughput), so
the demo takes about the same time on any machine; a faster machine trains longer and better.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from vitkit.io import atomic_write_json
from vitkit.training.config import TrainConfig, parse_overrides
from vitkit.training.presets import get_preset
from vitkit.training.trainer import train

# Shares of the training budget; evaluation and the one-time data cache come on top.
PRETRAIN_SHARE, FINETUNE_SHARE = 0.6, 0.2
# (pre-training, fine-tuning) presets per kind of hardware.
STAGE_PRESETS = {
    "cpu": ("demo-pretrain", "demo-finetune"),
    "gpu": ("demo-gpu-pretrain", "demo-gpu-finetune"),
}


def stage_configs(
    data: str,
    out: Path,
    budget_seconds: float,
    *,
    download: bool = False,
    hardware: Literal["cpu", "gpu"] = "cpu",
    overrides: Sequence[str] = (),
) -> dict[str, TrainConfig]:
    """The three stages' configs: pre-training, fine-tuning at 32 px, fine-tuning at 16 px;
    `overrides` ("field=value", as `vitkit train` takes them) change both presets."""
    pretrain_preset, finetune_preset = STAGE_PRESETS[hardware]
    pretrain = dataclasses.replace(
        get_preset(pretrain_preset),
        data=data,
        download=download,
        budget_seconds=PRETRAIN_SHARE * budget_seconds,
    )
    finetune = dataclasses.replace(
        get_preset(finetune_preset),
        data=data,
        download=download,
        init=str(out / "pretrain"),
        budget_seconds=FINETUNE_SHARE * budget_seconds,
    )
    pretrain, finetune = (parse_overrides(stage, list(overrides)) for stage in (pretrain, finetune))
    return {
        "pretrain": pretrain,
        "finetune": finetune,
        "finetune_at_pretrain_res": dataclasses.replace(finetune, resolution=pretrain.resolution),
    }


def run_demo(
    data: str,
    out: str | Path,
    *,
    budget_seconds: float,
    download: bool = False,
    hardware: Literal["cpu", "gpu"] = "cpu",
    overrides: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Run (or resume) the three stages in `out`, write `out/summary.json` and return it; None
    when Ctrl-C stopped a stage (the same call resumes it)."""
    out = Path(out)
    start = time.perf_counter()
    results = {}
    stages = stage_configs(
        data, out, budget_seconds, download=download, hardware=hardware, overrides=overrides
    )
    for name, config in stages.items():
        print(f"\n== {name}: {config.resolution} px, about {config.budget_seconds:.0f} s ==")
        results[name] = train(config, out / name)
        if not results[name].complete:  # Ctrl-C: the same command resumes
            return None
    summary = {
        "hardware": hardware,
        "eval_flip": stages["finetune"].eval_flip,
        "top1": results["finetune"].top1,
        "top1_pretrain_res": results["finetune_at_pretrain_res"].top1,
        "top1_pretrained": results["pretrain"].top1,
        "seconds": round(time.perf_counter() - start, 1),
        "stages": {name: result.to_json() for name, result in results.items()},
    }
    atomic_write_json(out / "summary.json", summary)
    print("\n" + format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    stages = summary["stages"]
    rows = [
        ("pre-train", stages["pretrain"]),
        ("fine-tune (higher res)", stages["finetune"]),
        ("fine-tune (pre-train res)", stages["finetune_at_pretrain_res"]),
    ]
    lines = [f"{'stage':<26} {'res':>4} {'steps':>6} {'train s':>8} {'top-1':>7}"]
    for label, stage in rows:
        lines.append(
            f"{label:<26} {stage['resolution']:>4} {stage['steps']:>6} {stage['seconds']:>8.0f} "
            f"{stage['top1']:>7.2%}"
        )
    gain = summary["top1"] - summary["top1_pretrain_res"]
    lines.append(
        f"\nFine-tuning at the higher resolution: {summary['top1']:.2%} top-1, against "
        f"{summary['top1_pretrain_res']:.2%} for the same budget at the pre-training resolution "
        f"({gain:+.2%}). Whole demo: {summary['seconds'] / 60:.1f} min."
    )
    if summary.get("eval_flip"):
        lines.append("(top-1 counts each test image with its mirror image, logits averaged)")
    return "\n".join(lines)
