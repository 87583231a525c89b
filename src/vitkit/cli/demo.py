"""`vitkit demo`: the paper's workflow in miniature, pre-training at 16 px then fine-tuning at
32 px on CIFAR-10.

See `vitkit.training.demo`. The data defaults to the CIFAR-10 JPEG tarball in the project's shared
folder when there is one ($VITKIT_SHARED, else `shared/` beside the checkout; see
`vitkit.data.shared`), else to the official CIFAR-10 download.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitkit.analysis.report import figures_for_dataset
from vitkit.analysis.run_report import write_demo_report
from vitkit.data import open_for_model
from vitkit.data.shared import default_cifar10
from vitkit.devices import resolve_device
from vitkit.training.demo import run_demo
from vitkit.weights import load_model

DEFAULT_BUDGET_SECONDS = 780.0  # training time; data preparation and evaluation come on top


def run(args: argparse.Namespace) -> int:
    data = args.data or default_cifar10()
    hardware = args.hardware
    if hardware == "auto":
        hardware = "gpu" if resolve_device("auto").type == "cuda" else "cpu"
    print(
        f"vitkit demo: data {data}, output {args.out}, budget {args.budget:.0f} s of training, "
        f"{hardware} recipe"
    )
    summary = run_demo(
        data, args.out, budget_seconds=args.budget, download=data == "cifar10", hardware=hardware,
        overrides=args.overrides,
    )  # fmt: skip
    if summary is None:  # Ctrl-C: the same command resumes
        return 0
    model = load_model(args.out / "finetune")
    test = open_for_model(data, "test", model.preprocessing)
    figures = figures_for_dataset(
        model, model.preprocessing, test, args.out / "figures",
        label="vitkit demo, fine-tuned model",
    )  # fmt: skip
    print(f"inspection figures: {figures['index.html']}")
    command = (
        f"vitkit demo --data {data} --out {args.out} --budget {args.budget:g} "
        f"--hardware {args.hardware}" + "".join(f" --set {change}" for change in args.overrides)
    )
    print(f"report: {write_demo_report(args.out, summary, command)}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="pre-train a ViT at 16 px, fine-tune at 32 px on CIFAR-10, compare",
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
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="field=value",
        help="a change to every stage's training config, as vitkit train takes it (e.g. "
        "--set log=tensorboard); repeat for several",
    )  # fmt: skip
    parser.set_defaults(run=run, command="demo")
