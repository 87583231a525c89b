"""Which configurations a format can hold, declared as one table per format.

A format's table lists the `ViTConfig` fields its files (or the code that reads them) can record,
each with the values it can record (`ANY` for every value). A field it does not list must keep
ViTConfig's default, the paper's ViT. So a field added to ViTConfig for a new variant is refused
by every format until that format's table says it holds it: a new variant can never be written
into a format that would read it back as another model.

The format's own checks come first, with their reasons in its terms (why Google's code cannot
compute exact GELU, ...); this table is what every format answers alike.
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


def unheld_field(config: ViTConfig, holds: Holds, *, holder: str) -> str | None:
    """Why `holder` (a format, in words) cannot hold `config` by its table `holds`: the first
    field whose value it cannot record, named with that value; None when it holds every field."""
    for name, default in _DEFAULTS.items():
        value = getattr(config, name)
        if name in holds:
            allowed = holds[name]
            if allowed is ANY or value in allowed:
                continue
            choices = ", ".join(map(repr, allowed))
            return f"{holder} records {name} only as {choices}, but this model has {value!r}"
        if value != default:
            return (
                f"{holder} has no place for {name} (this model has {name}={value!r}; "
                f"the paper's ViT has {default!r})"
            )
    return None
