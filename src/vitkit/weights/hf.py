"""Hugging Face transformers ViT directories (config.json + model.safetensors/pytorch_model.bin).

Handles `ViTForImageClassification` (head "classifier") and `ViTModel` (optionally with its
pooler, Linear + tanh on the [class] token, which is the paper's pre-logits layer). Both the key
names of files on the Hub (encoder.layer.N.attention.attention.query, ...) and those of
transformers 5 modules (layers.N.attention.q_proj, ...) are read. Numerics are taken from the
config: exact GELU for "gelu", LayerNorm eps usually 1e-12.
"""

from __future__ import annotations

import re

import torch

from vitkit.models.config import ViTConfig
from vitkit.weights.errors import CheckpointError

# transformers' ACT2FN names: the exact (erf) GELU, and the tanh approximation.
_EXACT_GELUS = ("gelu", "gelu_python")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")

# (pattern over a key without the "vit." prefix, vitkit name); {i} is the block index.
_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", "patch_embed.proj.{0}"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", "blocks.{0}.norm1.{1}"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", "blocks.{0}.norm2.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", "blocks.{0}.attn.proj.{1}"),
    (r"layers\.(\d+)\.attention\.o_proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", "blocks.{0}.mlp.fc1.{1}"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", "blocks.{0}.mlp.fc2.{1}"),
    (r"layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", "blocks.{0}.mlp.{1}.{2}"),
    (r"layernorm\.(weight|bias)", "norm.{0}"),
    (r"pooler\.dense\.(weight|bias)", "pre_logits.0.{0}"),
    (r"classifier\.(weight|bias)", "head.{0}"),
]
# The separate q, k, v projections, fused into vitkit's one qkv projection.
_QKV = [
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)"),
    (r"layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)"),
]


def _patch_size(value: int | list[int]) -> int:
    """config.json's patch_size, an int or an [h, w] pair (square patches only)."""
    if isinstance(value, int):
        return value
    height, width = value
    if height != width:
        raise CheckpointError(
            f"config.json: non-square {height}x{width} patches, which vitkit does not support"
        )
    return int(height)


def config_from_hf(
    hf_config: dict, state: dict[str, torch.Tensor], preprocessor: dict | None = None
) -> ViTConfig:
    """vitkit's config for a transformers `ViTConfig` dict and its (vitkit-named) weights.

    preprocessor: the directory's preprocessor_config.json, whose image_mean/image_std are the
    normalisation the weights expect (ViTImageProcessor's default is 0.5, i.e. [-1, 1]).
    """
    preprocessor = preprocessor or {}
    if hf_config.get("model_type", "vit") != "vit":
        raise CheckpointError(f"config.json: model_type {hf_config['model_type']!r} is not 'vit'")
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in (*_EXACT_GELUS, *_TANH_GELUS):
        raise CheckpointError(f"config.json: hidden_act {activation!r} is not a GELU")
    # vitkit's pre-logits layer is Linear + tanh; transformers' pooler applies `pooler_act`.
    pooler_act = hf_config.get("pooler_act", "tanh")
    if "pre_logits.0.weight" in state and pooler_act != "tanh":
        raise CheckpointError(
            f"config.json: the pooler's activation pooler_act={pooler_act!r} is not 'tanh', "
            "which vitkit does not support"
        )
    try:
        width, num_heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
        head_dim = hf_config.get("head_dim")
        if head_dim is not None and head_dim * num_heads != width:
            raise CheckpointError(
                f"config.json: head_dim {head_dim} x {num_heads} heads != hidden_size {width}, "
                "which vitkit does not support"
            )
        image_size = hf_config.get("image_size", 224)
        return ViTConfig(
            img_size=image_size if isinstance(image_size, int) else tuple(image_size),
            patch_size=_patch_size(hf_config.get("patch_size", 16)),
            in_chans=hf_config.get("num_channels", 3),
            width=width,
            depth=hf_config["num_hidden_layers"],
            num_heads=num_heads,
            mlp_dim=hf_config["intermediate_size"],
            qkv_bias=hf_config.get("qkv_bias", True),
            num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
            representation_size=(
                state["pre_logits.0.weight"].shape[0] if "pre_logits.0.weight" in state else None
            ),
            gelu="exact" if activation in _EXACT_GELUS else "tanh",
            layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
            mean=preprocessor.get("image_mean", (0.5, 0.5, 0.5)),
            std=preprocessor.get("image_std", (0.5, 0.5, 0.5)),
        )
    except KeyError as error:
        raise CheckpointError(f"config.json: missing field {error.args[0]!r}") from error


def hf_to_vitkit(
    hf_config: dict, hf_state: dict[str, torch.Tensor], preprocessor: dict | None = None
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a transformers ViT (config dict, state dict) to (config, vitkit state dict)."""
    state: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in hf_state.items():
        name = key.removeprefix("vit.")
        if name == "embeddings.mask_token":
            continue  # only used for masked-image modelling, never in classification
        for pattern in _QKV:
            if match := re.fullmatch(pattern, name):
                block, part, kind = match.groups()
                qkv_parts.setdefault((block, kind), {})[part[0]] = value
                break
        else:
            for pattern, target in _RENAMES:
                if match := re.fullmatch(pattern, name):
                    state[target.format(*match.groups())] = value
                    break
            else:
                raise CheckpointError(f"unexpected key {key!r} in a transformers ViT checkpoint")
    for (block, kind), parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"block {block}: incomplete query/key/value {kind} tensors")
        state[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return config_from_hf(hf_config, state, preprocessor), state
