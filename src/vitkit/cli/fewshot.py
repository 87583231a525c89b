"""`vitkit fewshot --checkpoint CKPT --data PATH [--out DIR]`: the paper's few-shot linear
evaluation of a frozen model, and optionally a full linear probe.

Representations (pre-logits output, else the pooled feature) are extracted once for every image
the evaluation needs; least squares to {-1, 1} targets is then solved for each shot count and
seed, with the L2 strength chosen on held-out training images. Prints a table and writes
DIR/fewshot.json: {"shots": {"1": {"mean", "std", "accuracies", "l2"}, ...}, ...}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitkit.cli.arguments import (
    add_model_arguments,
    add_skip_bad_argument,
    int_between,
    load_for_inference,
    positive_int,
)
from vitkit.data import DataError
from vitkit.data.fewshot import balanced_subset
from vitkit.data.sources import open_for_model
from vitkit.evaluation.features import extract_features
from vitkit.evaluation.fewshot import fewshot_accuracy
from vitkit.evaluation.linear_probe import linear_probe_accuracy
from vitkit.io import atomic_write_json


def shot_list(text: str) -> list[int]:
    try:
        shots = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,5,10, got {text!r}") from None
    if not shots or shots[0] < 1:
        raise argparse.ArgumentTypeError(f"shot counts must be positive, got {text!r}")
    return shots


def run(args: argparse.Namespace) -> int:
    model, preprocessing = load_for_inference(args.checkpoint, args)
    train, test = (open_for_model(args.data, split, preprocessing, skip_bad=args.skip_bad)
                   for split in (args.train_split, args.test_split))  # fmt: skip
    if train.classes != test.classes:
        raise DataError(f"{args.data}: the {args.train_split} and {args.test_split} classes differ")
    num_classes = len(train.classes)
    if args.test_limit:
        test = balanced_subset(test, args.test_limit)
    results, test_features, test_labels = fewshot_accuracy(
        model, train, test, shots=args.shots, seeds=args.seeds,
        holdout_per_class=args.holdout_per_class, preprocessing=preprocessing,
        batch_size=args.batch_size,
    )  # fmt: skip
    report = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "feature_dim": test_features.shape[1],
        "test_images": len(test),
        "holdout_per_class": args.holdout_per_class,
        "seeds": args.seeds,
        "shots": {str(result.shots): result.to_json() for result in results},
    }
    print(
        f"{'shots':>6} {'mean':>8} {'std':>7}   top-1 over {args.seeds} seeds, {len(test)} images"
    )
    for result in results:
        print(f"{result.shots:>6} {result.mean:>8.2%} {result.std:>7.2%}")
    if args.linear_probe:
        all_features, all_labels = extract_features(
            model, train, preprocessing=preprocessing, batch_size=args.batch_size,
            progress="probe features",
        )  # fmt: skip
        probe = linear_probe_accuracy(
            all_features, all_labels, test_features, test_labels, num_classes
        )
        report["linear_probe"] = probe
        print(f"linear probe on {len(train)} images: {probe['top1']:.2%} (l2 {probe['l2']:g})")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "fewshot.json", report)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fewshot",
        help="few-shot linear evaluation (and linear probe) of a frozen model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="anything load_model takes")
    parser.add_argument("--data", required=True, help="dataset path or name")
    parser.add_argument("--out", type=Path, default=Path("fewshot"), help="output directory")
    parser.add_argument("--shots", type=shot_list, default=[1, 5, 10, 25], help="e.g. 1,5,10,25")
    parser.add_argument(
        "--seeds", type=int_between(1, 100), default=5, help="k-shot draws per count (1-100)"
    )
    parser.add_argument(
        "--holdout-per-class",
        type=positive_int,
        default=20,
        help="training images per class held out to choose the L2 strength",
    )
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument(
        "--test-limit",
        type=positive_int,
        help="evaluate on about this many test images (a class-balanced subset), for slow "
        "models on a CPU",
    )
    parser.add_argument(
        "--linear-probe",
        action="store_true",
        help="also fit a logistic-regression probe on the whole training set",
    )
    add_skip_bad_argument(parser)
    add_model_arguments(parser)
    parser.set_defaults(run=run, command="fewshot")
