"""`Preprocessing`: how images become a model's inputs, a fact about its weights.

Weights are only right with the resolution and normalisation they were trained with: Google's
checkpoints (the paper's, AugReg's, and their timm and Hugging Face copies) take inputs in
[-1, 1], i.e. mean and std 0.5; many timm and torchvision weights ImageNet's statistics. A
`ViTConfig` describes an architecture and never weights, so this record sits beside it, on the
model (`VisionTransformer.preprocessing`, as timm's `pretrained_cfg`): every reader in
`vitkit.weights` fills it from its format's metadata, every writer that can records it, and
evaluation, training and export read it from there. It lives in models/ (torch-free, like the
config) so that both the model and the data pipeline (`vitkit.data.eval_transform`) can use it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from vitkit.errors import ConfigError
from vitkit.models.checks import check_each, choice, image_size, reals

Interpolation = Literal["bilinear", "bicubic"]

# Google's checkpoints: pixels in [0, 1], then (x - 0.5) / 0.5 maps them to [-1, 1], as vit_jax's
# input pipeline does with (x - 127.5) / 127.5.
GOOGLE_MEAN = (0.5, 0.5, 0.5)
GOOGLE_STD = (0.5, 0.5, 0.5)
# ImageNet's statistics, as torchvision's weights and most timm weights other than Google's expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CHECKS = {
    "resolution": image_size,
    "mean": functools.partial(reals, low=-math.inf, low_included=False),
    "std": functools.partial(reals, low=0.0, low_included=False),
    "interpolation": functools.partial(choice, choices=get_args(Interpolation)),
}


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """Resolution (height, width), per-channel normalisation of [0, 1] pixels, and the
    interpolation of the resize that brings an image to the resolution (the whole image, no crop,
    as the paper's test-time pipeline)."""

    resolution: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation = "bilinear"

    def __post_init__(self) -> None:
        """Check and normalise every field (resolution a pair of ints, mean and std tuples of
        float), so that a record read from a file is valid or a ConfigError names each bad
        field."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        for name, value in _checked(fields, names={}).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_fields(
        cls, values: Mapping[str, object], *, names: Mapping[str, str]
    ) -> Preprocessing:
        """The record of `values` (interpolation "bilinear" when absent) read from a file whose
        fields are named otherwise (`names`: field -> the file's name), so that an error names
        the field as the file has it."""
        checked = _checked({"interpolation": "bilinear", **values}, names=names)
        return cls(**checked)

    @classmethod
    def google(cls, resolution: int | tuple[int, int], *, channels: int = 3) -> Preprocessing:
        """Google's checkpoints: inputs in [-1, 1] (mean = std = 0.5 for each of `channels`).
        `resolution`: a side or (height, width), as for every constructor (`__post_init__`
        makes it a pair)."""
        return cls(resolution=resolution, mean=(0.5,) * channels, std=(0.5,) * channels)

    @classmethod
    def imagenet(cls, resolution: int | tuple[int, int]) -> Preprocessing:
        """ImageNet statistics, as most timm and torchvision weights other than Google's expect."""
        return cls(resolution=resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def check_channels(self, in_chans: int) -> None:
        """Refuse a record for images of another channel count than the model's `in_chans`."""
        if len(self.mean) != in_chans:
            raise ConfigError(
                f"preprocessing: mean and std need one value per input channel "
                f"(in_chans={in_chans}), got {len(self.mean)}"
            )

    def to_json(self) -> dict[str, object]:
        """The record as JSON values (lists for tuples), as vitkit's config.json holds it."""
        return {
            "resolution": list(self.resolution),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


def _checked(values: Mapping[str, object], *, names: Mapping[str, str]) -> dict[str, object]:
    """Every field of `values`, checked and normalised; one ConfigError lists every problem."""
    missing = [name for name in _CHECKS if name not in values]
    if missing:
        raise ConfigError(
            "Invalid Preprocessing: missing " + ", ".join(names.get(name, name) for name in missing)
        )
    checked, problems = check_each(_CHECKS, values, names)
    if "mean" in checked and "std" in checked and len(checked["mean"]) != len(checked["std"]):
        mean, std = names.get("mean", "mean"), names.get("std", "std")
        counts = f"{len(checked['mean'])} and {len(checked['std'])}"
        problems.append(f"{mean} and {std} need one value per input channel each, got {counts}")
    if problems:
        raise ConfigError("Invalid Preprocessing: " + "; ".join(problems))
    return checked
