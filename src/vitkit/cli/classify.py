"""`vitkit classify CHECKPOINT PATH...`: top-k classes of every image, from any checkpoint format.

Classes are printed by name where names are known: `--labels FILE`, else the names the checkpoint
records (a vitkit run's dataset classes, transformers' id2label); by index otherwise. `--json`
prints one JSON document instead of text, for scripts; the progress bar stays on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from vitkit.cli.arguments import (
    NORMALIZATIONS,
    add_input_arguments,
    add_skip_bad_argument,
    add_token_budget_argument,
    load_checkpoint,
    positive_int,
    unrecorded_settings,
)
from vitkit.data import DataError, Preprocessing, find_images, load_rgb
from vitkit.devices import resolve_device
from vitkit.evaluation.input_forms import SQUARE, InputForm, input_form
from vitkit.models.vit import VisionTransformer
from vitkit.text import printable
from vitkit.weights import CheckpointError
from vitkit.weights.class_names import read_labels


@dataclass(frozen=True)
class Prediction:
    path: Path
    classes: list[int]  # the top-k class indices, most probable first
    probabilities: list[float]
    logits: list[float]  # every class's, in class order: what another tool's output is held to


def load_classifier(
    checkpoint: Path,
    *,
    img_size: int | None,
    patch_size: int | None = None,
    dynamic_img_size: bool = False,
    settings: Mapping[str, object] | None = None,
) -> VisionTransformer:
    model = load_checkpoint(checkpoint, img_size, patch_size, dynamic_img_size=dynamic_img_size,
                            settings=settings)  # fmt: skip
    if model.config.num_classes == 0:
        raise CheckpointError(f"{checkpoint}: has no classification head (num_classes=0)")
    return model


@torch.no_grad()
def predict(
    model: VisionTransformer,
    paths: Sequence[Path],
    *,
    preprocessing: Preprocessing,
    top_k: int,
    batch_size: int,
    form: InputForm = SQUARE,
    skip_bad: bool = False,
) -> list[Prediction]:
    """Top-k softmax probabilities of every image, in batches, with a progress bar on stderr;
    each image reaches the model in the input `form` (square: as every command feeds it,
    `vitkit.data.model_input`, so that classifying a split's images counts what `vitkit eval`
    counts; packed: at its own aspect ratio). `skip_bad`: images that cannot be read are left
    out, counted and named in a warning at the end, instead of stopping at the first."""
    top_k = min(top_k, model.config.num_classes)
    predictions = []
    skipped: dict[Path, str] = {}
    with tqdm(total=len(paths), desc="classify", unit="img", file=sys.stderr) as progress:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            chunk, images = _readable(batch, skipped, skip_bad)
            progress.update(len(batch) - len(chunk))  # the skipped ones
            if not chunk:
                continue
            inputs = form.inputs(model, images, preprocessing)
            logits = form.forward(model, inputs)
            top = logits.softmax(dim=-1).topk(top_k, dim=-1)
            for path, probabilities, classes, row in zip(chunk, top.values, top.indices, logits):
                predictions.append(
                    Prediction(path, classes.tolist(), probabilities.tolist(), row.tolist())
                )
            progress.update(len(chunk))
    if skipped:
        names = ", ".join(printable(str(path)) for path in list(skipped)[:5])
        more = ", ..." if len(skipped) > 5 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable images: {names}{more}", stacklevel=2)
    return predictions


def _readable(
    paths: Sequence[Path], skipped: dict[Path, str], skip_bad: bool
) -> tuple[list[Path], list[Image.Image]]:
    """The paths of `paths` that decode and their images; with `skip_bad`, the others go into
    `skipped` (path -> why), else the first raises its DataError."""
    kept, images = [], []
    for path in paths:
        try:
            images.append(load_rgb(path))
        except DataError as error:
            if not skip_bad:
                raise DataError(f"{error}; --skip-bad leaves such images out") from None
            skipped[path] = str(error)
            continue
        kept.append(path)
    return kept, images


def class_names(model: VisionTransformer, labels_file: Path | None) -> Sequence[str] | None:
    """The names to print: the --labels file's, which override the checkpoint's own, if any."""
    if labels_file is not None:
        return read_labels(labels_file, model.config.num_classes)
    return model.class_names


def format_prediction(prediction: Prediction, labels: Sequence[str] | None) -> str:
    """The image's path, then one line per class; names and path shown as text (`printable`),
    so that no name from a checkpoint can act on the terminal or forge a line."""
    lines = [printable(str(prediction.path))]
    for index, probability in zip(prediction.classes, prediction.probabilities):
        name = f"{printable(labels[index])} ({index})" if labels else str(index)
        lines.append(f"  {probability:.4f}  {name}")
    return "\n".join(lines)


def predictions_json(
    predictions: Sequence[Prediction], labels: Sequence[str] | None
) -> list[dict[str, object]]:
    """[{path, predictions: [{label, index, probability}, ...], logits: [...]}, ...], most
    probable first; label is null when no names are known; logits are every class's, in class
    order (before the softmax), to compare with another runtime's outputs."""
    return [
        {
            "path": str(prediction.path),
            "predictions": [
                {"label": labels[index] if labels else None, "index": index, "probability": p}
                for index, p in zip(prediction.classes, prediction.probabilities)
            ],
            "logits": prediction.logits,
        }
        for prediction in predictions
    ]


def classify_and_print(
    checkpoint: Path,
    paths: Sequence[Path],
    *,
    img_size: int | None = None,
    patch_size: int | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    labels_file: Path | None = None,
    normalization: str = "model",
    as_json: bool = False,
    max_tokens: int | None = None,
    skip_bad: bool = False,
    settings: Mapping[str, object] | None = None,
) -> list[Prediction]:
    """Classify the images (files, or folders searched recursively) and print the top-k of each,
    as text or (as_json) one JSON document.

    normalization: "model" (the preprocessing the checkpoint records, `model.preprocessing`;
    Google's [-1, 1] where it records none), "google" ([-1, 1]) or "imagenet" (ImageNet mean
    and std), to override its statistics.
    max_tokens: each image at its own aspect ratio, at most this many patches (NaViT packing),
    instead of the square resize.
    """
    images = find_images(paths)  # before loading the model, so a typo fails at once
    form = input_form(max_tokens)
    model = load_classifier(
        checkpoint,
        img_size=img_size,
        patch_size=patch_size,
        dynamic_img_size=form.dynamic_img_size,
        settings=settings,
    ).to(resolve_device("auto"))
    labels = class_names(model, labels_file)
    preprocessing = NORMALIZATIONS[normalization](model.preprocessing)
    predictions = predict(
        model,
        images,
        preprocessing=preprocessing,
        top_k=top_k,
        batch_size=batch_size,
        form=form,
        skip_bad=skip_bad,
    )
    if as_json:
        print(json.dumps(predictions_json(predictions, labels), indent=2))
    else:
        for prediction in predictions:
            print(format_prediction(prediction, labels))
    return predictions


def run(args: argparse.Namespace) -> int:
    classify_and_print(
        args.checkpoint,
        args.paths,
        img_size=args.img_size,
        patch_size=args.patch_size,
        top_k=args.top_k,
        batch_size=args.batch_size,
        labels_file=args.labels,
        normalization=args.normalization,
        as_json=args.json,
        max_tokens=args.max_tokens,
        skip_bad=args.skip_bad,
        settings=unrecorded_settings(args),
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="print the top-k classes of images",
        description="Classify image files and folders (searched recursively) with any "
        "checkpoint vitkit reads. Classes are named by --labels, else by the names the "
        "checkpoint records (a vitkit run, Hugging Face id2label), else numbered.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint file or directory")
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="images or folders")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes shown per image")
    add_input_arguments(parser)
    add_token_budget_argument(parser)
    add_skip_bad_argument(parser)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument(
        "--labels", type=Path, help="class names, one per line (overrides the checkpoint's)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document: [{path, predictions: [{label, index, probability}], "
        "logits}]",
    )
    parser.set_defaults(run=run, command="classify")
