"""timm's `VisionTransformer` state dicts (.safetensors, .pth, .bin), read and written.

vitkit's module names follow timm's (patch_embed.proj, blocks.N.attn.qkv, ...), the names most
PyTorch ViT users know, so the conversion is a check of keys rather than a renaming. timm files do
not record the number of heads; it is taken from the paper's variant with the same width, or
given. Nor do they record the image size: a square patch grid is assumed unless `img_size` is
given. Numerics are timm's: exact GELU, LayerNorm eps 1e-6.

timm's ResNet + ViT hybrids (`timm.models.vision_transformer_hybrid`: vit_base_r50_s16_224, ...)
load too, their ResNetV2 under patch_embed.backbone (vitkit's module names are timm's), in timm's
numerics (resnet_numerics="timm": its StdConv2dSame eps and GroupNorm eps 1e-5, TF-'SAME'
padding). Hybrids built with padding_same=False pad symmetrically, which a state dict cannot show
and vitkit does not model.

A state dict cannot tell timm's pooling either: with a [class] token the token is read (timm's
default global_pool="token"), without one the patch tokens are averaged ("avg" with
fc_norm=False). A model built with class_token=True, global_pool="avg" and fc_norm=False has the
same keys as a "token" model and would be read as one.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from torch import nn

from vitkit.errors import CheckpointError
from vitkit.io import atomic_write
from vitkit.models.config import (
    RESNET_LAYOUTS,
    VARIANTS,
    ViTConfig,
    as_pair,
    resnet_channels,
    resnet_stride,
)
from vitkit.weights.shapes import INDEX, block_indices, require_shape, square_side

# timm features with parameters that vitkit does not model (yet): refuse rather than drop them.
_UNSUPPORTED = {
    "fc_norm.": "a LayerNorm after average pooling (fc_norm)",
    "reg_token": "register tokens (reg_tokens)",
    "dist_token": "a distillation token (DeiT dist_token)",
    "head_dist.": "a distillation head (DeiT head_dist)",
    ".ls1.": "LayerScale (init_values)",
    ".ls2.": "LayerScale (init_values)",
    "norm_pre.": "a LayerNorm before the encoder (CLIP-style norm_pre)",
    ".q_norm.": "QK normalisation (qk_norm)",
    ".k_norm.": "QK normalisation (qk_norm)",
    ".attn.norm.": "a LayerNorm inside attention (scale_attn_norm)",
    ".mlp.norm.": "a LayerNorm inside the MLP (scale_mlp_norm)",
    "patch_embed.norm.": "a LayerNorm after the patch embedding (embed_norm_layer)",
    "attn_pool.": "attention pooling (MAP head, global_pool='map')",
}
# Keys every timm ViT that vitkit can represent has; their absence names the missing feature.
_REQUIRED = {
    "patch_embed.proj.weight": "no patch embedding convolution; is this a timm VisionTransformer?",
    "blocks.0.mlp.fc1.weight": "no blocks.0.mlp.fc1; is this a timm VisionTransformer?",
    "pos_embed": "no learned position embeddings (pos_embed='none')",
    "patch_embed.proj.bias": "a patch embedding without bias (patch_bias=False / pre_norm)",
    "norm.weight": "no final LayerNorm (final_norm=False)",
    "blocks.0.attn.proj.bias": "projections without bias (proj_bias=False)",
    "blocks.0.mlp.fc1.bias": "MLP layers without bias (proj_bias=False)",
}
# Prefixes added by wrappers: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


_BACKBONE = "patch_embed.backbone."
# timm's root-only hybrid (vit_tiny_r_s16_p8) has its stem at the backbone's top level.
_ROOT_ONLY_RENAMES = {f"{_BACKBONE}conv.": f"{_BACKBONE}stem.conv.",
                      f"{_BACKBONE}norm.": f"{_BACKBONE}stem.norm."}  # fmt: skip


def _resnet_fields(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """The ViTConfig fields of a timm hybrid's ResNetV2 backbone ({} for a plain ViT)."""
    backbone_keys = [key for key in state if key.startswith(_BACKBONE)]
    if not backbone_keys:
        return {}
    root = f"{_BACKBONE}stem.conv.weight"
    if root not in state:
        raise CheckpointError(
            f"has a hybrid backbone that is not timm's ResNetV2 (no {root!r}; found "
            f"{backbone_keys[0]!r}), which vitkit does not support"
        )
    units: dict[int, set[int]] = {}
    for key in backbone_keys:
        if m := re.match(rf"{re.escape(_BACKBONE)}stages\.{INDEX}\.blocks\.{INDEX}\.", key):
            units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(units) != list(range(len(units))) or any(
        sorted(ids) != list(range(len(ids))) for ids in units.values()
    ):
        raise CheckpointError(f"ResNet stages or units are not numbered from 0 ({sorted(units)})")
    layers = tuple(len(units[i]) for i in range(len(units)))
    if layers not in RESNET_LAYOUTS:
        known = ", ".join(f"{layout} ({name})" for layout, name in RESNET_LAYOUTS.items())
        raise CheckpointError(f"unknown ResNet stage layout {layers}; known: {known}")
    resnet_width = require_shape(state, root, 4)[0]
    return dict(resnet_layers=layers, resnet_width=resnet_width, resnet_numerics="timm")


def _grid(
    num_patches: int, patch: int, class_token: bool, img_size: tuple[int, int] | None
) -> tuple[int, int]:
    """The patch grid (rows, cols) of `num_patches` position embeddings; `patch` counts image
    pixels per token (the total stride for hybrids)."""
    if img_size is not None:
        grid = (img_size[0] // patch, img_size[1] // patch)
        if img_size[0] % patch or img_size[1] % patch or grid[0] * grid[1] != num_patches:
            raise CheckpointError(
                f"pos_embed: {num_patches} patch positions do not fit img_size "
                f"{img_size[0]}x{img_size[1]} with patch size {patch}"
            )
        return grid
    if side := square_side(num_patches):
        return (side, side)
    if class_token and num_patches > 0 and square_side(num_patches + 1):
        raise CheckpointError(
            "uses position embeddings without a [class] token row (no_embed_class=True), which "
            "vitkit does not support yet"
        )
    raise CheckpointError(
        f"pos_embed: {num_patches} patch positions do not form a square grid; timm files do not "
        "record the image size: give it (img_size=(height, width))"
    )


def config_from_timm(
    state: dict[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    img_size: int | tuple[int, int] | None = None,
) -> ViTConfig:
    """Infer the architecture of a timm ViT state dict from its keys and shapes.

    img_size: the image size the checkpoint's position embeddings were learned for; needed for
        non-square grids, which the position embeddings' length alone does not determine.
    """
    for fragment, feature in _UNSUPPORTED.items():
        keys = [key for key in state if fragment in key]
        if keys:
            raise CheckpointError(f"uses {feature} ({keys[0]}), which vitkit does not support yet")
    for key, problem in _REQUIRED.items():
        if key not in state:
            if problem.endswith("?"):
                raise CheckpointError(f"missing key {key!r}: {problem}")
            raise CheckpointError(f"has {problem} (no {key!r}), which vitkit does not support yet")
    fc1 = require_shape(state, "blocks.0.mlp.fc1.weight", 2)
    fc2 = state.get("blocks.0.mlp.fc2.weight")
    if fc2 is not None and tuple(fc2.shape[1:2]) != fc1[:1]:
        raise CheckpointError(
            f"uses a gated MLP (SwiGLU/GLU: fc1 {fc1}, fc2 {tuple(fc2.shape)}), which vitkit does "
            "not support yet"
        )
    width, embed_chans, patch, patch_w = require_shape(state, "patch_embed.proj.weight", 4)
    in_chans = embed_chans
    if patch != patch_w:
        raise CheckpointError(
            f"uses non-square {patch}x{patch_w} patches, which vitkit does not support"
        )
    hybrid = _resnet_fields(state)
    stride = patch
    if hybrid:
        layers = hybrid["resnet_layers"]
        in_chans = state[f"{_BACKBONE}stem.conv.weight"].shape[1]
        stride = patch * resnet_stride(layers)
        resnet_out = resnet_channels(layers, hybrid["resnet_width"])
        if embed_chans != resnet_out:
            raise CheckpointError(
                f"patch_embed.proj.weight: reads {embed_chans} channels but the ResNet {layers} "
                f"gives {resnet_out}"
            )
    depth = len(block_indices(state))
    if num_heads is None:
        widths = {variant.width: variant.num_heads for variant in VARIANTS.values()}
        if width not in widths:
            raise CheckpointError(
                f"timm state dicts do not record the number of heads and width {width} is not a "
                "paper variant's: pass num_heads="
            )
        num_heads = widths[width]
    class_token = "cls_token" in state
    num_patches = require_shape(state, "pos_embed", 3)[1] - int(class_token)
    grid = _grid(num_patches, stride, class_token, None if img_size is None else as_pair(img_size))
    return ViTConfig(
        **hybrid,
        img_size=(grid[0] * stride, grid[1] * stride),
        patch_size=patch,
        in_chans=in_chans,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=fc1[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=require_shape(state, "head.weight", 2)[0] if "head.weight" in state else 0,
        # Without fc_norm, timm's average pooling reads the tokens after the final norm: "gap".
        classifier="token" if class_token else "gap",
        class_token=class_token,
        gelu="exact",
        layer_norm_eps=1e-6,
    )


def timm_to_vitkit(
    state: dict[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    img_size: int | tuple[int, int] | None = None,
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a timm ViT state dict to (config, state dict in vitkit's naming).

    num_heads: needed when the width is no paper variant's (timm files omit it).
    img_size: the checkpoint's image size, needed when its patch grid is not square.
    """
    converted = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        for old, new in _ROOT_ONLY_RENAMES.items():
            if key.startswith(old):
                key = new + key.removeprefix(old)
        converted[key] = value
    config = config_from_timm(converted, num_heads=num_heads, img_size=img_size)
    return config, converted


# ---------------------------------------------------------------------------------------------
# Writing: vitkit -> timm. A timm state dict holds only tensors; the architecture and numerics go
# into the arguments of `timm.create_model`, which `timm_model_kwargs` gives.

# Any timm ViT name will do, as every architecture argument is passed explicitly; this one sets
# nothing else (its model_args are patch_size, embed_dim, depth and num_heads).
TIMM_MODEL_NAME = "vit_base_patch16_224"


def timm_model_kwargs(config: ViTConfig) -> dict[str, object]:
    """Keyword arguments for `timm.create_model(TIMM_MODEL_NAME, pretrained=False, **kwargs)`
    that build the timm model computing what a vitkit model of `config` computes.

    Raises CheckpointError for what timm's VisionTransformer cannot express: the pre-logits
    layer (timm has no Linear + tanh before the head).
    """
    if config.is_hybrid:
        raise CheckpointError(
            "exporting ResNet + ViT hybrids to timm is not supported yet (timm builds them from "
            "named models such as vit_base_r50_s16_224); export to vitkit or npz"
        )
    if config.representation_size:
        raise CheckpointError(
            f"timm's VisionTransformer has no pre-logits layer (Linear + tanh, here of size "
            f"{config.representation_size}); drop it first (load with num_classes=...) or export "
            "to vitkit, hf or npz"
        )
    # timm's MLP width is int(embed_dim * mlp_ratio); where mlp_dim / width rounds below
    # mlp_dim (e.g. 49 / 44), aiming half a unit higher still truncates to mlp_dim.
    mlp_ratio = config.mlp_dim / config.width
    if int(config.width * mlp_ratio) != config.mlp_dim:
        mlp_ratio = (config.mlp_dim + 0.5) / config.width
    kwargs: dict[str, object] = dict(
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=config.in_chans,
        num_classes=config.num_classes,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=config.qkv_bias,
        class_token=config.class_token,
        # vitkit's "gap" averages the patch tokens after the final norm: timm's "avg" without
        # fc_norm (timm leaves the [class] token out of the average, as vitkit does).
        global_pool="token" if config.classifier == "token" else "avg",
        fc_norm=False,
    )
    if config.gelu == "tanh":
        kwargs["act_layer"] = "gelu_tanh"
    if config.layer_norm_eps != 1e-6:  # timm's default
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=config.layer_norm_eps)
    return kwargs


def timm_create_model_call(config: ViTConfig) -> str:
    """The Python line that builds the matching timm model, for printing."""
    arguments = []
    for name, value in timm_model_kwargs(config).items():
        if name == "norm_layer":
            value_text = f"functools.partial(torch.nn.LayerNorm, eps={config.layer_norm_eps!r})"
        else:
            value_text = repr(value)
        arguments.append(f"{name}={value_text}")
    return f"timm.create_model({TIMM_MODEL_NAME!r}, pretrained=False, {', '.join(arguments)})"


def vitkit_to_timm(config: ViTConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vitkit state dict as timm's (the same names: vitkit follows timm's module names), after
    checking that timm can express `config`."""
    timm_model_kwargs(config)
    return dict(state)


def write_timm(model: torch.nn.Module, path: Path) -> Path:
    """Write `model` (a vitkit VisionTransformer) as a timm state dict, atomically: .safetensors
    by safetensors, .pth/.pt/.bin by `torch.save`. Nothing is written when timm cannot express
    the model. Build the timm model with `timm_create_model_call(model.config)`."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise CheckpointError(
            f"{path}: a timm state dict needs a .safetensors, .pth, .pt or .bin name"
        )
    tensors = {
        key: value.detach().cpu().contiguous()
        for key, value in vitkit_to_timm(model.config, model.state_dict()).items()
    }
    if path.suffix == ".safetensors":
        from safetensors.torch import save as safetensors_bytes

        payload = safetensors_bytes(tensors)
        atomic_write(path, lambda file: file.write(payload))
    else:
        atomic_write(path, lambda file: torch.save(tensors, file))
    return path
