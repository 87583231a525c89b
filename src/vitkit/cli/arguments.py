"""Argument types and argument groups shared by the `vitkit` commands."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import get_args

from vitkit.data.token_budget import MOST_TOKENS
from vitkit.devices import DEVICE_NAMES, resolve_device
from vitkit.errors import ConfigError
from vitkit.evaluation.input_forms import input_form
from vitkit.models.config import Classifier, Gelu
from vitkit.models.preprocessing import (
    GOOGLE_MEAN,
    GOOGLE_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
)
from vitkit.models.vit import VisionTransformer
from vitkit.weights import load_model

# --normalization: the model's own record, or its statistics overridden (its resolution and
# interpolation kept).
NORMALIZATIONS: dict[str, Callable[[Preprocessing], Preprocessing]] = {
    "model": lambda recorded: recorded,
    "google": lambda recorded: dataclasses.replace(recorded, mean=GOOGLE_MEAN, std=GOOGLE_STD),
    "imagenet": lambda recorded: dataclasses.replace(
        recorded, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argument type for whole numbers from `low` to `high`: a bound on what one flag may ask
    of the machine (seeds to run, images to draw), checked before any work starts."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    parse.__name__ = f"integer from {low} to {high}"  # argparse's "invalid ... value" names it
    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--img-size, --normalization, --batch-size and --device, for commands that run a model."""
    add_input_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--device", default="auto", help=DEVICE_NAMES)


def add_skip_bad_argument(parser: argparse.ArgumentParser) -> None:
    """--skip-bad: what `vitkit train skip_bad=true` and the Python API's skip_bad do."""
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be read (counted and named in a warning) instead of "
        "stopping at the first",
    )


def add_unrecorded_settings(parser: argparse.ArgumentParser) -> None:
    """--num-heads, --classifier and --gelu: what some checkpoint files cannot say
    (`load_model`'s num_heads, classifier and gelu), for every command that reads one."""
    parser.add_argument(
        "--num-heads",
        type=positive_int,
        help="heads of a timm or torchvision state dict whose width is no paper variant's",
    )
    parser.add_argument(
        "--classifier",
        choices=get_args(Classifier),
        help="the pooling of a timm state dict with a [class] token and no fc_norm: token "
        "(timm's global_pool='token', assumed with a warning when not given) or gap "
        "(global_pool='avg'); other files record theirs",
    )
    parser.add_argument(
        "--gelu",
        choices=get_args(Gelu),
        help="the activation of a timm CLIP tower's state dict: exact (OpenCLIP's, assumed with "
        "a warning when not given) or quick (OpenAI's); other files record theirs",
    )


def unrecorded_settings(args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of `load_model` that `add_unrecorded_settings` gave."""
    return {"num_heads": args.num_heads, "classifier": args.classifier, "gelu": args.gelu}


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """--img-size, --patch-size and --normalization: how images become the model's inputs;
    and the settings a checkpoint may not record (`add_unrecorded_settings`)."""
    add_unrecorded_settings(parser)
    parser.add_argument(
        "--img-size",
        type=positive_int,
        help="resolution to run at (default: the checkpoint's); position embeddings are resized",
    )
    parser.add_argument(
        "--patch-size",
        type=positive_int,
        help="patch size to run at (default: the checkpoint's); the patch kernel is resampled "
        "(FlexiViT) and the position embeddings resized",
    )
    parser.add_argument(
        "--normalization",
        choices=list(NORMALIZATIONS),
        default="model",
        help="input normalisation: the one the checkpoint records (default), or google "
        "([-1, 1]) or imagenet (ImageNet mean/std) to override it",
    )


def token_budget(text: str) -> int:
    """--max-tokens: a positive number of patches, at most MOST_TOKENS."""
    value = positive_int(text)
    if value > MOST_TOKENS:
        raise argparse.ArgumentTypeError(f"at most {MOST_TOKENS} patches, got {value}")
    return value


def add_token_budget_argument(parser: argparse.ArgumentParser) -> None:
    """--max-tokens: each image at its own aspect ratio instead of the square resize."""
    parser.add_argument(
        "--max-tokens",
        type=token_budget,
        help="keep each image's aspect ratio: resize it to the largest size of at most this "
        "many patches and pack the images into shared sequences (NaViT), instead of resizing "
        "every image to the model's square resolution",
    )


def load_checkpoint(
    checkpoint: Path,
    img_size: int | None,
    patch_size: int | None = None,
    *,
    dynamic_img_size: bool = False,
    settings: Mapping[str, object] | None = None,
) -> VisionTransformer:
    """`load_model`, with a size the model cannot take reported as a checkpoint problem;
    `settings`: what the file may not record (`unrecorded_settings`)."""
    try:
        return load_model(
            checkpoint, img_size=img_size, patch_size=patch_size,
            dynamic_img_size=dynamic_img_size, **(settings or {}),
        )  # fmt: skip
    except ConfigError as error:  # e.g. an img_size that is no multiple of the patch size
        asked = f"{img_size or 'its'} px" + (f", patch size {patch_size}" if patch_size else "")
        raise ConfigError(f"{checkpoint}: cannot build it at {asked}: {error}") from None


def load_for_inference(
    checkpoint: Path, args: argparse.Namespace
) -> tuple[VisionTransformer, Preprocessing]:
    """The checkpoint's model on the chosen device in eval mode, and its input preprocessing;
    a model that takes any image size where the command packs images (--max-tokens)."""
    device = resolve_device(args.device)  # before the load: a bad --device fails at once
    dynamic = input_form(getattr(args, "max_tokens", None)).dynamic_img_size
    model = load_checkpoint(checkpoint, args.img_size, args.patch_size, dynamic_img_size=dynamic,
                            settings=unrecorded_settings(args))  # fmt: skip
    return model.to(device).eval(), NORMALIZATIONS[args.normalization](model.preprocessing)
