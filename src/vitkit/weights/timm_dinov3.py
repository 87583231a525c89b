"""timm's DINOv3 (`vit_*_dinov3`), which timm builds with its Eva class rather than its
VisionTransformer: the key names, `create_model` arguments and capabilities that differ from
timm.py's, which reads and writes the rest (heads, pooling, sizes) as for any timm ViT.

A DINOv3 state dict is told by Eva's LayerScale names (`blocks.N.gamma_1`, vitkit's
`ls1.gamma`) with no position table: its tokens are placed by rotary embeddings (vitkit's
pos_embed_type "rope_2d"), which hold no weights. Eva keeps query and value biases apart
(`q_bias`, `v_bias`) with none on the keys: vitkit's fused projection holds zeros there and
leaves them out (ViTConfig.key_bias=False; the rotary embedding would turn a key bias with each
key's position, so the keys can have none). Eva models with a position table (EVA-02) place
tokens otherwise and are refused.

Neither the image size (rotary positions fit any grid; DINOv3 pre-trains at 224 px, which is
taken) nor the pooling (timm's vit_*_dinov3 average the patch tokens unless told; DINOv3 itself
reads the [class] token) is in the file; timm.py warns for the pooling as for any timm ViT.
"""

from __future__ import annotations

import re

import torch

from vitkit.errors import CheckpointError
from vitkit.models.config import ViTConfig
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value

# A registered name; every architecture argument is passed (its own fix rotary periods of 100,
# LayerNorm eps 1e-5 and dynamic image sizes).
DINOV3_MODEL_NAME = "vit_base_patch16_dinov3"
DINOV3_IMAGE_SIZE = 224
DINOV3_LAYER_NORM_EPS = 1e-5
_LAYER_SCALE = re.compile(r"(blocks\.\d+)\.gamma_([12])")
_SPLIT_BIAS = re.compile(r"(blocks\.\d+\.attn)\.(q|v)_bias")

# What timm's DINOv3 (Eva) can hold (weights/capabilities.py).
DINOV3_HOLDS: Holds = {
    **PAPER_FIELDS,
    "qkv_bias": ANY,
    "key_bias": ANY,
    "classifier": ("token", "gap"),
    "class_token": ANY,
    "reg_tokens": ANY,
    "fc_norm": ANY,
    "gelu": ("exact",),
    "layer_norm_eps": ANY,
    "layer_scale_init": ANY,
    "pos_embed_type": ("rope_2d",),
}


def is_timm_dinov3(state: dict[str, torch.Tensor]) -> bool:
    """Whether a timm state dict is Eva's (LayerScale as `gamma_1`), which vitkit reads as
    DINOv3's when it has no position table."""
    if "blocks.0.gamma_1" not in state:
        return False
    if "pos_embed" in state:
        raise CheckpointError(
            "is timm's Eva with a position table and rotary embeddings (EVA-02), which vitkit "
            "does not support; its DINOv3 (no position table) it reads"
        )
    return True


def from_eva(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An Eva state dict in the key names of timm's VisionTransformer, which timm.py reads:
    LayerScale as `ls1.gamma`/`ls2.gamma`, the query and value biases fused with a zero key bias
    into `attn.qkv.bias`."""
    renamed: dict[str, torch.Tensor] = {}
    split: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if match := _SPLIT_BIAS.fullmatch(key):
            split.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        renamed[_LAYER_SCALE.sub(r"\1.ls\2.gamma", key)] = value
    for attention, parts in split.items():
        if set(parts) != {"q", "v"} or parts["q"].shape != parts["v"].shape:
            raise CheckpointError(f"{attention}: q_bias and v_bias must both be there, alike")
        query, value = parts["q"], parts["v"]
        renamed[f"{attention}.qkv.bias"] = torch.cat([query, torch.zeros_like(query), value])
    return renamed


def to_eva(config: ViTConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`from_eva` undone: a vitkit state dict of `config` in Eva's key names."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = re.sub(r"(blocks\.\d+)\.ls([12])\.gamma", r"\1.gamma_\2", key)
        if key.endswith("attn.qkv.bias"):
            query, _, value_bias = value.chunk(3)  # the key bias goes (see the docstring)
            converted[key.replace("qkv.bias", "q_bias")] = query
            converted[key.replace("qkv.bias", "v_bias")] = value_bias
            continue
        converted[key] = value
    return converted


def dinov3_fields(img_size: int | tuple[int, int] | None, *, qkv_bias: bool) -> dict[str, object]:
    """The ViTConfig fields of a timm DINOv3 that its keys do not show."""
    return dict(
        pos_embed_type="rope_2d",
        key_bias=not qkv_bias,  # with query and value biases, none on the keys
        img_size=DINOV3_IMAGE_SIZE if img_size is None else img_size,
        layer_norm_eps=DINOV3_LAYER_NORM_EPS,
    )


def dinov3_kwargs(config: ViTConfig) -> dict[str, object]:
    """Keyword arguments for `timm.create_model(DINOV3_MODEL_NAME, **kwargs)` building the timm
    model that computes what a vitkit model of `config` computes, but for the MLP ratio and
    LayerNorm, which timm.py adds as for every timm ViT; CheckpointError for what it cannot
    hold."""
    if problem := no_place(config, DINOV3_HOLDS, holder="timm's DINOv3 (Eva)"):
        raise CheckpointError(problem)
    if config.qkv_bias and config.key_bias:
        raise CheckpointError(
            "timm's DINOv3 (Eva) has query and value biases and none on the keys, but this "
            "model has key_bias=True"
        )
    if problem := unheld_value(config, DINOV3_HOLDS, holder="timm's DINOv3 (Eva)"):
        raise CheckpointError(problem)
    return dict(
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=config.in_chans,
        num_classes=config.num_classes,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        qkv_bias=config.qkv_bias,
        init_values=config.layer_scale_init,
        class_token=config.class_token,
        num_reg_tokens=config.reg_tokens,
        global_pool="token" if config.classifier == "token" else "avg",
        use_fc_norm=config.fc_norm,
    )
