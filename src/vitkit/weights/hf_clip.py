"""transformers' CLIP image towers, read and written: `CLIPVisionModel` directories, and the
image tower of a whole `CLIPModel` (Radford et al. 2021), the backbone people probe and fine-tune.
transformers' `hf.py` reads and writes the directory (config.json, weights, preprocessing); this
module the architecture and the tensors of this family.

A CLIP image tower is a ViT with a LayerNorm before the blocks (`pre_layrnorm`, vitkit's
`norm_pre`), no bias in the patch embedding, quick GELU x * sigmoid(1.702 x) for OpenAI's weights
(`hidden_act` "quick_gelu"; OpenCLIP's are exact "gelu"), LayerNorm eps 1e-5 and position
embeddings with a row for the [class] token. Its pooled output is the [class] token of the last
block through `post_layernorm`: vitkit's final norm followed by token pooling computes the same,
and `last_hidden_state` is the last block's output before that norm. transformers resizes the
patch rows at every call (`interpolate_pos_encoding=True`) bicubically without antialiasing, so
vitkit reads `pos_embed_interpolation="bicubic_no_antialias"`.

What is not the image tower is left out, with an `ImageTowerOnlyWarning` naming it: a CLIPModel's
text tower, `text_projection` and `logit_scale`, and its (or `CLIPVisionModelWithProjection`'s)
`visual_projection`, a Linear without bias from the tower's width into the joint image-text
space, which vitkit's model has no place for. So a loaded CLIP gives the tower's pooled features,
not CLIP's image embeddings; zero-shot classification needs what is left out. The loading is
strict otherwise: any other key is an error. `CLIPForImageClassification` is refused: its head
averages the patch tokens of the last block without a LayerNorm, a pooling vitkit does not have.

Written, a vitkit model is a `CLIPVisionModel` under the key names of the files on the Hub
(`vision_model.` prefixed), which every transformers version reads.
"""

from __future__ import annotations

import warnings

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.models.config import Gelu, ViTConfig, config_from_fields
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value
from vitkit.weights.hf_family import SIZE_NAMES, HFFamily, sizes_entries, sizes_fields
from vitkit.weights.key_maps import Row, read_renamed, to_foreign

CLIP_MODEL_TYPES = ("clip_vision_model", "clip")


class ImageTowerOnlyWarning(UserWarning):
    """A CLIP directory holds more than its image tower (a text tower, the projections into the
    joint image-text space, logit_scale); only the tower was read, and the message names what
    was left out. Silence it with `warnings.filterwarnings` when the tower is what you want."""


# Every parameter of the image tower under vitkit's key and transformers 5's CLIPVisionModel's
# (a CLIPModel's `vision_model.`, and the files on the Hub, prefix each with "vision_model.",
# which the reader takes off and the writer puts on). query, key and value fuse into vitkit's qkv.
_PREFIX = "vision_model."
_LAYER = "encoder.layers.{i}."
# fmt: off
CLIP_KEYS: tuple[Row, ...] = (
    Row("cls_token", "embeddings.class_embedding"),  # (D,) in the file, (1, 1, D) in vitkit
    Row("pos_embed", "embeddings.position_embedding.weight"),  # (N, D), (1, N, D) in vitkit
    Row("patch_embed.proj.weight", "embeddings.patch_embedding.weight"),
    Row("norm_pre.{w}", "pre_layrnorm.{w}"),
    Row("blocks.{i}.norm1.{w}", _LAYER + "layer_norm1.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "self_attn.q_proj.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "self_attn.k_proj.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "self_attn.v_proj.{w}"),
    Row("blocks.{i}.attn.proj.{w}", _LAYER + "self_attn.out_proj.{w}"),
    Row("blocks.{i}.norm2.{w}", _LAYER + "layer_norm2.{w}"),
    Row("blocks.{i}.mlp.fc1.{w}", _LAYER + "mlp.fc1.{w}"),
    Row("blocks.{i}.mlp.fc2.{w}", _LAYER + "mlp.fc2.{w}"),
    Row("norm.{w}", "post_layernorm.{w}"),
)
# fmt: on
# A buffer older files hold (always 0..N-1, recomputed by transformers, which ignores it).
_POSITION_IDS = "embeddings.position_ids"
# What is not the image tower, by model type: keys, or prefixes ending in ".".
_NOT_THE_TOWER = {
    "clip": ("text_model.", "text_projection.weight", "visual_projection.weight", "logit_scale"),
    "clip_vision_model": ("visual_projection.weight",),  # CLIPVisionModelWithProjection
}

# transformers' ACT2FN names of the GELUs vitkit computes.
_ACTIVATIONS: dict[str, Gelu] = {
    "quick_gelu": "quick",
    "gelu": "exact",
    "gelu_python": "exact",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
}
_WRITTEN_ACTIVATIONS: dict[Gelu, str] = {"quick": "quick_gelu", "exact": "gelu",
                                         "tanh": "gelu_pytorch_tanh"}  # fmt: skip
# The fields vitkit reads no default for (as for transformers' ViT, hf.py), and CLIPVisionConfig's
# defaults for every field read, which transformers takes for one a file leaves out.
_REQUIRED_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# ViTConfig fields under CLIPVisionConfig's names.
_NAMES = SIZE_NAMES

# What a CLIPVisionModel directory can hold (weights/capabilities.py): the image tower only.
CLIP_HOLDS: Holds = {
    **PAPER_FIELDS,
    "num_classes": (0,),
    "qkv_bias": (True,),
    "classifier": ("token",),
    "class_token": (True,),
    "pre_norm": (True,),
    "patch_bias": (False,),
    "gelu": tuple(_WRITTEN_ACTIVATIONS),
    "layer_norm_eps": ANY,
}


def clip_to_vitkit(
    hf_config: dict, hf_state: dict[str, torch.Tensor]
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """(config, vitkit state dict) of a transformers CLIPVisionModel directory's config and
    weights, or of the image tower of a CLIPModel's (warning what else it holds)."""
    if "classifier.weight" in hf_state:
        raise CheckpointError(
            "CLIPForImageClassification's head averages the last block's patch tokens without a "
            "LayerNorm, a pooling vitkit does not have; its image tower (CLIPVisionModel) loads"
        )
    model_type = hf_config.get("model_type")
    if model_type not in CLIP_MODEL_TYPES:
        raise CheckpointError(f"config.json: model_type {model_type!r:.60} is not CLIP's")
    config = _config(*_vision_fields(hf_config))  # before the warning of what is left out
    tower = _image_tower(hf_state, _NOT_THE_TOWER[model_type])
    state = read_renamed(CLIP_KEYS, tower, source="transformers CLIP")
    for key, name, ndim in (("cls_token", "class_embedding", 1),
                            ("pos_embed", "position_embedding.weight", 2)):  # fmt: skip
        if key not in state:
            raise CheckpointError(f"missing key 'embeddings.{name}'")
        if state[key].ndim != ndim:
            raise CheckpointError(
                f"embeddings.{name}: expected a {ndim}-d tensor, found shape "
                f"{tuple(state[key].shape)}"
            )
        state[key] = state[key].reshape(1, -1, state[key].shape[-1])
    return config, state


def _image_tower(
    hf_state: dict[str, torch.Tensor], not_the_tower: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The tower's tensors without their "vision_model." prefix (transformers 5 saves a
    CLIPVisionModel without it); what `not_the_tower` names is left out, with a warning."""
    tower: dict[str, torch.Tensor] = {}
    left_out: list[str] = []
    for key, value in hf_state.items():
        if any(key.startswith(other) if other.endswith(".") else key == other
               for other in not_the_tower):  # fmt: skip
            left_out.append(key)
            continue
        name = key.removeprefix(_PREFIX)
        if name in tower:
            raise CheckpointError(f"{name!r}: held twice, with and without {_PREFIX!r}")
        if name != _POSITION_IDS:
            tower[name] = value
    if left_out:
        warnings.warn(ImageTowerOnlyWarning(_left_out(hf_state, left_out)), stacklevel=2)
    return tower


def _left_out(hf_state: dict[str, torch.Tensor], keys: list[str]) -> str:
    """The warning's one line: what was left out, and what the loaded model therefore gives."""
    parts = []
    if any(key.startswith("text_model.") for key in keys):
        parts.append("the text tower (text_model.*)")
    parts += [key for key in ("text_projection.weight", "logit_scale") if key in keys]
    if "visual_projection.weight" in keys:
        shape = tuple(hf_state["visual_projection.weight"].shape)
        parts.append(
            f"visual_projection.weight {shape} (a Linear without bias into the joint image-text "
            "space, which vitkit's model has no place for)"
        )
    return (
        "a transformers CLIP directory: read its image tower only, leaving out "
        f"{', '.join(parts)}; the model gives the tower's pooled [class] token, not CLIP's image "
        "embeddings"
    )


def _vision_fields(hf_config: dict) -> tuple[dict, str]:
    """The image tower's config.json fields and where they are, for errors: the top level of a
    CLIPVisionModel's, a CLIPModel's vision_config (which, as in transformers, an older file's
    vision_config_dict overrides, with CLIPVisionConfig's defaults for what it leaves out)."""
    if hf_config.get("model_type") == "clip_vision_model":
        return hf_config, ""
    if "vision_config" not in hf_config:
        raise CheckpointError("config.json: missing field 'vision_config'")
    fields, override = hf_config["vision_config"], hf_config.get("vision_config_dict")
    for name, value in (("vision_config", fields), ("vision_config_dict", override)):
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(
                f"config.json: {name} must be an object, not a {type(value).__name__}"
            )
    if override is not None:
        return {**(fields or {}), **_DEFAULTS, **override}, "vision_config_dict."
    return fields or {}, "vision_config."


def _config(fields: dict, where: str) -> ViTConfig:
    """vitkit's config of an image tower's config.json `fields`; errors name each field as
    `where` (a prefix: "vision_config.") and the file have it."""
    missing = [name for name in _REQUIRED_FIELDS if name not in fields]
    if missing:
        raise CheckpointError(f"config.json: missing field '{where}{missing[0]}'")
    values = {name: fields.get(name, default) for name, default in _DEFAULTS.items()}
    activation = values["hidden_act"]
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise CheckpointError(
            f"config.json: {where}hidden_act {activation!r:.60} is not a GELU vitkit computes "
            f"({', '.join(_ACTIVATIONS)})"
        )
    for name in ("image_size", "patch_size"):  # CLIPVisionEmbeddings divides them as ints
        if isinstance(values[name], list):
            raise CheckpointError(
                f"config.json: {where}{name} must be one integer (CLIP's square images and "
                f"patches), got {values[name]!r:.40}"
            )
    config = dict(
        **sizes_fields(values),
        num_classes=0,
        pre_norm=True,
        patch_bias=False,
        gelu=_ACTIVATIONS[activation],
        pos_embed_interpolation="bicubic_no_antialias",
    )
    try:
        return config_from_fields(config, names={k: where + v for k, v in _NAMES.items()})
    except ConfigError as error:
        raise CheckpointError(f"config.json: {error}") from None


def clip_refusal(config: ViTConfig) -> str | None:
    """Why a transformers CLIPVisionModel cannot hold `config`, or None when it can."""
    if problem := no_place(config, CLIP_HOLDS, holder="transformers' CLIPVisionModel"):
        return problem
    if config.num_classes:
        return (
            "transformers' CLIPVisionModel has no classifier (and CLIPForImageClassification "
            "averages the patch tokens without a LayerNorm), but this model has "
            f"num_classes={config.num_classes}; its image tower can be written (num_classes=0)"
        )
    if config.img_size[0] != config.img_size[1]:
        return (
            "transformers' CLIPVisionModel takes square images (one image_size), but this model "
            f"has img_size={config.img_size}"
        )
    return unheld_value(config, CLIP_HOLDS, holder="transformers' CLIPVisionModel")


def vitkit_to_clip(
    config: ViTConfig, state: dict[str, torch.Tensor]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of the transformers CLIPVisionModel computing what a vitkit
    model of `config` computes."""
    if problem := clip_refusal(config):
        raise CheckpointError(problem)
    hf_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "cls_token":  # (1, 1, D) -> (D,)
            value = value.reshape(config.width)
        elif key == "pos_embed":  # (1, N, D) -> (N, D)
            value = value.reshape(-1, config.width)
        tensors = to_foreign(CLIP_KEYS, key, value)
        if tensors is None:  # clip_refusal has turned away every model with such a parameter
            raise CheckpointError(f"{key}: transformers' CLIP has no place for this parameter")
        hf_state.update({_PREFIX + name: tensor for name, tensor in tensors.items()})
    hf_config = {
        "architectures": ["CLIPVisionModel"],
        "model_type": "clip_vision_model",
        **sizes_entries(config),
        "intermediate_size": config.mlp_dim,
        "hidden_act": _WRITTEN_ACTIVATIONS[config.gelu],
        "attention_dropout": config.attention_dropout,
    }
    return hf_config, hf_state


# Written for models with a pre-norm.
CLIP = HFFamily(
    model_types=CLIP_MODEL_TYPES,
    writes=lambda config: config.pre_norm,
    read=clip_to_vitkit,
    refusal=clip_refusal,
    write=vitkit_to_clip,
)
