"""transformers' SigLIP image towers, read and written: `SiglipVisionModel` directories, the image
tower of a whole `SiglipModel` (Zhai et al. 2023; SigLIP 2's fixed-resolution weights are saved
as these too), and `SiglipForImageClassification`. transformers' `hf.py` reads and writes the
directory (config.json, weights, preprocessing, class names); this module the architecture and
the tensors of this family.

A SigLIP image tower is a ViT without a [class] token (class_token=False): a patch embedding
with bias, position embeddings for the patches only, tanh GELU (`hidden_act`
"gelu_pytorch_tanh") and LayerNorm eps 1e-6 by default, and `post_layernorm` over every token
(vitkit's final norm, so `last_hidden_state` is `forward_features`). It pools by attention
(`head`, vitkit's classifier="map", models/attention_pool.py): a learned `probe` queries the
tokens through torch's `nn.MultiheadAttention`, whose `in_proj` holds the query, key and value
rows in one tensor (split here into vitkit's `q` and fused `kv`), followed by a residual MLP;
`pooler_output` is SigLIP's image embedding (`get_image_features`). transformers resizes the
position embeddings at other sizes (`interpolate_pos_encoding=True`) bicubically without
antialiasing, so vitkit reads `pos_embed_interpolation="bicubic_no_antialias"`.

`SiglipForImageClassification` ignores the attention pooling and averages `last_hidden_state`
before its Linear classifier: vitkit's classifier="gap", read exactly, with the unused pooling
head left out. A tower saved without its head (`vision_use_head=false`) has no pooled output at
all; it is read with that same average (an `UnpooledTowerWarning` says so), its tokens as they
are. What is not the image tower (a SiglipModel's text tower, logit_scale and logit_bias) is left
out with an `ImageTowerOnlyWarning` naming it; any other key is an error.

SigLIP 2's NaFlex models (model_type "siglip2") take each image as a sequence of patches of its
own aspect ratio, position embeddings resized per image and padding masked: another input form,
refused in one line.

Written, a vitkit model with attention pooling is a `SiglipVisionModel` under the key names of
the files on the Hub (`vision_model.` prefixed), which every transformers version reads.
"""

from __future__ import annotations

import warnings

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.models.config import ViTConfig, config_from_fields
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value
from vitkit.weights.hf_clip import _ACTIVATIONS, _WRITTEN_ACTIVATIONS, ImageTowerOnlyWarning
from vitkit.weights.hf_family import SIZE_NAMES, HFFamily, sizes_entries, sizes_fields
from vitkit.weights.key_maps import Row, read_renamed, to_foreign
from vitkit.weights.shapes import require_shape
from vitkit.weights.state_dict import UnrecordedSettingWarning

# The model types read here, and SigLIP 2's NaFlex ones, which are refused here (hf.py sends all
# four to `siglip_to_vitkit`).
SIGLIP_MODEL_TYPES = ("siglip_vision_model", "siglip", "siglip2_vision_model", "siglip2")
_NAFLEX_MODEL_TYPES = ("siglip2_vision_model", "siglip2")


class UnpooledTowerWarning(UnrecordedSettingWarning):
    """A SigLIP tower saved without its attention-pooling head (`vision_use_head=false`) has no
    pooled output; it was read with classifier="gap", the mean of its last hidden state, which
    is how transformers' SiglipForImageClassification pools such a tower. Its tokens
    (`forward_features`) are the file's `last_hidden_state` either way."""


# Every parameter of the image tower under vitkit's key and transformers 5's SiglipVisionModel's
# (a SiglipModel's `vision_model.`, and the files on the Hub, prefix each with "vision_model.",
# which the reader takes off and the writer puts on). query, key and value fuse into vitkit's
# qkv. The pooling head's `attention.in_proj_{weight,bias}` is no row: it holds the query, key
# and value rows of nn.MultiheadAttention in one tensor, which vitkit keeps as two (`q`, `kv`),
# and a table fuses tensors, never splits one (`_split_in_proj`, `_fused_in_proj`).
_PREFIX = "vision_model."
_LAYER = "encoder.layers.{i}."
_IN_PROJ = "head.attention.in_proj_{w}"
# fmt: off
SIGLIP_KEYS: tuple[Row, ...] = (
    Row("pos_embed", "embeddings.position_embedding.weight"),  # (N, D), (1, N, D) in vitkit
    Row("patch_embed.proj.{w}", "embeddings.patch_embedding.{w}"),
    Row("blocks.{i}.norm1.{w}", _LAYER + "layer_norm1.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "self_attn.q_proj.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "self_attn.k_proj.{w}"),
    Row("blocks.{i}.attn.qkv.{w}", _LAYER + "self_attn.v_proj.{w}"),
    Row("blocks.{i}.attn.proj.{w}", _LAYER + "self_attn.out_proj.{w}"),
    Row("blocks.{i}.norm2.{w}", _LAYER + "layer_norm2.{w}"),
    Row("blocks.{i}.mlp.fc1.{w}", _LAYER + "mlp.fc1.{w}"),
    Row("blocks.{i}.mlp.fc2.{w}", _LAYER + "mlp.fc2.{w}"),
    Row("norm.{w}", "post_layernorm.{w}"),
    Row("attn_pool.latent", "head.probe"),  # (1, 1, D) in both
    Row("attn_pool.proj.{w}", "head.attention.out_proj.{w}"),
    Row("attn_pool.norm.{w}", "head.layernorm.{w}"),
    Row("attn_pool.mlp.fc1.{w}", "head.mlp.fc1.{w}"),
    Row("attn_pool.mlp.fc2.{w}", "head.mlp.fc2.{w}"),
    Row("head.{w}", "classifier.{w}"),  # SiglipForImageClassification's, beside vision_model
)
# fmt: on
# What a SiglipModel holds beside its image tower: keys, or prefixes ending in ".".
_NOT_THE_TOWER = ("text_model.", "logit_scale", "logit_bias")

# SiglipVisionConfig's defaults, which transformers takes for every field a file leaves out (the
# Hub's google/siglip-base-patch16-224 records only patch_size in its vision_config).
_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": True,
}
# ViTConfig fields under SiglipVisionConfig's names.
_NAMES = SIZE_NAMES

# What a SiglipVisionModel directory can hold (weights/capabilities.py): the image tower only,
# pooled by attention.
SIGLIP_HOLDS: Holds = {
    **PAPER_FIELDS,
    "num_classes": (0,),
    "qkv_bias": (True,),
    "classifier": ("map",),
    "class_token": (False,),
    "gelu": tuple(_WRITTEN_ACTIVATIONS),
    "layer_norm_eps": ANY,
}


def siglip_to_vitkit(
    hf_config: dict, hf_state: dict[str, torch.Tensor]
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """(config, vitkit state dict) of a transformers SiglipVisionModel directory's config and
    weights, of the image tower of a SiglipModel's (warning what else it holds), or of a
    SiglipForImageClassification's."""
    model_type = hf_config.get("model_type")
    if model_type in _NAFLEX_MODEL_TYPES:
        raise CheckpointError(
            f"config.json: model_type {model_type!r} is SigLIP 2's NaFlex tower, which takes "
            "each image as a sequence of patches at its own aspect ratio (a Linear patch "
            "embedding, position embeddings resized per image, padding masked), an input form "
            "vitkit's model does not read; SigLIP 2's fixed-resolution weights (model_type "
            "'siglip') load"
        )
    if model_type not in SIGLIP_MODEL_TYPES:
        raise CheckpointError(f"config.json: model_type {model_type!r:.60} is not SigLIP's")
    fields, where = _vision_fields(hf_config)
    classes = 0
    if "classifier.weight" in hf_state:  # SiglipForImageClassification: the mean token's head
        classes = require_shape(hf_state, "classifier.weight", 2)[0]
    use_head = fields.get("vision_use_head", _DEFAULTS["vision_use_head"])
    if not isinstance(use_head, bool):
        raise CheckpointError(
            f"config.json: {where}vision_use_head must be true or false, got {use_head!r:.40}"
        )
    pooled_by_head = use_head and not classes
    config = _config(fields, where, classes=classes, pooled_by_head=pooled_by_head)
    tower = _image_tower(hf_state, unused_head=use_head and bool(classes))
    if not use_head and any(name.startswith("head.") for name in tower):
        raise CheckpointError(
            f"config.json: {where}vision_use_head=false, but the weights hold an attention-"
            "pooling head (head.*), which transformers would leave unused"
        )
    if not use_head and not classes:
        warnings.warn(
            UnpooledTowerWarning(
                f"config.json: {where}vision_use_head=false: this SigLIP tower has no pooled "
                "output (transformers' pooler_output is None); read with classifier='gap', the "
                "mean of last_hidden_state, as SiglipForImageClassification pools it"
            ),
            stacklevel=2,
        )
    in_proj = _split_in_proj(tower, config.width) if pooled_by_head else {}
    state = read_renamed(SIGLIP_KEYS, tower, source="transformers SigLIP")
    state.update(in_proj)
    name = "embeddings.position_embedding.weight"
    if "pos_embed" not in state:
        raise CheckpointError(f"missing key {name!r}")
    if state["pos_embed"].ndim != 2:  # an nn.Embedding's (N, D) table, (1, N, D) in vitkit
        raise CheckpointError(
            f"{name}: expected a 2-d tensor, found shape {tuple(state['pos_embed'].shape)}"
        )
    state["pos_embed"] = state["pos_embed"][None]
    return config, state


def _image_tower(
    hf_state: dict[str, torch.Tensor], *, unused_head: bool
) -> dict[str, torch.Tensor]:
    """The tower's tensors without their "vision_model." prefix (transformers 5 saves a
    SiglipVisionModel without it), and a SiglipForImageClassification's classifier; what is not
    the tower (and the attention-pooling head a classifier holds but does not use, when
    `unused_head`) is left out, with a warning naming it."""
    tower: dict[str, torch.Tensor] = {}
    left_out: list[str] = []
    for key, value in hf_state.items():
        name = key.removeprefix(_PREFIX)
        text = any(key.startswith(other) if other.endswith(".") else key == other
                   for other in _NOT_THE_TOWER)  # fmt: skip
        if text or (unused_head and name.startswith("head.")):
            left_out.append(key)
            continue
        if name in tower:
            raise CheckpointError(f"{name!r}: held twice, with and without {_PREFIX!r}")
        tower[name] = value
    if left_out:
        warnings.warn(ImageTowerOnlyWarning(_left_out(left_out)), stacklevel=2)
    return tower


def _left_out(keys: list[str]) -> str:
    """The warning's one line: what was left out, and what the loaded model therefore gives."""
    parts = []
    if any(key.startswith("text_model.") for key in keys):
        parts.append("the text tower (text_model.*)")
    parts += [key for key in ("logit_scale", "logit_bias") if key in keys]
    if any(key.removeprefix(_PREFIX).startswith("head.") for key in keys):
        return (
            "a transformers SiglipForImageClassification: left out the attention-pooling head "
            f"({_PREFIX}head.*), which it computes but does not use; its logits, as vitkit's, "
            "read the mean of last_hidden_state"
        )
    return (
        f"a transformers SigLIP directory: read its image tower only, leaving out "
        f"{', '.join(parts)}; the model gives SigLIP's image embeddings (pooler_output), and "
        "zero-shot scores need what is left out"
    )


def _vision_fields(hf_config: dict) -> tuple[dict, str]:
    """The image tower's config.json fields and where they are, for errors: the top level of a
    SiglipVisionModel's, or a SiglipModel's vision_config (SiglipVisionConfig's defaults when it
    is absent or null, as in transformers)."""
    if hf_config.get("model_type") == "siglip_vision_model":
        return hf_config, ""
    fields = hf_config.get("vision_config")
    if fields is not None and not isinstance(fields, dict):
        raise CheckpointError(
            f"config.json: vision_config must be an object, not a {type(fields).__name__}"
        )
    return fields or {}, "vision_config."


def _config(fields: dict, where: str, *, classes: int, pooled_by_head: bool) -> ViTConfig:
    """vitkit's config of an image tower's config.json `fields` (SiglipVisionConfig's defaults
    for those left out): attention pooling where the head pools, else the mean token, into
    `classes` classes. Errors name each field as `where` (a prefix: "vision_config.") and the
    file have it."""
    values = {name: fields.get(name, default) for name, default in _DEFAULTS.items()}
    activation = values["hidden_act"]
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise CheckpointError(
            f"config.json: {where}hidden_act {activation!r:.60} is not a GELU vitkit computes "
            f"({', '.join(_ACTIVATIONS)})"
        )
    for name in ("image_size", "patch_size"):  # SiglipVisionEmbeddings divides them as ints
        if isinstance(values[name], (list, tuple)):
            raise CheckpointError(
                f"config.json: {where}{name} must be one integer (SigLIP's square images and "
                f"patches), got {values[name]!r:.40}"
            )
    config = dict(
        **sizes_fields(values),
        num_classes=classes,
        classifier="map" if pooled_by_head else "gap",
        class_token=False,
        gelu=_ACTIVATIONS[activation],
        pos_embed_interpolation="bicubic_no_antialias",
    )
    names = {**{k: where + v for k, v in _NAMES.items()}, "num_classes": "the classifier's rows"}
    try:
        return config_from_fields(config, names=names)
    except ConfigError as error:
        raise CheckpointError(f"config.json: {error}") from None


def _split_in_proj(tower: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """vitkit's `attn_pool.q` and `attn_pool.kv` from the head's nn.MultiheadAttention in_proj
    (taken out of `tower`): its first `width` rows project the query, the other 2 * `width` the
    key and the value, in the order vitkit's fused kv holds them."""
    state: dict[str, torch.Tensor] = {}
    for part, ndim in (("weight", 2), ("bias", 1)):
        key = _IN_PROJ.format(w=part)
        if key not in tower:
            raise CheckpointError(f"missing key {key!r}")
        tensor = tower.pop(key)
        expected = (3 * width, width)[:ndim]
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"{key}: expected shape {expected} (query, key and value rows of hidden_size "
                f"{width}), found {tuple(tensor.shape)}"
            )
        state[f"attn_pool.q.{part}"], state[f"attn_pool.kv.{part}"] = tensor[:width], tensor[width:]
    return state


def siglip_refusal(config: ViTConfig) -> str | None:
    """Why a transformers SiglipVisionModel cannot hold `config`, or None when it can."""
    holder = "transformers' SiglipVisionModel"
    if problem := no_place(config, SIGLIP_HOLDS, holder=holder):
        return problem
    if config.num_classes:
        return (
            f"{holder} has no classifier (and SiglipForImageClassification averages the tokens "
            "instead of pooling them by attention), but this model has "
            f"num_classes={config.num_classes}; its image tower can be written (num_classes=0)"
        )
    if config.class_token:
        return f"{holder} has no [class] token, and this model has one (class_token=True)"
    if config.img_size[0] != config.img_size[1]:
        return (
            f"{holder} takes square images (one image_size), but this model has "
            f"img_size={config.img_size}"
        )
    return unheld_value(config, SIGLIP_HOLDS, holder=holder)


def vitkit_to_siglip(
    config: ViTConfig, state: dict[str, torch.Tensor]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of the transformers SiglipVisionModel computing what a vitkit
    model of `config` computes."""
    if problem := siglip_refusal(config):
        raise CheckpointError(problem)
    hf_state = _fused_in_proj(state)
    for key, value in state.items():
        if key.startswith(("attn_pool.q.", "attn_pool.kv.")):
            continue  # in in_proj
        if key == "pos_embed":  # (1, N, D) -> (N, D)
            value = value.reshape(-1, config.width)
        tensors = to_foreign(SIGLIP_KEYS, key, value)
        if tensors is None:  # siglip_refusal has turned away every model with such a parameter
            raise CheckpointError(f"{key}: transformers' SigLIP has no place for this parameter")
        hf_state.update(tensors)
    hf_config = {
        "architectures": ["SiglipVisionModel"],
        "model_type": "siglip_vision_model",
        **sizes_entries(config),
        "intermediate_size": config.mlp_dim,
        "hidden_act": _WRITTEN_ACTIVATIONS[config.gelu],
        "attention_dropout": config.attention_dropout,
        "vision_use_head": True,
    }
    return hf_config, {_PREFIX + name: tensor for name, tensor in hf_state.items()}


def _fused_in_proj(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head's nn.MultiheadAttention in_proj from vitkit's `attn_pool.q` and `attn_pool.kv`:
    the query's rows, then the key's and the value's."""
    return {
        _IN_PROJ.format(w=part): torch.cat([state[f"attn_pool.q.{part}"],
                                            state[f"attn_pool.kv.{part}"]])
        for part in ("weight", "bias")
    }  # fmt: skip


# Written for models pooled by attention.
SIGLIP = HFFamily(
    model_types=SIGLIP_MODEL_TYPES,
    writes=lambda config: config.classifier == "map",
    read=siglip_to_vitkit,
    refusal=siglip_refusal,
    write=vitkit_to_siglip,
)
