"""transformers' DINOv3 directories (`DINOv3ViTModel`, Siméoni et al. 2025), read and written:
the ViT backbones of DINOv3, whose tokens know their place by rotary embeddings of the queries
and keys (vitkit's pos_embed_type "rope_2d", models/positions.py) instead of a learned table.
transformers' `hf.py` reads and writes the directory; this module the architecture and tensors.

A DINOv3 ViT is a ViT with LayerScale (`layer_scale1.lambda1`), registers after the [class]
token, no position table, and a [class] token read through the final LayerNorm. Its attention
has no key bias (key_bias=false; the rotary embedding would turn one with each key's position):
vitkit's fused projection holds zeros there and leaves them out (ViTConfig.key_bias). The
gated MLP of the largest models,
other rotary periods than 100 and a head are refused; the [mask] token (pre-training only) is
not read, and written as zeros. Files on the Hub name the blocks `layer.N.`, transformers 5's
modules `model.layer.N.`: both are read, the Hub's written.
"""

from __future__ import annotations

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.models.config import ViTConfig, config_from_fields
from vitkit.models.positions import Rope2D
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value
from vitkit.weights.hf_family import SIZE_NAMES, HFFamily, sizes_entries
from vitkit.weights.key_maps import Row, read_renamed, to_foreign

DINOV3_MODEL_TYPES = ("dinov3_vit",)

_HUB, _V5 = "layer.{i}.", "model.layer.{i}."


def _block(vitkit: str, foreign: str) -> Row:
    return Row(f"blocks.{{i}}.{vitkit}", _HUB + foreign, aliases=(_V5 + foreign,))


# fmt: off
DINOV3_KEYS: tuple[Row, ...] = (
    Row("cls_token", "embeddings.cls_token"),
    Row("reg_token", "embeddings.register_tokens"),
    Row("patch_embed.proj.{w}", "embeddings.patch_embeddings.{w}"),
    _block("norm1.{w}", "norm1.{w}"),
    _block("attn.qkv.{w}", "attention.q_proj.{w}"),
    _block("attn.qkv.{w}", "attention.k_proj.{w}"),
    _block("attn.qkv.{w}", "attention.v_proj.{w}"),
    _block("attn.proj.{w}", "attention.o_proj.{w}"),
    _block("ls1.gamma", "layer_scale1.lambda1"),
    _block("norm2.{w}", "norm2.{w}"),
    _block("mlp.fc1.{w}", "mlp.up_proj.{w}"),
    _block("mlp.fc2.{w}", "mlp.down_proj.{w}"),
    _block("ls2.gamma", "layer_scale2.lambda1"),
    Row("norm.{w}", "norm.{w}"),
)
# fmt: on
_REQUIRED_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
_MASK_TOKEN = "embeddings.mask_token"
_NAMES = {**SIZE_NAMES, "qkv_bias": "query_bias", "layer_scale_init": "layerscale_value"}

# What a DINOv3 directory can hold (weights/capabilities.py): the backbone only.
DINOV3_HOLDS: Holds = {
    **PAPER_FIELDS,
    "num_classes": (0,),
    "qkv_bias": ANY,
    "key_bias": ANY,
    "classifier": ("token",),
    "class_token": (True,),
    "reg_tokens": ANY,
    "gelu": ("exact",),
    "layer_norm_eps": ANY,
    "layer_scale_init": ANY,
    "pos_embed_type": ("rope_2d",),
}


def _flag(hf_config: dict, name: str, default: bool) -> bool:
    value = hf_config.get(name, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: {name} must be true or false, got {value!r:.40}")
    return value


def dinov3_to_vitkit(
    hf_config: dict, hf_state: dict[str, torch.Tensor]
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """(config, vitkit state dict) of a transformers DINOv3 directory's config and weights."""
    config_values = _checked_settings(hf_config)
    qkv_bias = _flag(hf_config, "query_bias", True)
    if _flag(hf_config, "value_bias", True) != qkv_bias:
        raise CheckpointError(
            "config.json: query_bias and value_bias differ, which vitkit's one query/key/value "
            "projection cannot hold"
        )
    state = {key: value for key, value in hf_state.items() if key != _MASK_TOKEN}
    key_bias = _flag(hf_config, "key_bias", False)
    if qkv_bias and not key_bias:  # zeros where the fused projection's keys' third would be
        for key in [key for key in state if key.endswith("attention.q_proj.bias")]:
            keys = key.replace("q_proj", "k_proj")
            state[keys] = torch.zeros_like(state[key])
    state = read_renamed(DINOV3_KEYS, state, source="transformers DINOv3")
    registers = state.get("reg_token")
    if registers is not None and registers.ndim == 3 and registers.shape[1] == 0:
        del state["reg_token"]  # transformers keeps an empty table for no registers
        registers = None
    values = dict(
        config_values,
        qkv_bias=qkv_bias,
        key_bias=key_bias or not qkv_bias,
        reg_tokens=registers.shape[1] if registers is not None and registers.ndim == 3 else 0,
    )
    try:
        return config_from_fields(values, names=_NAMES), state
    except ConfigError as error:
        raise CheckpointError(f"config.json: {error}") from None


def _checked_settings(hf_config: dict) -> dict[str, object]:
    """The ViTConfig fields config.json sets, after refusing what vitkit does not model."""
    missing = [name for name in _REQUIRED_FIELDS if name not in hf_config]
    if missing:
        raise CheckpointError(f"config.json: missing field {missing[0]!r}")
    if _flag(hf_config, "use_gated_mlp", False):
        raise CheckpointError("config.json: use_gated_mlp (a gated MLP) is not supported by vitkit")
    for name in ("proj_bias", "mlp_bias"):
        if not _flag(hf_config, name, True):
            raise CheckpointError(f"config.json: {name}=false is not supported by vitkit")
    activation = hf_config.get("hidden_act", "gelu")
    if activation != "gelu":
        raise CheckpointError(f"config.json: hidden_act {activation!r:.60} is not 'gelu'")
    theta = hf_config.get("rope_theta", Rope2D.ROPE_BASE)
    if theta != Rope2D.ROPE_BASE:
        raise CheckpointError(
            f"config.json: rope_theta {theta!r:.40} is not DINOv3's {Rope2D.ROPE_BASE:g}, the "
            "only rotary period vitkit computes"
        )
    return dict(
        img_size=hf_config.get("image_size", 224),
        patch_size=hf_config.get("patch_size", 16),
        in_chans=hf_config.get("num_channels", 3),
        width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        mlp_dim=hf_config["intermediate_size"],
        num_classes=0,
        layer_scale_init=hf_config.get("layerscale_value", 1.0),
        gelu="exact",
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-5),
        pos_embed_type="rope_2d",
    )


def dinov3_refusal(config: ViTConfig) -> str | None:
    """Why a transformers DINOv3 cannot hold `config`, or None when it can."""
    if problem := no_place(config, DINOV3_HOLDS, holder="transformers' DINOv3"):
        return problem
    if config.num_classes:
        return (
            "transformers' DINOv3ViTModel has no head, but this model classifies into "
            f"{config.num_classes} classes (num_classes); its backbone can be written "
            "(num_classes=0)"
        )
    return unheld_value(config, DINOV3_HOLDS, holder="transformers' DINOv3")


def vitkit_to_dinov3(
    config: ViTConfig, state: dict[str, torch.Tensor]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of the transformers DINOv3 computing what a vitkit model of
    `config` computes. A model without LayerScale gets factors of 1, which change nothing."""
    if problem := dinov3_refusal(config):
        raise CheckpointError(problem)
    state = dict(state)
    if config.layer_scale_init is None:
        for block in range(config.depth):
            for scale in ("ls1", "ls2"):
                state[f"blocks.{block}.{scale}.gamma"] = torch.ones(config.width)
    hf_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        tensors = to_foreign(DINOV3_KEYS, key, value)
        if tensors is None:
            raise CheckpointError(f"{key}: transformers' DINOv3 has no place for this parameter")
        hf_state.update(tensors)
    key_bias = config.qkv_bias and config.key_bias
    if not key_bias:  # the keys' third of vitkit's bias, zeros the computation leaves out
        for key in [key for key in hf_state if key.endswith("attention.k_proj.bias")]:
            del hf_state[key]
    hf_state[_MASK_TOKEN] = state["cls_token"].new_zeros(1, 1, config.width)
    if not config.reg_tokens:  # transformers keeps an empty table for no registers
        hf_state["embeddings.register_tokens"] = state["cls_token"].new_zeros(1, 0, config.width)
    hf_config = {
        "architectures": ["DINOv3ViTModel"],
        "model_type": DINOV3_MODEL_TYPES[0],
        **sizes_entries(config),
        "intermediate_size": config.mlp_dim,
        "hidden_act": "gelu",
        "layerscale_value": config.layer_scale_init or 1.0,
        "rope_theta": Rope2D.ROPE_BASE,
        "query_bias": config.qkv_bias,
        "key_bias": key_bias,
        "value_bias": config.qkv_bias,
        "proj_bias": True,
        "mlp_bias": True,
        "use_gated_mlp": False,
        "num_register_tokens": config.reg_tokens,
    }
    return hf_config, hf_state


# Written for models with rotary positions.
DINOV3 = HFFamily(
    model_types=DINOV3_MODEL_TYPES,
    writes=lambda config: config.pos_embed_type == "rope_2d",
    read=dinov3_to_vitkit,
    refusal=dinov3_refusal,
    write=vitkit_to_dinov3,
)
