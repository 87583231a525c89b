"""`vitkit demo`: the main job, pre-training at 16 px then fine-tuning at 32 px on CIFAR-10.

See `vitkit.training.demo`. The data defaults to the CIFAR-10 JPEG tarball in the project's shared
folder when there is one ($VITKIT_SHARED, else `shared/` beside the checkout), else to the official
CIFAR-10 download.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from vitkit.cli.figures import figures_for_dataset
from vitkit.data import Preprocessing, open_dataset
from vitkit.training.demo import run_demo
from vitkit.weights import load_model

SHARED_TARBALL = Path("data/cifar10-jpg.tar.gz")
DEFAULT_BUDGET_SECONDS = 780.0  # training time; data preparation and evaluation come on top


def default_shared_dir() -> Path:
    """$VITKIT_SHARED, else the `shared` folder beside the git checkout holding the current
    directory, else the one beside the project that holds this package."""
    if env := os.environ.get("VITKIT_SHARED"):
        return Path(env)
    cwd = Path.cwd().resolve()
    git_roots = [path for path in (cwd, *cwd.parents) if (path / ".git").exists()]
    candidates = [git_roots[0].parent / "shared"] if git_roots else []
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared")
    return next((path for path in candidates if path.is_dir()), candidates[0])


def default_data() -> str:
    tarball = default_shared_dir() / SHARED_TARBALL
    return str(tarball) if tarball.is_file() else "cifar10"


def run(args: argparse.Namespace) -> int:
    data = args.data or default_data()
    hardware = args.hardware
    if hardware == "auto":
        hardware = "gpu" if torch.cuda.is_available() else "cpu"
    print(
        f"vitkit demo: data {data}, output {args.out}, budget {args.budget:.0f} s of training, "
        f"{hardware} recipe"
    )
    summary = run_demo(
        data, args.out, budget_seconds=args.budget, download=data == "cifar10", hardware=hardware
    )
    if "stopped_at_step" in summary:  # Ctrl-C: the same command resumes
        return 0
    model = load_model(args.out / "finetune")
    test = open_dataset(data, split="test")
    figures = figures_for_dataset(
        model, Preprocessing.for_model(model.config), test, args.out / "figures",
        label="vitkit demo, fine-tuned model",
    )  # fmt: skip
    print(f"inspection figures: {figures['index.html']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="pre-train a ViT at 16 px, fine-tune at 32 px on CIFAR-10, compare (the main job)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", help="CIFAR-10 source (default: the shared tarball, else cifar10)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_SECONDS,
        help=f"seconds of training over all stages (default {DEFAULT_BUDGET_SECONDS:.0f})",
    )
    parser.add_argument(
        "--hardware",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="recipe: cpu (R+ViT-CIFAR/4, fp32) or gpu (ViT-CIFAR-L/4, bf16, batch 512, "
        "Mixup/CutMix); auto picks gpu when CUDA is available",
    )
    parser.set_defaults(run=run, command="demo")
