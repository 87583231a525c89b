"""Which configurations a format can hold, declared as one table per format.

A format's table lists the `ViTConfig` fields its files (or the code that reads them) can record,
each with the values it can record (`ANY` for every value). A field it does not list must keep
ViTConfig's default, the paper's ViT. So a field added to ViTConfig for a new variant is refused
by every format until that format's table says it holds it: a new variant can never be written
into a format that would read it back as another model.

A format's refusal asks `no_place` first (a feature it has no place for is the deepest reason),
then its own checks with their reasons in its terms (why Google's code cannot compute exact
GELU, ...), then `unheld_value` for what its table restricts and no check has explained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from vitkit.models.config import ViTConfig

ANY = None
Holds = Mapping[str, tuple[object, ...] | None]

# How the model is trained or fed, never what its files must record: every format holds them.
TRAINING_FIELDS: Holds = {
    "dropout": ANY,
    "attention_dropout": ANY,
    "drop_path": ANY,
    "dynamic_img_size": ANY,
    "dynamic_patch_size": ANY,
    "pos_embed_interpolation": ANY,
}
# The paper's ViT as every format holds it: sizes, classes and pooling of any value.
PAPER_FIELDS: Holds = {
    "img_size": ANY,
    "patch_size": ANY,
    "in_chans": ANY,
    "width": ANY,
    "depth": ANY,
    "num_heads": ANY,
    "mlp_dim": ANY,
    "num_classes": ANY,
    **TRAINING_FIELDS,
}
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(ViTConfig)}
# What the fields beyond the paper's ViT mean, for refusals a user can read without ViTConfig.
MEANINGS: dict[str, str] = {
    "qkv_bias": "attention without query/key/value biases",
    "classifier": "this pooling",
    "class_token": "a model without a [class] token",
    "reg_tokens": "register tokens",
    "no_embed_class": "position embeddings for the patches only",
    "fc_norm": "a LayerNorm after pooling",
    "representation_size": "a pre-logits layer (Linear + tanh)",
    "layer_scale_init": "LayerScale",
    "pre_norm": "a LayerNorm before the blocks (CLIP's pre-norm)",
    "patch_bias": "a patch embedding without bias",
    "gelu": "this activation",
    "layer_norm_eps": "this LayerNorm eps",
    "pos_embed_type": "this kind of position information",
    "resnet_layers": "a ResNet stem (a ResNet + ViT hybrid)",
    "resnet_width": "this ResNet width",
    "resnet_numerics": "these ResNet numerics",
}


def no_place(config: ViTConfig, holds: Holds, *, holder: str) -> str | None:
    """Why `holder` (a format, in words) cannot hold `config` at all: every field its table
    `holds` does not list whose value is not the paper's default, each named with its value;
    None when there is none. A format's refusal asks this first: a feature it has no place for
    is the deepest reason, and all of them are what stands between the model and the format."""
    missing = [
        f"{MEANINGS.get(name, name)} ({name}={getattr(config, name)!r})"
        for name, default in _DEFAULTS.items()
        if name not in holds and getattr(config, name) != default
    ]
    if not missing:
        return None
    return f"{holder} has no place for {' or '.join(missing)}"


def unheld_value(config: ViTConfig, holds: Holds, *, holder: str) -> str | None:
    """Why `holder` cannot record a value of `config`: the first field its table lists with
    values the model's is not among; None when it records every value. A format's refusal asks
    this last, after its own checks have given their reasons in its terms."""
    for name, allowed in holds.items():
        value = getattr(config, name)
        if allowed is not ANY and value not in allowed:
            choices = ", ".join(map(repr, allowed))
            return f"{holder} records {name} only as {choices}, but this model has {value!r}"
    return None
