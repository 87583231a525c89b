"""PIL images -> model inputs, as a set of weights expects them (`Preprocessing`, the record a
model carries: resolution, mean, std, interpolation; defined in models/preprocessing.py, which
both the model and this module may import).

Batches of uint8 arrays take the same path on the device in `vitkit.data.transforms.eval_batch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vitkit.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = ["Preprocessing", "eval_transform"]


def eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """PIL image -> normalised float tensor (3, H, W) at the record's resolution.

    The whole image is resized to the resolution, aspect ratio not kept and nothing cropped,
    as in the test-time pipeline of the paper's code (vit_jax resizes to image_size).
    """
    # Imported here: torchvision takes seconds to import, which commands that never touch
    # images (`vitkit models`) should not pay.
    from torchvision.transforms import InterpolationMode, v2

    interpolation = InterpolationMode(preprocessing.interpolation)
    return v2.Compose(
        [
            v2.Resize(preprocessing.resolution, interpolation=interpolation, antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std)),
        ]
    )
