"""torchvision's `VisionTransformer` state dicts (`vit_b_16` and friends; .pth, .pt, .bin).

torchvision names modules its own way (conv_proj, encoder.layers.encoder_layer_N, heads.head) and
attends with `nn.MultiheadAttention`, whose fused `in_proj_weight` is q, k, v stacked exactly as
vitkit's `qkv`, so the conversion is a renaming. Its architecture is fixed where vitkit's is
configurable: always a [class] token that is read by the head ("token"), its position embedding in
`encoder.pos_embedding` (so the first row is the token's), RGB input, square images. Numerics are
torchvision's: exact GELU (`nn.GELU()`), LayerNorm eps 1e-6; its weights take ImageNet-normalised
input (`torchvision_preprocessing`). Like timm's, the files do not record the number of heads: it is
the paper variant's of the same width, or given.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from vitkit.errors import CheckpointError
from vitkit.models.config import ViTConfig
from vitkit.models.preprocessing import Preprocessing
from vitkit.weights.files import unwrap_key
from vitkit.weights.key_maps import Row, find
from vitkit.weights.shapes import block_indices, infer_num_heads, require_shape, square_side

# Keys only a torchvision ViT has; `looks_like_torchvision` reads the state dict's keys for them.
_SIGNATURE = ("conv_proj.weight", "encoder.pos_embedding")

# Every parameter of a torchvision ViT: vitkit's key and torchvision's (read under it or its
# aliases). The tensors are vitkit's as they are: `in_proj_weight` stacks q, k, v as `qkv` does.
_LAYER = "encoder.layers.encoder_layer_{i}."
# fmt: off
TORCHVISION_KEYS: tuple[Row, ...] = (
    Row("patch_embed.proj.{w}", "conv_proj.{w}"),
    Row("cls_token", "class_token"),
    Row("pos_embed", "encoder.pos_embedding"),
    Row("blocks.{i}.norm1.{w}", _LAYER + "ln_1.{w}"),
    Row("blocks.{i}.norm2.{w}", _LAYER + "ln_2.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "self_attention.in_proj_{w}"),
    Row("blocks.{i}.attn.proj.{w}", _LAYER + "self_attention.out_proj.{w}"),
    # MLPBlock is torchvision.ops.MLP since torchvision 0.13 (Linear at 0, GELU, Dropout, Linear
    # at 3); files saved before name the two layers linear_1 and linear_2.
    Row("blocks.{i}.mlp.fc1.{w}", _LAYER + "mlp.0.{w}", aliases=(_LAYER + "mlp.linear_1.{w}",)),
    Row("blocks.{i}.mlp.fc2.{w}", _LAYER + "mlp.3.{w}", aliases=(_LAYER + "mlp.linear_2.{w}",)),
    Row("norm.{w}", "encoder.ln.{w}"),
    Row("pre_logits.0.{w}", "heads.pre_logits.{w}"),
    Row("head.{w}", "heads.head.{w}"),
)
# fmt: on


def looks_like_torchvision(keys: Iterable[str]) -> bool:
    """Whether state dict keys are a torchvision ViT's (timm's are patch_embed.proj, pos_embed)."""
    names = {unwrap_key(str(key)) for key in keys}
    return all(key in names for key in _SIGNATURE)


def _rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` under vitkit's names (`TORCHVISION_KEYS`), its wrappers' prefixes removed."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = unwrap_key(key)
        found = find(TORCHVISION_KEYS, key)
        if found is None and key.startswith("conv_proj."):
            raise CheckpointError(
                f"uses a convolutional stem (conv_stem_configs; {key}), which vitkit does not "
                "support"
            )
        if found is None:
            raise CheckpointError(f"unexpected key {key!r} in a torchvision ViT checkpoint")
        converted[found.vitkit] = value
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
    num_heads = infer_num_heads(width, num_heads, source="torchvision")
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
    )


def torchvision_preprocessing(config: ViTConfig) -> Preprocessing:
    """What torchvision's ViT weights take, at the model's resolution: ImageNet's statistics
    (the files record none; every torchvision ViT weight is trained with them)."""
    return Preprocessing.imagenet(config.img_size)


def torchvision_to_vitkit(
    state: dict[str, torch.Tensor], *, num_heads: int | None = None
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a torchvision ViT state dict to (config, state dict in vitkit's naming)."""
    converted = _rename(state)
    return config_from_torchvision(converted, num_heads=num_heads), converted
