"""`vitkit eval --checkpoint CKPT --data PATH [--out DIR] [--limit N] [--max-tokens N]`: top-1,
top-5, per-class accuracy and a confusion-matrix picture, with the paper's test-time pipeline
(every image resized whole to the model's resolution, as every command feeds it:
`vitkit.data.model_input`), or with --max-tokens every image at its own aspect ratio, packed
(NaViT). A folder's images may differ in size and format either way.

Writes DIR/eval.json and DIR/confusion_matrix.png. The checkpoint's classes must be the data's
(same count, same order, as a `vitkit train` run on that data has them); to judge a representation
trained on other classes, use `vitkit fewshot`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vitkit.analysis.plots import plot_confusion_matrix
from vitkit.cli.arguments import (
    add_model_arguments,
    add_skip_bad_argument,
    add_token_budget_argument,
    load_for_inference,
    positive_int,
)
from vitkit.data import DataError
from vitkit.data.fewshot import balanced_subset
from vitkit.errors import VitkitError
from vitkit.evaluation.accuracy import classification_report
from vitkit.evaluation.input_forms import input_form
from vitkit.io import atomic_write_json
from vitkit.text import printable
from vitkit.training.validation import VALIDATION, Validation


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    if args.flip_average and args.max_tokens:
        raise VitkitError("--flip-average mirrors square images; --max-tokens packs them instead")
    model, preprocessing = load_for_inference(args.checkpoint, args)
    form = input_form(args.max_tokens)
    if args.split == VALIDATION:  # the images a training run held out, as its record says
        validation = Validation.of_run(args.checkpoint)
        whole = form.open(args.data, validation.split, preprocessing, skip_bad=args.skip_bad)
        dataset = validation.held_out(whole)
    else:
        dataset = form.open(args.data, args.split, preprocessing, skip_bad=args.skip_bad)
    if args.limit:
        dataset = balanced_subset(dataset, args.limit)
    classes = model.config.num_classes
    if classes != len(dataset.classes):
        raise DataError(
            f"{args.checkpoint} classifies into {classes} classes but {args.data} ({args.split}) "
            f"has {len(dataset.classes)}: top-1 needs the label set the head was trained on. "
            "For a representation trained on other classes use `vitkit fewshot`, or fine-tune "
            "it with `vitkit train --preset finetune`"
        )
    report = classification_report(
        model,
        dataset,
        preprocessing=preprocessing,
        batch_size=args.batch_size,
        form=form,
        flip_average=args.flip_average,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "split": args.split,
        "resolution": list(preprocessing.resolution) if args.max_tokens is None else None,
        "max_tokens": args.max_tokens,
        "flip_average": args.flip_average,
        "preprocessing": dataclasses.asdict(preprocessing),
        **report.to_json(),
    }
    atomic_write_json(args.out / "eval.json", result)
    if report.confusion is not None:
        plot_confusion_matrix(report.confusion, dataset.classes, args.out / "confusion_matrix.png")
    shown = {name: printable(name) for name in report.per_class}  # names from folders, as text
    width = max(len(text) for text in shown.values())
    for name, accuracy in report.per_class.items():
        print(f"  {shown[name]:<{width}}  {accuracy:7.2%}  ({report.counts[name]} images)")
    print(
        f"top-1 {report.top1:.2%}  top-5 {report.top5:.2%}  on {report.images} images "
        f"{form.describe(preprocessing)} -> {args.out}"
    )
    return 0


def check_out(out: Path) -> None:
    """Refuse an --out that names a file, or a path through one, before the evaluation rather
    than at its end, where making the folder would fail."""
    existing = next(path for path in (out, *out.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise VitkitError(f"--out {out}: {existing} is not a folder")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="top-1/top-5/per-class accuracy and a confusion matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="anything load_model takes")
    parser.add_argument("--data", required=True, help="dataset path or name")
    parser.add_argument(
        "--split",
        default="test",
        help="split to evaluate (default: test; '.' for a folder of class folders without "
        "splits; 'validation' for the images the training run CHECKPOINT held out)",
    )
    parser.add_argument("--out", type=Path, default=Path("eval"), help="output directory")
    parser.add_argument(
        "--limit",
        type=positive_int,
        help="evaluate on about this many images, the same number of every class (the same "
        "subset every time), for a quick estimate",
    )
    parser.add_argument(
        "--flip-average",
        action="store_true",
        help="average each image's logits with its mirror image's, as a training run with "
        "eval_flip=true counts its top-1 (square images only)",
    )
    add_token_budget_argument(parser)
    add_skip_bad_argument(parser)
    add_model_arguments(parser)
    parser.set_defaults(run=run, command="eval")
