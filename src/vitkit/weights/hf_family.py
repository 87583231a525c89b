"""A family of transformers models that vitkit reads and writes (ViT, DINOv2, DINOv3, CLIP's and
SigLIP's image towers), as one record: which config.json model types it reads, which vitkit
models it is chosen to write, and its reader, refusal and writer. hf.py keeps the directory
(config.json, weights, preprocessing, class names) and picks a family from its table; a new
family is a module that defines one of these and a line in that table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from vitkit.models.config import ViTConfig

State = dict[str, torch.Tensor]


class HFFamily(NamedTuple):
    """model_types: config.json's "model_type" values it reads. writes: whether a vitkit model
    of a config is written as this family (the first family in hf.py's order that says so).
    read: (config.json, tensors) -> (config, vitkit tensors). refusal: why it cannot hold a
    config, or None. write: (config, vitkit tensors) -> (config.json without class names,
    tensors), after the refusal has passed."""

    model_types: tuple[str, ...]
    writes: Callable[[ViTConfig], bool]
    read: Callable[[dict, State], tuple[ViTConfig, State]]
    refusal: Callable[[ViTConfig], str | None]
    write: Callable[[ViTConfig, State], tuple[dict, State]]


def sizes_entries(config: ViTConfig) -> dict[str, object]:
    """The config.json entries every family names alike: the image and patch sizes, channels,
    width, depth, heads and LayerNorm eps (a square image's size as one number)."""
    height, width = config.img_size
    return {
        "image_size": height if height == width else [height, width],
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "hidden_size": config.width,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "layer_norm_eps": config.layer_norm_eps,
    }


# ViTConfig fields under the names every family's config.json gives them, for errors that name
# the field as the file has it.
SIZE_NAMES = {"img_size": "image_size", "patch_size": "patch_size", "in_chans": "num_channels",
              "width": "hidden_size", "depth": "num_hidden_layers",
              "num_heads": "num_attention_heads", "mlp_dim": "intermediate_size",
              "layer_norm_eps": "layer_norm_eps"}  # fmt: skip


def sizes_fields(values: dict[str, object]) -> dict[str, object]:
    """The ViTConfig fields of `SIZE_NAMES` read from config.json `values` (the inverse of
    `sizes_entries`), for ViTConfig to check."""
    return {field: values[name] for field, name in SIZE_NAMES.items() if name in values}
