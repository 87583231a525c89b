"""vitkit's own format: a directory with `model.safetensors` and `config.json`.

The weights are the model's state dict under vitkit's own names, so no conversion is needed; the
config records every `ViTConfig` field, so a model reloads with exactly the architecture and
numerics it was saved with (GELU flavour, LayerNorm eps, ...). config.json carries
`"format": "vitkit"`, which tells it apart from a Hugging Face directory, and a `format_version`,
so that an older vitkit refuses a newer layout instead of misreading it.

What belongs to the weights rather than the architecture sits beside "config": the model's
`Preprocessing` record ("preprocessing": resolution, mean, std, interpolation) and, when the
weights have them, the head's class names ("class_names"). A config.json holds:

    {"format": "vitkit", "format_version": 2,
     "config": {"img_size": [224, 224], "patch_size": 16, ...every ViTConfig field},
     "preprocessing": {"resolution": [224, 224], "mean": [0.5, 0.5, 0.5],
                       "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize": "..."},
     "class_names": ["airplane", ...]}

format_version 1 (before the record left ViTConfig) kept mean and std among the "config" fields,
and they were what vitkit read back; such files still load, with those statistics at the
config's img_size. Its "preprocessing" block, written for other readers, held the same values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from vitkit.errors import CheckpointError, ConfigError
from vitkit.io import atomic_write, atomic_write_json
from vitkit.models.config import ViTConfig
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer
from vitkit.weights.class_names import ClassNames, checked_class_names, model_class_names
from vitkit.weights.files import read_json_object, read_state_dict

FORMAT = "vitkit"
FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# ViTConfig fields added after format_version 1 was first written, each defaulting to what a model
# without it computes (timm's register tokens, fc_norm, no_embed_class, the paper's learned 1-D
# position embeddings, no LayerScale, no pre-norm, biases in the patch embedding and on the keys).
FIELDS_ADDED_LATER = frozenset({"reg_tokens", "no_embed_class", "fc_norm", "pos_embed_type",
                                "layer_scale_init", "pre_norm", "patch_bias",
                                "key_bias"})  # fmt: skip
# "config" fields of format_version 1 that moved into the "preprocessing" record in version 2.
FIELDS_MOVED_TO_PREPROCESSING = ("mean", "std")
# The resize every vitkit preprocessing means, for readers other than vitkit.
_RESIZE = "whole image to resolution, no crop"


def save_pretrained(
    model: VisionTransformer, directory: Path, *, class_names: Sequence[str] | None = None
) -> Path:
    """Write `model` to `directory` (created if needed) in vitkit's format; returns `directory`.

    class_names: the labels of the head's outputs (a training run passes its dataset's); by
    default the model's own `class_names`, if any. Checked against the head before writing.
    Each file is replaced atomically. The weights are written first, so an interrupted save
    over an older one leaves a config whose shapes `load_model` checks against the weights.
    """
    if class_names is None:
        names = model_class_names(model)
    else:
        names = checked_class_names(
            class_names, model.config.num_classes, source="save_pretrained(class_names=...)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors stores plain CPU buffers: no devices, no strided views.
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    payload = safetensors_bytes(tensors)
    atomic_write(directory / WEIGHTS_FILE, lambda file: file.write(payload))
    content = _config_json(model.config, model.preprocessing, names)
    atomic_write_json(directory / CONFIG_FILE, content)
    return directory


def _config_json(
    config: ViTConfig, preprocessing: Preprocessing, class_names: ClassNames | None
) -> dict[str, Any]:
    """The contents of config.json for `config` (tuples as JSON lists)."""
    fields = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(config).items()
    }
    content = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": fields,
        "preprocessing": {**preprocessing.to_json(), "resize": _RESIZE},
    }
    if class_names is not None:
        content["class_names"] = list(class_names)
    return content


def is_native_config(config_json: Any) -> bool:
    """Whether a directory's parsed config.json is vitkit's (Hugging Face's has "model_type")."""
    return isinstance(config_json, dict) and config_json.get("format") == FORMAT


def read_native(
    directory: Path,
) -> tuple[ViTConfig, dict[str, torch.Tensor], ClassNames | None, Preprocessing]:
    """The config, state dict, class names (None when not recorded) and preprocessing of a
    directory written by `save_pretrained`."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    content = read_json_object(path)
    config, preprocessing = _read_config(content, path)
    names = checked_class_names(
        content.get("class_names"), config.num_classes, source=f'{path}: "class_names"'
    )
    weights_file = directory / WEIGHTS_FILE
    if not weights_file.is_file():
        raise CheckpointError(f"{weights_file}: missing")
    return config, read_state_dict(weights_file), names, preprocessing


def _read_config(content: dict[str, Any], path: Path) -> tuple[ViTConfig, Preprocessing]:
    if not is_native_config(content):
        raise CheckpointError(f'{path}: not a vitkit config (no "format": "{FORMAT}")')
    version = content.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{path}: format_version must be a positive integer, got {version!r:.40}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} was written by a newer vitkit; this one reads "
            f"format_version {FORMAT_VERSION} at most, so upgrade vitkit to load it"
        )
    values = content.get("config")
    if not isinstance(values, dict):
        raise CheckpointError(f'{path}: "config" must be an object of ViTConfig fields')
    known = {field.name for field in dataclasses.fields(ViTConfig)}
    if version == 1:  # mean and std were ViTConfig fields then
        known |= set(FIELDS_MOVED_TO_PREPROCESSING)
    problems = []
    if unknown := sorted(set(values) - known):
        problems.append(f"unknown field(s) {', '.join(unknown)[:200]}")
    # Files written before a field existed lack it; its default is what they computed.
    if missing := sorted(known - set(values) - FIELDS_ADDED_LATER):
        problems.append(f"missing field(s) {', '.join(missing)}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    moved = {name: values.pop(name) for name in FIELDS_MOVED_TO_PREPROCESSING if name in values}
    try:
        config = ViTConfig(**values)
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if version == 1:
        return config, _checked_preprocessing({"resolution": config.img_size, **moved}, path, {})
    record = content.get("preprocessing")
    if not isinstance(record, dict):
        raise CheckpointError(f'{path}: "preprocessing" must be an object (resolution, mean, ...)')
    fields = {name: value for name, value in record.items() if name != "resize"}
    known = [field.name for field in dataclasses.fields(Preprocessing)]
    if unknown := sorted(set(fields) - set(known)):
        raise CheckpointError(
            f'{path}: "preprocessing": unknown field(s) {", ".join(unknown)[:200]}'
        )
    names = {name: f"preprocessing.{name}" for name in known}
    return config, _checked_preprocessing(fields, path, names)


def _checked_preprocessing(
    values: dict[str, Any], path: Path, names: dict[str, str]
) -> Preprocessing:
    """The record of `values`, any problem a CheckpointError naming the file."""
    try:
        return Preprocessing.from_fields(values, names=names)
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}") from None
