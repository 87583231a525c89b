"""torchvision's `VisionTransformer` state dicts (`vit_b_16` and friends; .pth, .pt, .bin).

torchvision names modules its own way (conv_proj, encoder.layers.encoder_layer_N, heads.head) and
attends with `nn.MultiheadAttention`, whose fused `in_proj_weight` is q, k, v stacked exactly as
vitkit's `qkv`, so the conversion is a renaming. Its architecture is fixed where vitkit's is
configurable: always a [class] token that is read by the head ("token"), its position embedding in
`encoder.pos_embedding` (so the first row is the token's), RGB input, square images. Numerics are
torchvision's: exact GELU (`nn.GELU()`), LayerNorm eps 1e-6; its weights take ImageNet-normalised
input. Like timm's, the files do not record the number of heads: it is the paper variant's of the
same width, or given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from vitkit.errors import CheckpointError
from vitkit.models.config import VARIANTS, ViTConfig
from vitkit.weights.shapes import block_indices, require_shape, square_side

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Prefixes added by wrappers: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys only a torchvision ViT has; `looks_like_torchvision` reads the state dict's keys for them.
_SIGNATURE = ("conv_proj.weight", "encoder.pos_embedding")

# (pattern over a torchvision key, vitkit name); groups fill the {} of the name.
_LAYER = r"encoder\.layers\.encoder_layer_(\d+)"
_RENAMES = [
    (r"conv_proj\.(weight|bias)", "patch_embed.proj.{0}"),
    (r"class_token", "cls_token"),
    (r"encoder\.pos_embedding", "pos_embed"),
    (rf"{_LAYER}\.ln_1\.(weight|bias)", "blocks.{0}.norm1.{1}"),
    (rf"{_LAYER}\.ln_2\.(weight|bias)", "blocks.{0}.norm2.{1}"),
    (rf"{_LAYER}\.self_attention\.in_proj_(weight|bias)", "blocks.{0}.attn.qkv.{1}"),
    (rf"{_LAYER}\.self_attention\.out_proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}"),
    # MLPBlock is torchvision.ops.MLP since torchvision 0.13 (Linear at 0, GELU, Dropout, Linear
    # at 3); files saved before name the two layers linear_1 and linear_2.
    (rf"{_LAYER}\.mlp\.(?:0|linear_1)\.(weight|bias)", "blocks.{0}.mlp.fc1.{1}"),
    (rf"{_LAYER}\.mlp\.(?:3|linear_2)\.(weight|bias)", "blocks.{0}.mlp.fc2.{1}"),
    (r"encoder\.ln\.(weight|bias)", "norm.{0}"),
    (r"heads\.pre_logits\.(weight|bias)", "pre_logits.0.{0}"),
    (r"heads\.head\.(weight|bias)", "head.{0}"),
]


def _unwrap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    unwrapped = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        unwrapped[key] = value
    return unwrapped


def looks_like_torchvision(keys: Iterable[str]) -> bool:
    """Whether state dict keys are a torchvision ViT's (timm's are patch_embed.proj, pos_embed)."""
    names = {str(key) for key in keys}
    for prefix in _WRAPPER_PREFIXES:
        names |= {name.removeprefix(prefix) for name in names}
    return all(key in names for key in _SIGNATURE)


def _rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, target in _RENAMES:
            if match := re.fullmatch(pattern, key):
                converted[target.format(*match.groups())] = value
                break
        else:
            if key.startswith("conv_proj."):
                raise CheckpointError(
                    f"uses a convolutional stem (conv_stem_configs; {key}), which vitkit does "
                    "not support"
                )
            raise CheckpointError(f"unexpected key {key!r} in a torchvision ViT checkpoint")
    return converted


def config_from_torchvision(
    state: dict[str, torch.Tensor], *, num_heads: int | None = None
) -> ViTConfig:
    """Infer the architecture of a torchvision ViT from its (vitkit-named) weights.

    num_heads: needed when the width is no paper variant's (torchvision files omit it).
    """
    for key in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise CheckpointError(f"missing the torchvision key for {key!r}")
    width, in_chans, patch, patch_w = require_shape(state, "patch_embed.proj.weight", 4)
    if patch != patch_w:
        raise CheckpointError(f"conv_proj.weight: non-square {patch}x{patch_w} patches")
    if num_heads is None:
        widths = {variant.width: variant.num_heads for variant in VARIANTS.values()}
        if width not in widths:
            raise CheckpointError(
                f"torchvision state dicts do not record the number of heads and width {width} is "
                "not a paper variant's: pass num_heads="
            )
        num_heads = widths[width]
    num_patches = require_shape(state, "pos_embed", 3)[1] - 1  # row 0 is the [class] token's
    side = square_side(num_patches)
    if side is None:
        raise CheckpointError(
            f"encoder.pos_embedding: {num_patches} patch positions (after the [class] token) do "
            "not form a square grid"
        )
    representation_size = None
    if "pre_logits.0.weight" in state:
        representation_size = require_shape(state, "pre_logits.0.weight", 2)[0]
    return ViTConfig(
        img_size=side * patch,
        patch_size=patch,
        in_chans=in_chans,
        width=width,
        depth=len(block_indices(state)),
        num_heads=num_heads,
        mlp_dim=require_shape(state, "blocks.0.mlp.fc1.weight", 2)[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,  # nn.MultiheadAttention(bias=True)
        num_classes=require_shape(state, "head.weight", 2)[0] if "head.weight" in state else 0,
        classifier="token",
        class_token=True,
        representation_size=representation_size,
        gelu="exact",
        layer_norm_eps=1e-6,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def torchvision_to_vitkit(
    state: dict[str, torch.Tensor], *, num_heads: int | None = None
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a torchvision ViT state dict to (config, state dict in vitkit's naming)."""
    converted = _rename(_unwrap(state))
    return config_from_torchvision(converted, num_heads=num_heads), converted
