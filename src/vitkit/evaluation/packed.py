"""Evaluation with every image at its own aspect ratio, sized to a token budget and packed into
sequences (NaViT): the alternative to the paper's square resize that `vitkit eval --max-tokens`
and `vitkit classify --max-tokens` run."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vitkit.data.token_budget import budget_input
from vitkit.models.packing import forward_packed, sequence_length
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer


def packed_logits(
    model: VisionTransformer,
    images: Sequence[torch.Tensor | np.ndarray],
    *,
    preprocessing: Preprocessing,
    max_tokens: int,
) -> torch.Tensor:
    """Logits (N, classes) of uint8 images ((3, H, W) tensors or (H, W, 3) arrays), each resized
    at its aspect ratio to at most `max_tokens` patches and normalised as `preprocessing` says,
    all packed into sequences of `sequence_length`. The model must take any image
    size (dynamic_img_size=True)."""
    if not model.config.dynamic_img_size:
        raise ValueError(
            "packed evaluation gives every image its own size: the model needs "
            "dynamic_img_size=True (load_model(..., dynamic_img_size=True))"
        )
    device = next(model.parameters()).device
    inputs = [
        budget_input(
            image, preprocessing, patch_size=model.config.total_stride, max_tokens=max_tokens
        ).to(device)
        for image in images
    ]
    return forward_packed(model, inputs, max_tokens=sequence_length(model, max_tokens))


@torch.no_grad()
def iter_packed_outputs(
    model: VisionTransformer,
    dataset: Sequence[tuple[torch.Tensor | np.ndarray, int]],
    *,
    preprocessing: Preprocessing,
    max_tokens: int,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits on the CPU in float32, labels) for every `batch_size` images of `dataset` in
    order, each batch through `packed_logits`; `progress`: a progress bar with that title."""
    device_type = next(model.parameters()).device.type
    with tqdm(
        total=len(dataset), desc=progress, unit="img", file=sys.stderr, disable=progress is None
    ) as bar:
        for start in range(0, len(dataset), batch_size):
            items = [
                dataset[index] for index in range(start, min(start + batch_size, len(dataset)))
            ]
            with torch.autocast(
                device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                logits = packed_logits(
                    model,
                    [image for image, _ in items],
                    preprocessing=preprocessing,
                    max_tokens=max_tokens,
                )
            bar.update(len(items))
            yield logits.float().cpu(), torch.tensor([label for _, label in items])
