"""transformers' DINOv2 directories (`Dinov2Model`, `Dinov2WithRegistersModel`), read and
written: the backbones of Oquab et al. 2023 and Darcet et al. 2024 that people fine-tune and
probe. transformers' `hf.py` reads and writes the directory (config.json, weights, preprocessing,
class names); this module the architecture and the tensors of this family.

A DINOv2 is a ViT with LayerScale (`layer_scale1.lambda1`, vitkit's `ls1.gamma`), a [class]
token read through the final LayerNorm, and position embeddings with a row for the [class]
token. With registers, transformers inserts the registers after the position embeddings are
added, so they have none; vitkit folds the [class] row into the [class] token (the same sum
every forward computes) and keeps patch rows only (no_embed_class), and writes a zero row back.

transformers resizes the patch rows bicubically: without antialiasing for DINOv2, with it for
DINOv2 with registers (PyTorch's antialiased bicubic also takes another cubic, a = -0.5 against
-0.75, so the two differ at every size); vitkit reads which.

`Dinov2ForImageClassification` is refused: its head reads the [class] token and the mean patch
token side by side, a pooling vitkit does not have. The [mask] token (masked-image modelling
only) is not read, and written as zeros.
"""

from __future__ import annotations

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.models.config import ViTConfig, config_from_fields
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value
from vitkit.weights.hf_family import HFFamily, sizes_entries
from vitkit.weights.key_maps import Row, read_renamed, to_foreign

DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")

# Every parameter under vitkit's key, the key of the files on the Hub (written) and that of
# transformers 5's modules (read too); query, key and value fuse into vitkit's qkv.
_LAYER = "encoder.layer.{i}."
# fmt: off
DINOV2_KEYS: tuple[Row, ...] = (
    Row("cls_token", "embeddings.cls_token"),
    Row("reg_token", "embeddings.register_tokens"),
    Row("pos_embed", "embeddings.position_embeddings"),
    Row("patch_embed.proj.{w}", "embeddings.patch_embeddings.projection.{w}"),
    Row("blocks.{i}.norm1.{w}", _LAYER + "norm1.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "attention.attention.query.{w}",
        aliases=(_LAYER + "attention.q_proj.{w}",)),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "attention.attention.key.{w}",
        aliases=(_LAYER + "attention.k_proj.{w}",)),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "attention.attention.value.{w}",
        aliases=(_LAYER + "attention.v_proj.{w}",)),
    Row("blocks.{i}.attn.proj.{w}", _LAYER + "attention.output.dense.{w}",
        aliases=(_LAYER + "attention.o_proj.{w}",)),
    Row("blocks.{i}.ls1.gamma", _LAYER + "layer_scale1.lambda1"),
    Row("blocks.{i}.norm2.{w}", _LAYER + "norm2.{w}"),
    Row("blocks.{i}.mlp.fc1.{w}", _LAYER + "mlp.fc1.{w}"),
    Row("blocks.{i}.mlp.fc2.{w}", _LAYER + "mlp.fc2.{w}"),
    Row("blocks.{i}.ls2.gamma", _LAYER + "layer_scale2.lambda1"),
    Row("norm.{w}", "layernorm.{w}"),
)
# fmt: on
_REQUIRED_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers")
_MASK_TOKEN = "embeddings.mask_token"

# What a DINOv2 directory can hold (weights/capabilities.py): the backbone only.
DINOV2_HOLDS: Holds = {
    **PAPER_FIELDS,
    "num_classes": (0,),
    "qkv_bias": ANY,
    "classifier": ("token",),
    "class_token": (True,),
    "reg_tokens": ANY,
    "no_embed_class": ANY,
    "gelu": ("exact",),
    "layer_norm_eps": ANY,
    "layer_scale_init": ANY,
}


def dinov2_to_vitkit(
    hf_config: dict, hf_state: dict[str, torch.Tensor]
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """(config, vitkit state dict) of a transformers DINOv2 directory's config and weights."""
    if "classifier.weight" in hf_state:
        raise CheckpointError(
            "Dinov2ForImageClassification's head reads the [class] token and the mean patch "
            "token side by side, a pooling vitkit does not have; its backbone (Dinov2Model) "
            "loads"
        )
    state = {key: value for key, value in hf_state.items() if key != _MASK_TOKEN}
    state = read_renamed(DINOV2_KEYS, state, source="transformers DINOv2")
    registers = "reg_token" in state
    if registers:  # fold the [class] row into the token: the registers have no rows
        for key, name in (("cls_token", "cls_token"), ("pos_embed", "position_embeddings")):
            if key not in state:
                raise CheckpointError(f"missing key 'embeddings.{name}'")
        positions = state["pos_embed"]
        if positions.ndim != 3 or positions.shape[1] < 2:
            raise CheckpointError(
                f"embeddings.position_embeddings: shape {tuple(positions.shape)} has no [class] "
                "row and patch rows"
            )
        state["cls_token"] = state["cls_token"] + positions[:, :1]
        state["pos_embed"] = positions[:, 1:]
    return _config(hf_config, state, registers=registers), state


def _config(hf_config: dict, state: dict[str, torch.Tensor], *, registers: bool) -> ViTConfig:
    missing = [name for name in _REQUIRED_FIELDS if name not in hf_config]
    if missing:
        raise CheckpointError(f"config.json: missing field {missing[0]!r}")
    if hf_config.get("use_swiglu_ffn", False) is not False:
        raise CheckpointError(
            "config.json: use_swiglu_ffn (a gated MLP, DINOv2-g) is not supported by vitkit"
        )
    activation = hf_config.get("hidden_act", "gelu")
    if activation != "gelu":
        raise CheckpointError(f"config.json: hidden_act {activation!r:.60} is not 'gelu'")
    width = hf_config["hidden_size"]
    ratio = hf_config.get("mlp_ratio", 4)
    if isinstance(ratio, bool) or not isinstance(ratio, int) or not 0 < ratio <= 64:
        raise CheckpointError(
            f"config.json: mlp_ratio must be an integer from 1 to 64, got {ratio!r:.40}"
        )
    mlp_dim = width * ratio if isinstance(width, int) else width
    values = dict(
        img_size=hf_config.get("image_size", 224),
        patch_size=hf_config.get("patch_size", 14),
        in_chans=hf_config.get("num_channels", 3),
        width=width,
        depth=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        mlp_dim=mlp_dim,
        qkv_bias=hf_config.get("qkv_bias", True),
        num_classes=0,
        reg_tokens=state["reg_token"].shape[1] if registers and state["reg_token"].ndim == 3 else 0,
        no_embed_class=registers,
        layer_scale_init=hf_config.get("layerscale_value", 1.0),
        gelu="exact",
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-6),
        pos_embed_interpolation="bicubic" if registers else "bicubic_no_antialias",
    )
    names = {"img_size": "image_size", "patch_size": "patch_size", "in_chans": "num_channels",
             "width": "hidden_size", "depth": "num_hidden_layers",
             "num_heads": "num_attention_heads", "mlp_dim": "mlp_ratio", "qkv_bias": "qkv_bias",
             "layer_scale_init": "layerscale_value",
             "layer_norm_eps": "layer_norm_eps"}  # fmt: skip
    try:
        return config_from_fields(values, names=names)
    except ConfigError as error:
        raise CheckpointError(f"config.json: {error}") from None


def dinov2_refusal(config: ViTConfig) -> str | None:
    """Why a transformers DINOv2 cannot hold `config`, or None when it can."""
    if problem := no_place(config, DINOV2_HOLDS, holder="transformers' DINOv2"):
        return problem
    if config.num_classes:
        return (
            "transformers' DINOv2 with a head (Dinov2ForImageClassification) pools the [class] "
            "token and the mean patch token together, but this model reads the [class] token "
            f"alone into {config.num_classes} classes; its backbone can be written "
            "(num_classes=0)"
        )
    if config.reg_tokens and not config.no_embed_class:
        return (
            "transformers' DINOv2 with registers gives the registers no position embeddings, "
            f"but this model has {config.reg_tokens} registers with rows of their own"
        )
    if config.img_size[0] != config.img_size[1]:
        return "transformers' DINOv2 reads its position embeddings as a square grid"
    if config.mlp_dim % config.width:
        return (
            "transformers' DINOv2 records the MLP width as a whole multiple of the width "
            f"(mlp_ratio), but this model's is {config.mlp_dim} for width {config.width}"
        )
    return unheld_value(config, DINOV2_HOLDS, holder="transformers' DINOv2")


def vitkit_to_dinov2(
    config: ViTConfig, state: dict[str, torch.Tensor]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of the transformers DINOv2 computing what a vitkit model of
    `config` computes: `Dinov2WithRegistersModel` with registers, else `Dinov2Model`."""
    if problem := dinov2_refusal(config):
        raise CheckpointError(problem)
    hf_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "pos_embed" and config.no_embed_class:  # the [class] row is in the token
            value = torch.cat([value.new_zeros(1, 1, config.width), value], dim=1)
        tensors = to_foreign(DINOV2_KEYS, key, value)
        if tensors is None:
            raise CheckpointError(f"{key}: transformers' DINOv2 has no place for this parameter")
        hf_state.update(tensors)
    hf_state[_MASK_TOKEN] = state["cls_token"].new_zeros(1, config.width)
    registers = config.reg_tokens > 0
    hf_config = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": DINOV2_MODEL_TYPES[registers],
        **sizes_entries(config),
        "mlp_ratio": config.mlp_dim // config.width,
        "hidden_act": "gelu",
        "qkv_bias": config.qkv_bias,
        "layerscale_value": config.layer_scale_init,
        "use_swiglu_ffn": False,
    }
    if registers:
        hf_config["num_register_tokens"] = config.reg_tokens
    return hf_config, hf_state


# Written for models with LayerScale (after DINOv3, SigLIP and CLIP, which have their own).
DINOV2 = HFFamily(
    model_types=DINOV2_MODEL_TYPES,
    writes=lambda config: config.layer_scale_init is not None,
    read=dinov2_to_vitkit,
    refusal=dinov2_refusal,
    write=vitkit_to_dinov2,
)
