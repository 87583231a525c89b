"""timm's `VisionTransformer` state dicts (.safetensors, .pth, .bin), read and written.

vitkit's module names follow timm's (patch_embed.proj, blocks.N.attn.qkv, ...), the names most
PyTorch ViT users know, so the conversion is a check of keys rather than a renaming. timm files do
not record the number of heads; it is taken from the paper's variant with the same width, or
given. Nor do they record the image size: a square patch grid is assumed unless `img_size` is
given. Numerics are timm's: exact GELU, LayerNorm eps 1e-6.

timm's ResNet + ViT hybrids (`timm.models.vision_transformer_hybrid`: vit_base_r50_s16_224, ...)
load too, their ResNetV2 under patch_embed.backbone (vitkit's module names are timm's), in timm's
numerics (resnet_numerics="timm": its StdConv2dSame and GroupNorm eps, TF-'SAME' padding).
Hybrids built with padding_same=False pad symmetrically, which a state dict cannot show and vitkit
does not model.

Register tokens (reg_token), the LayerNorm after average pooling (fc_norm, MAE/BEiT fine-tuning)
and position embeddings for the patches only (no_embed_class) are read off the keys and the
position embeddings' length; where both lengths (with and without prefix rows) form a square grid,
which happens for tiny grids only, the image size decides.

A state dict cannot tell timm's pooling either: with fc_norm the patch tokens are averaged
("avg"); otherwise with a [class] token the token is read (timm's default global_pool="token"),
without one the patch tokens are averaged ("avg" with fc_norm=False). A model built with
class_token=True, global_pool="avg" and fc_norm=False has the same keys as a "token" model and
would be read as one.

Nor does a state dict record its preprocessing. timm keeps it in the model's `pretrained_cfg`
(mean, std, interpolation), which a timm hub repository stores in the config.json beside the
weights: read from there when it is present (timm_folder.py), else Google's [-1, 1], what
the ViT weights timm took from Google's releases expect. The printed `timm.create_model` call
passes the model's record back in its `pretrained_cfg_overlay`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from torch import nn

from vitkit.errors import CheckpointError, ConfigError
from vitkit.io import atomic_write
from vitkit.models.config import (
    Classifier,
    Gelu,
    ViTConfig,
    as_pair,
    resnet_channels,
    resnet_stride,
)
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.resnet import NUMERICS
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value
from vitkit.weights.files import unwrap_key
from vitkit.weights.shapes import INDEX, block_indices, infer_num_heads, require_shape, square_side
from vitkit.weights.timm_dinov3 import (
    DINOV3_LAYER_NORM_EPS,
    DINOV3_MODEL_NAME,
    dinov3_fields,
    dinov3_kwargs,
    from_eva,
    is_timm_dinov3,
    to_eva,
)

# timm features with parameters that vitkit does not model (yet): refuse rather than drop them.
_UNSUPPORTED = {
    "dist_token": "a distillation token (DeiT dist_token)",
    "head_dist.": "a distillation head (DeiT head_dist)",
    ".q_norm.": "QK normalisation (qk_norm)",
    ".k_norm.": "QK normalisation (qk_norm)",
    ".attn.norm.": "a LayerNorm inside attention (scale_attn_norm)",
    ".mlp.norm.": "a LayerNorm inside the MLP (scale_mlp_norm)",
    "patch_embed.norm.": "a LayerNorm after the patch embedding (embed_norm_layer)",
}
# Keys every timm ViT that vitkit can represent has; their absence names the missing feature.
_REQUIRED = {
    "patch_embed.proj.weight": "no patch embedding convolution; is this a timm VisionTransformer?",
    "blocks.0.mlp.fc1.weight": "no blocks.0.mlp.fc1; is this a timm VisionTransformer?",
    "pos_embed": "no learned position embeddings (pos_embed='none')",
    "blocks.0.attn.proj.bias": "projections without bias (proj_bias=False)",
    "blocks.0.mlp.fc1.bias": "MLP layers without bias (proj_bias=False)",
}


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
    # The file is the authority on its layout (timm's ResNetV2 takes any); ViTConfig checks that
    # it is a sane one.
    layers = tuple(len(units[i]) for i in range(len(units)))
    resnet_width = require_shape(state, root, 4)[0]
    return dict(resnet_layers=layers, resnet_width=resnet_width, resnet_numerics="timm")


def _fits(num_patches: int, patch: int, img_size: tuple[int, int] | None) -> bool:
    """Whether `num_patches` positions form the patch grid: of `img_size` where given, else a
    square one; `patch` counts image pixels per token (the total stride for hybrids)."""
    if img_size is None:
        return square_side(num_patches) is not None
    height, width = img_size
    grid = (height // patch) * (width // patch)
    return not (height % patch or width % patch) and grid == num_patches


def _pos_embed_layout(
    length: int, prefix: int, patch: int, img_size: tuple[int, int] | None
) -> tuple[int, bool]:
    """(patch positions, no_embed_class) of `length` position embeddings with `prefix` tokens
    before the patches: timm gives the prefix tokens rows unless no_embed_class. A single row
    is not read as a 1x1 grid without prefix rows: one position tells no places apart, and a
    [class] token beside one row is likelier a broken file."""
    candidates = [(length - prefix, False)] + ([(length, True)] if prefix and length > 1 else [])
    fitting = [(count, flag) for count, flag in candidates if _fits(count, patch, img_size)]
    if len(fitting) == 1:
        return fitting[0]
    if len(fitting) == 2:
        raise CheckpointError(
            f"pos_embed: {length} positions are {length - prefix} patches with rows for the "
            f"{prefix} prefix tokens, or {length} patches without (no_embed_class); timm files "
            "do not record the image size: give it (img_size=(height, width))"
        )
    if img_size is not None:
        raise CheckpointError(
            f"pos_embed: {length} positions ({prefix} prefix tokens) do not fit img_size "
            f"{img_size[0]}x{img_size[1]} with patch size {patch}"
        )
    raise CheckpointError(
        f"pos_embed: {length - prefix} patch positions do not form a square grid ({length} "
        f"positions, {prefix} prefix tokens); timm files do not record the image size: give it "
        "(img_size=(height, width))"
    )


def _head_fields(
    state: dict[str, torch.Tensor], classifier: Classifier | None, *, default: Classifier
) -> dict[str, object]:
    """The prefix tokens, final norm and pooling of a timm state dict, as ViTConfig fields;
    `classifier`: the pooling where the file cannot show it (`pooling_unrecorded`), else it must
    be the one the file shows; `default`: the model's where it is not told (timm's
    global_pool default: "token" for its VisionTransformer, "avg" for its DINOv3)."""
    class_token = "cls_token" in state
    reg_tokens = require_shape(state, "reg_token", 3)[1] if "reg_token" in state else 0
    fc_norm = "fc_norm.weight" in state
    if fc_norm == ("norm.weight" in state):
        what = "both a final LayerNorm and fc_norm" if fc_norm else "no final LayerNorm"
        raise CheckpointError(f"has {what} (final_norm=False?), which vitkit does not support")
    # Attention pooling has parameters of its own; with fc_norm timm averages the patch tokens,
    # and without a [class] token there is only the average; a [class] token without fc_norm is
    # read as the model's default unless told otherwise.
    shown = default if class_token and not fc_norm else "gap"
    if "attn_pool.latent" in state:
        shown = "map"
        if require_shape(state, "attn_pool.latent", 3)[:2] != (1, 1):
            raise CheckpointError(
                f"attn_pool.latent: shape {tuple(state['attn_pool.latent'].shape)}: attention "
                "pooling with more than one query, which vitkit does not support"
            )
    if classifier is not None and classifier != shown:
        if "map" in (shown, classifier):
            has = "has" if shown == "map" else "has no"
            raise CheckpointError(f"{has} attention pooling (attn_pool); classifier="
                                  f"{classifier!r} contradicts it")  # fmt: skip
        if not pooling_unrecorded(state):
            why = "fc_norm, which only follows averaging" if fc_norm else "no [class] token"
            raise CheckpointError(f"has {why}, so it pools by averaging; classifier="
                                  f"{classifier!r} contradicts it")  # fmt: skip
    return dict(
        class_token=class_token,
        reg_tokens=reg_tokens,
        fc_norm=fc_norm,
        classifier=classifier or shown,
    )


def _block_fields(state: dict[str, torch.Tensor], gelu: Gelu | None) -> dict[str, object]:
    """LayerScale, CLIP's pre-norm and the numerics, as the keys show them. The files hold
    LayerScale's learned factors, not their start (timm's init_values): 1e-5, DINOv2's and
    timm's registers models', is taken, which matters only for training from scratch. Every
    timm model with a pre-norm (its CLIP towers) is built with LayerNorm eps 1e-5 and no patch
    bias; every other with eps 1e-6."""
    pre_norm = "norm_pre.weight" in state
    return dict(
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
        pre_norm=pre_norm,
        patch_bias="patch_embed.proj.bias" in state,
        gelu=gelu or "exact",
        layer_norm_eps=1e-5 if pre_norm else 1e-6,
        # timm resizes position embeddings bicubically (with antialiasing), at load and at
        # dynamic sizes alike.
        pos_embed_interpolation="bicubic",
    )


def activation_unrecorded(state: dict[str, torch.Tensor]) -> bool:
    """Whether the activation of a timm state dict is in doubt: its CLIP towers (with a
    pre-norm) compute exact GELU from OpenCLIP's weights and quick GELU from OpenAI's, with the
    same keys. Every other timm ViT computes exact GELU unless built otherwise."""
    return "norm_pre.weight" in state


def pooling_unrecorded(state: dict[str, torch.Tensor]) -> bool:
    """Whether a timm state dict cannot show its pooling: with a [class] token and no fc_norm,
    global_pool="token" and global_pool="avg" (fc_norm=False) have the same keys."""
    recorded = "fc_norm.weight" in state or "attn_pool.latent" in state
    return "cls_token" in state and not recorded


def config_from_timm(
    state: dict[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    classifier: Classifier | None = None,
    gelu: Gelu | None = None,
    rotary: bool = False,
) -> ViTConfig:
    """Infer the architecture of a timm ViT state dict from its keys and shapes.

    rotary: a DINOv3 in VisionTransformer's key names (weights/timm_dinov3.py), whose tokens are
        placed by rotary embeddings instead of `pos_embed`.

    gelu: the activation, which no key shows: timm's GELU unless told (`activation_unrecorded`).

    classifier: the pooling, where the keys cannot show it (`pooling_unrecorded`); by default
        timm's global_pool="token".
    img_size: the image size the checkpoint's position embeddings were learned for; needed for
        non-square grids, which the position embeddings' length alone does not determine.
    """
    for fragment, feature in _UNSUPPORTED.items():
        keys = [key for key in state if fragment in key]
        if keys:
            raise CheckpointError(f"uses {feature} ({keys[0]}), which vitkit does not support yet")
    for key, problem in _REQUIRED.items():
        if key not in state and not (rotary and key == "pos_embed"):
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
    num_heads = infer_num_heads(width, num_heads, source="timm")
    head = _head_fields(state, classifier, default="gap" if rotary else "token")
    if rotary:
        positions = dinov3_fields(img_size, qkv_bias="blocks.0.attn.qkv.bias" in state)
    else:
        positions = _learned_positions(state, head, stride, img_size)
    block_fields = {**_block_fields(state, gelu), **positions}
    return ViTConfig(
        **hybrid,
        **head,
        patch_size=patch,
        in_chans=in_chans,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=fc1[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_classes=require_shape(state, "head.weight", 2)[0] if "head.weight" in state else 0,
        **block_fields,
    )


def _learned_positions(
    state: dict[str, torch.Tensor],
    head: dict[str, object],
    stride: int,
    img_size: int | tuple[int, int] | None,
) -> dict[str, object]:
    """The image size and no_embed_class that `pos_embed`'s length gives (`_pos_embed_layout`),
    with the prefix tokens of `head` and `stride` image pixels per token."""
    prefix = int(head["class_token"]) + head["reg_tokens"]
    size = None if img_size is None else as_pair(img_size)
    length = require_shape(state, "pos_embed", 3)[1]
    num_patches, no_embed_class = _pos_embed_layout(length, prefix, stride, size)
    side = square_side(num_patches)
    grid = (size[0] // stride, size[1] // stride) if size is not None else (side, side)
    return dict(no_embed_class=no_embed_class, img_size=(grid[0] * stride, grid[1] * stride))


def timm_to_vitkit(
    state: dict[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    classifier: Classifier | None = None,
    gelu: Gelu | None = None,
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a timm ViT state dict to (config, state dict in vitkit's naming).

    num_heads: needed when the width is no paper variant's (timm files omit it).
    img_size: the checkpoint's image size, needed when its patch grid is not square.
    classifier: the pooling, where the keys cannot show it (`config_from_timm`).
    gelu: the activation (`config_from_timm`).
    """
    converted = {}
    for key, value in state.items():
        key = unwrap_key(key)
        for old, new in _ROOT_ONLY_RENAMES.items():
            if key.startswith(old):
                key = new + key.removeprefix(old)
        converted[key] = value
    rotary = is_timm_dinov3(converted)
    if rotary:
        converted = from_eva(converted)
    config = config_from_timm(
        converted,
        num_heads=num_heads,
        img_size=img_size,
        classifier=classifier,
        gelu=gelu,
        rotary=rotary,
    )
    return config, converted


def timm_preprocessing(pretrained_cfg: dict | None, config: ViTConfig) -> Preprocessing:
    """The preprocessing of timm weights at the model's resolution: the mean, std and
    interpolation of their `pretrained_cfg` where there is one (an interpolation other than
    bilinear or bicubic is read as bilinear; the centre crop of `crop_pct` is not applied, as in
    the paper's test-time pipeline), else Google's [-1, 1]."""
    default = Preprocessing.google(config.img_size, channels=config.in_chans)
    if pretrained_cfg is None:
        return default
    interpolation = pretrained_cfg.get("interpolation")
    values = dict(
        resolution=config.img_size,
        mean=pretrained_cfg.get("mean", default.mean),
        std=pretrained_cfg.get("std", default.std),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
    )
    names = {"mean": "pretrained_cfg.mean", "std": "pretrained_cfg.std"}
    try:
        return Preprocessing.from_fields(values, names=names)
    except ConfigError as error:
        raise CheckpointError(f"config.json: {error}") from None


# ---------------------------------------------------------------------------------------------
# Writing: vitkit -> timm. A timm state dict holds only tensors; the architecture and numerics go
# into the arguments of `timm.create_model`, which `timm_model_kwargs` gives.

# Any timm ViT name will do for a plain ViT, as every architecture argument is passed explicitly;
# this one sets nothing else (its model_args are patch_size, embed_dim, depth and num_heads).
TIMM_MODEL_NAME = "vit_base_patch16_224"
# timm builds its hybrids only from registered names, each fixing the ResNet: the stage layout, a
# 64-channel root, TF-'SAME' padding and timm's numerics. Every other argument is passed.
TIMM_HYBRID_NAMES: dict[tuple[int, ...], str] = {
    (): "vit_tiny_r_s16_p8_224",
    (2, 2, 2, 2): "vit_small_r26_s32_224",
    (3, 4, 9): "vit_base_r50_s16_224",
    (3, 4, 6, 3): "vit_large_r50_s32_224",
}
TIMM_RESNET_WIDTH = 64


# What timm's VisionTransformer can hold (weights/capabilities.py); the reasons for the narrow
# ones are `timm_model_kwargs`'s.
TIMM_HOLDS: Holds = {
    **PAPER_FIELDS,
    "qkv_bias": ANY,
    "classifier": ANY,
    "class_token": ANY,
    "reg_tokens": ANY,
    "no_embed_class": ANY,
    "fc_norm": ANY,
    "gelu": ANY,
    "layer_norm_eps": ANY,
    "layer_scale_init": ANY,
    "pre_norm": ANY,
    "patch_bias": ANY,
    "resnet_layers": ANY,
    "resnet_width": ANY,
    "resnet_numerics": ANY,
}


def timm_model_name(config: ViTConfig) -> str:
    """The registered timm name to build a model of `config` from (see `timm_model_kwargs`)."""
    if config.pos_embed_type == "rope_2d":
        return DINOV3_MODEL_NAME
    if not config.is_hybrid:
        return TIMM_MODEL_NAME
    name = TIMM_HYBRID_NAMES.get(config.resnet_layers)
    if name is None or config.resnet_width != TIMM_RESNET_WIDTH:
        layouts = ", ".join(map(str, TIMM_HYBRID_NAMES))
        raise CheckpointError(
            f"timm builds ResNet + ViT hybrids only from registered names, whose ResNets have a "
            f"{TIMM_RESNET_WIDTH}-channel root and the stage layouts {layouts}; this model's is "
            f"{config.resnet_layers} with a {config.resnet_width}-channel root"
        )
    return name


def timm_model_kwargs(config: ViTConfig) -> dict[str, object]:
    """Keyword arguments for `timm.create_model(timm_model_name(config), **kwargs)` that build the
    timm model computing what a vitkit model of `config` computes (hybrids in google numerics:
    see `vitkit_to_timm`).

    Raises CheckpointError for what timm's VisionTransformer cannot express: the pre-logits
    layer (timm has no Linear + tanh before the head), hybrids timm has no name for, position
    information other than one learned 1-D embedding per token.
    """
    timm_model_name(config)
    if config.pos_embed_type == "rope_2d":  # timm's DINOv3, an Eva
        kwargs = {**dinov3_kwargs(config), "mlp_ratio": _mlp_ratio(config)}
        if config.layer_norm_eps != DINOV3_LAYER_NORM_EPS:
            kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=config.layer_norm_eps)
        return kwargs
    if problem := no_place(config, TIMM_HOLDS, holder="timm's VisionTransformer"):
        raise CheckpointError(problem)
    if config.patch_bias == config.pre_norm:
        having = "with" if config.patch_bias else "without"
        raise CheckpointError(
            f"timm builds its patch embedding without bias exactly when it has a pre-norm "
            f"(CLIP), but this model has pre_norm={config.pre_norm} {having} a patch bias"
        )
    if config.representation_size:
        raise CheckpointError(
            f"timm's VisionTransformer has no pre-logits layer (Linear + tanh, here of size "
            f"{config.representation_size}); drop it first (load with num_classes=...)"
        )
    kwargs: dict[str, object] = dict(
        img_size=config.img_size,
        patch_size=config.patch_size,
        in_chans=config.in_chans,
        num_classes=config.num_classes,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=_mlp_ratio(config),
        qkv_bias=config.qkv_bias,
        class_token=config.class_token,
        # vitkit's "gap" averages the patch tokens (timm leaves the [class] token and registers
        # out of the average, as vitkit does), after the final norm or, with fc_norm, before it.
        global_pool={"token": "token", "gap": "avg", "map": "map"}[config.classifier],
        fc_norm=config.fc_norm,
    )
    if config.reg_tokens:
        kwargs["reg_tokens"] = config.reg_tokens
    if config.no_embed_class:
        kwargs["no_embed_class"] = True
    # A CLIP tower names its activation even when it is timm's default: its files cannot say
    # which (`activation_unrecorded`), so the written config.json must.
    if config.gelu != "exact" or config.pre_norm:
        kwargs["act_layer"] = {"exact": "gelu", "tanh": "gelu_tanh", "quick": "quick_gelu"}[
            config.gelu
        ]
    if config.layer_scale_init is not None:
        kwargs["init_values"] = config.layer_scale_init
    if config.pre_norm:
        kwargs["pre_norm"] = True
    if config.layer_norm_eps != 1e-6:  # timm's default
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=config.layer_norm_eps)
    if problem := unheld_value(config, TIMM_HOLDS, holder="timm's VisionTransformer"):
        raise CheckpointError(problem)
    return kwargs


def _mlp_ratio(config: ViTConfig) -> float:
    """timm's MLP width is int(embed_dim * mlp_ratio); where mlp_dim / width rounds below
    mlp_dim (e.g. 49 / 44), aiming half a unit higher still truncates to mlp_dim."""
    mlp_ratio = config.mlp_dim / config.width
    if int(config.width * mlp_ratio) != config.mlp_dim:
        mlp_ratio = (config.mlp_dim + 0.5) / config.width
    return mlp_ratio


def timm_create_model_call(
    config: ViTConfig,
    *,
    path: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
) -> str:
    """Python that builds the matching timm model as `model`, for printing; run with `timm`
    imported. With `path` (the written file) the model loads it through timm's own pretrained
    path (`pretrained_cfg_overlay=dict(file=..., num_classes=...)`: the same num_classes keeps
    timm from dropping the head); without, it is randomly initialised. `preprocessing` (the
    model's record) goes into the overlay too, as timm's `input_size`, `mean`, `std` and
    `interpolation`, so that timm's `resolve_data_config(model=model)` preprocesses as vitkit."""
    imports, arguments = "", []
    for name, value in timm_model_kwargs(config).items():
        value_text = repr(value)
        if name == "norm_layer":
            imports = "import functools, torch; "
            value_text = f"functools.partial(torch.nn.LayerNorm, eps={config.layer_norm_eps!r})"
        arguments.append(f"{name}={value_text}")
    overlay: dict[str, object] = {}
    if path is not None:
        overlay.update(file=str(path), num_classes=config.num_classes)
        if config.is_hybrid:  # timm's hybrid presets read Google's .npz by a custom loader
            overlay["custom_load"] = False
    if preprocessing is not None:
        overlay.update(
            input_size=(config.in_chans, *preprocessing.resolution),
            mean=preprocessing.mean,
            std=preprocessing.std,
            interpolation=preprocessing.interpolation,
            # the whole image resized, as vitkit feeds the model (vitkit.data.model_input)
            crop_pct=1.0,
            crop_mode="squash",
        )
    weights = "pretrained=True" if path is not None else "pretrained=False"
    if overlay:
        items = ", ".join(f"{key}={value!r}" for key, value in overlay.items())
        weights += f", pretrained_cfg_overlay=dict({items})"
    call = f"timm.create_model({timm_model_name(config)!r}, {weights}, {', '.join(arguments)})"
    return f"{imports}model = {call}"


def _as_timm_std_conv(weight: torch.Tensor) -> torch.Tensor:
    """A kernel of Google's numerics rescaled per output channel so that timm's standardisation
    of it equals Google's of the original (models/resnet.py's `NUMERICS`: Google's
    (w - mean) / (std + e_g), timm's (w - mean) / sqrt(var + e_t)). Standardisation removes a
    kernel's scale except through its eps: scaling channel c by a with
    a^2 ((std + e_g)^2 - std^2) = e_t makes a (w - mean) / sqrt(a^2 var + e_t) equal
    (w - mean) / (std + e_g) exactly."""
    e_g, e_t = NUMERICS["google"].ws_eps, NUMERICS["timm"].ws_eps
    kernel = weight.double()
    std = kernel.std(dim=(1, 2, 3), keepdim=True, correction=0)
    scale = (e_t / (2 * e_g * std + e_g**2)).sqrt()
    return (kernel * scale).to(weight.dtype)


def vitkit_to_timm(config: ViTConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vitkit state dict as timm's, after checking that timm can express `config`. The names
    are the same (vitkit follows timm's) but for the root-only hybrid's stem, which timm keeps at
    the backbone's top level. A hybrid's kernels in Google's numerics are rescaled for timm's
    weight standardisation (exactly); GroupNorm's eps (`NUMERICS`' group_norm_eps) acts on the
    data and cannot be carried over, which moves outputs by about 1e-5 (tests measure it)."""
    timm_model_kwargs(config)
    if config.pos_embed_type == "rope_2d":
        return to_eva(config, state)
    converted = {}
    for key, value in state.items():
        if config.is_hybrid and config.resnet_numerics == "google":
            if key.startswith(_BACKBONE) and value.ndim == 4:
                value = _as_timm_std_conv(value)
        if config.resnet_layers == ():
            for timm_name, vitkit_name in _ROOT_ONLY_RENAMES.items():
                if key.startswith(vitkit_name):
                    key = timm_name + key.removeprefix(vitkit_name)
        converted[key] = value
    return converted


def write_timm(model: torch.nn.Module, path: Path) -> Path:
    """Write `model` (a vitkit VisionTransformer) as a timm state dict, atomically: .safetensors
    by safetensors, .pth/.pt/.bin by `torch.save`. Nothing is written when timm cannot express
    the model. Build the timm model with `timm_create_model_call(model.config, path=path)`."""
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
