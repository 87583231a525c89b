"""timm's `VisionTransformer` state dicts (.safetensors, .pth, .bin).

vitkit's module names follow timm's (patch_embed.proj, blocks.N.attn.qkv, ...), the names most
PyTorch ViT users know, so the conversion is a check of keys rather than a renaming. timm files do
not record the number of heads; it is taken from the paper's variant with the same width, or
given. Numerics are timm's: exact GELU, LayerNorm eps 1e-6.
"""

from __future__ import annotations

import re

import torch

from vitkit.models.config import VARIANTS, ViTConfig
from vitkit.weights.errors import CheckpointError

# timm features with parameters that vitkit does not model (yet): refuse rather than drop them.
_UNSUPPORTED = {
    "fc_norm.": "a LayerNorm after average pooling (fc_norm)",
    "reg_token": "register tokens",
    ".ls1.": "LayerScale",
    "norm_pre.": "a LayerNorm before the encoder (CLIP-style norm_pre)",
    ".q_norm.": "QK normalisation",
    "attn_pool.": "attention pooling (MAP head)",
}


def config_from_timm(state: dict[str, torch.Tensor], *, num_heads: int | None = None) -> ViTConfig:
    """Infer the architecture of a timm ViT state dict from its keys and shapes."""
    for fragment, feature in _UNSUPPORTED.items():
        keys = [key for key in state if fragment in key]
        if keys:
            raise CheckpointError(f"uses {feature} ({keys[0]}), which vitkit does not support yet")
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise CheckpointError(f"missing key {key!r}; is this a timm VisionTransformer?")
    width, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    depth = len({m.group(1) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))})
    if num_heads is None:
        widths = {variant.width: variant.num_heads for variant in VARIANTS.values()}
        if width not in widths:
            raise CheckpointError(
                f"timm state dicts do not record the number of heads and width {width} is not a "
                "paper variant's: pass num_heads="
            )
        num_heads = widths[width]
    class_token = "cls_token" in state
    num_patches = state["pos_embed"].shape[1] - int(class_token)
    grid = round(num_patches**0.5)
    if grid * grid != num_patches:
        raise CheckpointError(f"pos_embed: {num_patches} patch positions do not form a square grid")
    return ViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        # Without fc_norm, timm's average pooling reads the tokens after the final norm: "gap".
        classifier="token" if class_token else "gap",
        class_token=class_token,
        gelu="exact",
        layer_norm_eps=1e-6,
    )


def timm_to_vitkit(
    state: dict[str, torch.Tensor], *, num_heads: int | None = None
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a timm ViT state dict to (config, state dict in vitkit's naming)."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    config = config_from_timm(state, num_heads=num_heads)
    return config, dict(state)
