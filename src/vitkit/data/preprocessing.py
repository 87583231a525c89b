"""How images become model inputs: the resolution and normalisation a set of weights expects.

Weights are only right with the normalisation they were trained with. Google's checkpoints (the
paper's, AugReg's, and their timm and Hugging Face copies) take inputs in [-1, 1], i.e. mean and
std 0.5, not the ImageNet statistics many PyTorch models use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from vitkit.models.config import ViTConfig, as_pair

if TYPE_CHECKING:
    from torchvision.transforms import v2

Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """Resolution (height, width) and per-channel normalisation of a model's inputs."""

    resolution: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation = "bilinear"

    @classmethod
    def for_model(cls, config: ViTConfig) -> Preprocessing:
        """What the model's weights expect: its resolution and its recorded mean and std."""
        return cls(resolution=config.img_size, mean=config.mean, std=config.std)

    @classmethod
    def google(cls, resolution: int | tuple[int, int]) -> Preprocessing:
        """Google's checkpoints: pixels scaled to [0, 1], then (x - 0.5) / 0.5 maps them to
        [-1, 1], as vit_jax's input pipeline does with (x - 127.5) / 127.5."""
        return cls(resolution=as_pair(resolution), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    @classmethod
    def imagenet(cls, resolution: int | tuple[int, int]) -> Preprocessing:
        """ImageNet statistics, as most timm and torchvision weights other than Google's expect."""
        return cls(
            resolution=as_pair(resolution),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        )

    def eval_transform(self) -> v2.Compose:
        """PIL image -> normalised float tensor (3, H, W) at `resolution`.

        The whole image is resized to the resolution, aspect ratio not kept and nothing cropped,
        as in the test-time pipeline of the paper's code (vit_jax resizes to image_size).
        """
        # Imported here: torchvision takes seconds to import, which commands that never touch
        # images (`vitkit models`) should not pay.
        from torchvision.transforms import InterpolationMode, v2

        interpolation = InterpolationMode(self.interpolation)
        return v2.Compose(
            [
                v2.Resize(self.resolution, interpolation=interpolation, antialias=True),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )
