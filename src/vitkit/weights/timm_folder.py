"""timm's own folder layout, config.json + model.safetensors, written and read.

timm loads such a folder in one line, `timm.create_model("local-dir:PATH", pretrained=True)`
(timm 1.0.31's `_hub.load_model_config_from_path` and `load_state_dict_from_path`): config.json's
"architecture" is the registered name to build, its "model_args" go to that name's constructor
as keyword arguments, its "pretrained_cfg" becomes the model's record of its weights
(preprocessing, class count, "label_names"), and model.safetensors (or pytorch_model.bin) is
loaded strictly. A timm hub repository (`timm.models._hub.save_for_hf`, `push_to_hf_hub`) has the
same layout; older ones record no model_args.

So the folder says what a bare timm state dict cannot (timm.py's docstring): the number of heads
and the image size (model_args), the pooling (model_args' or the top level's "global_pool"), the
GELU flavour (model_args' "act_layer"), the preprocessing and the class names. This module is the
one reader of those keys, for a folder and for the config.json beside a bare weights file (what
`hf:timm/...` fetches); the state dict is converted by timm.py as ever, then held to every claim
the file makes about it (depth, width, classes, ...), so that a config.json that contradicts its
weights is refused naming the key instead of building a model timm itself would not load.

What timm cannot read from JSON cannot go into the folder: `timm_model_kwargs` passes a LayerNorm
eps other than timm's 1e-6 as a `functools.partial`, and timm's norm layers named by string all
take 1e-6. CLIP's towers (pre-norm, eps 1e-5) are built from timm's CLIP name instead, whose own
LayerNorm has that eps; other such models (Hugging Face's, eps 1e-12) are refused in folder form,
and the bare state dict with its printed `create_model` line still holds them.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.io import atomic_write_json
from vitkit.models.config import Classifier, Gelu, ViTConfig
from vitkit.models.preprocessing import Preprocessing
from vitkit.weights.class_names import (
    ClassNames,
    checked_class_names,
    labels_file,
    model_class_names,
    read_labels,
)
from vitkit.weights.files import read_json_object, read_state_dict
from vitkit.weights.state_dict import UnrecordedActivationWarning, UnrecordedPoolingWarning
from vitkit.weights.timm import (
    activation_unrecorded,
    pooling_unrecorded,
    timm_model_kwargs,
    timm_model_name,
    timm_preprocessing,
    timm_to_vitkit,
    write_timm,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# What timm's load_state_dict_from_path looks for first, in its order; vitkit writes the first.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
# How the pooling read without being told is named in the warning, and the other it may be.
_POOLING_WORDS = {"token": "[class]-token pooling (global_pool='token')",
                  "gap": "average pooling (global_pool='avg')"}  # fmt: skip
_OTHER_POOLING: dict[str, Classifier] = {"token": "gap", "gap": "token"}
# timm's global_pool names -> vitkit's classifier ("avg" averages the patch tokens).
_POOLS: dict[str, Classifier] = {"token": "token", "avg": "gap"}
# A registered name whose own LayerNorm has eps 1e-5 (timm's CLIP towers, built with pre_norm=True,
# as timm.py reads a pre-norm model's eps back); every other argument is passed.
_CLIP_NAME = "vit_base_patch16_clip_224"
# timm's act_layer names for the GELUs vitkit computes.
_ACT_LAYERS: dict[str, Gelu] = {"gelu": "exact", "gelu_tanh": "tanh", "quick_gelu": "quick"}
# model_args that the weights record too, with the ViTConfig field each must equal: a folder
# whose config.json claims another value would not load in timm either.
_INT_ARGS = {
    "embed_dim": "width",
    "depth": "depth",
    "patch_size": "patch_size",
    "in_chans": "in_chans",
    "num_classes": "num_classes",
    "reg_tokens": "reg_tokens",
}
_BOOL_ARGS = ("class_token", "no_embed_class", "qkv_bias", "fc_norm", "pre_norm")  # as ViTConfig


# ---- Writing --------------------------------------------------------------------------------


def _first_conv(config: ViTConfig) -> str:
    """The input convolution timm adapts to another channel count (pretrained_cfg.first_conv):
    the root-only hybrid keeps its stem at the backbone's top level (timm.py's renames)."""
    if not config.is_hybrid:
        return "patch_embed.proj"
    root_only = config.resnet_layers == ()
    return "patch_embed.backbone.conv" if root_only else "patch_embed.backbone.stem.conv"


def _architecture(config: ViTConfig) -> tuple[str, dict[str, object]]:
    """The registered name and `timm_model_kwargs(config)` as JSON values (tuples as lists), or
    a CheckpointError naming the argument JSON cannot hold."""
    architecture, kwargs = timm_model_name(config), timm_model_kwargs(config)
    if "norm_layer" in kwargs and config.pre_norm and config.layer_norm_eps == 1e-5:
        if not config.is_hybrid:  # a hybrid's name is fixed by its ResNet
            architecture = _CLIP_NAME
            del kwargs["norm_layer"]
    model_args: dict[str, object] = {}
    for name, value in kwargs.items():
        if name == "norm_layer":
            raise CheckpointError(
                f"timm's local-dir config.json passes create_model's arguments as JSON, where "
                f"timm's norm layers, named by string, take eps 1e-6 (1e-5 for CLIP's pre-norm "
                f"towers, by name), but this model has layer_norm_eps={config.layer_norm_eps!r}; "
                "write a bare timm state dict (a .safetensors or .pth name) and build it with the "
                "create_model line printed for it"
            )
        value = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise CheckpointError(
                f"timm's local-dir config.json passes create_model's arguments as JSON, which "
                f"cannot hold {name}={value!r}; write a bare timm state dict instead"
            ) from None
        model_args[name] = value
    return architecture, model_args


def timm_folder_config(
    config: ViTConfig, preprocessing: Preprocessing, class_names: ClassNames | None
) -> dict[str, Any]:
    """The config.json of timm's local-dir layout for a model of `config`: the registered name
    and the create_model arguments that build it, and a pretrained_cfg whose data config is the
    model's `preprocessing` (the whole image resized, as vitkit feeds models: crop_pct=1.0,
    crop_mode="squash") and whose label_names are `class_names`. Every key a timm export writes
    is here, so `create_model("local-dir:...", num_classes=N)` drops the head (classifier) and
    `in_chans=N` adapts the stem (first_conv) as for any timm weights."""
    architecture, model_args = _architecture(config)
    pretrained_cfg: dict[str, Any] = dict(
        input_size=[config.in_chans, *preprocessing.resolution],
        fixed_input_size=True,
        interpolation=preprocessing.interpolation,
        crop_pct=1.0,
        crop_mode="squash",
        mean=list(preprocessing.mean),
        std=list(preprocessing.std),
        num_classes=config.num_classes,
        first_conv=_first_conv(config),
        classifier="head",
        custom_load=False,  # a native state dict, never Google's .npz (the hybrids' default)
    )
    if class_names:
        pretrained_cfg["label_names"] = list(class_names)
    return dict(
        architecture=architecture,
        num_classes=config.num_classes,
        num_features=config.width,
        global_pool=model_args["global_pool"],
        model_args=model_args,
        pretrained_cfg=pretrained_cfg,
    )


def write_timm_folder(model: torch.nn.Module, directory: Path) -> Path:
    """Write `model` (a vitkit VisionTransformer) into `directory` in timm's local-dir layout:
    model.safetensors (`write_timm`) and config.json (`timm_folder_config`); the class names go
    into pretrained_cfg.label_names. Nothing is written when the folder cannot hold the model."""
    directory = Path(directory)
    content = timm_folder_config(model.config, model.preprocessing, model_class_names(model))
    directory.mkdir(parents=True, exist_ok=True)
    write_timm(model, directory / WEIGHTS_FILE)
    atomic_write_json(directory / CONFIG_FILE, content)
    return directory


def timm_local_dir_call(directory: Path) -> str:
    """The one line that loads a folder written by `write_timm_folder` in timm, for printing."""
    return f"model = timm.create_model({json.dumps(f'local-dir:{directory}')}, pretrained=True)"


# ---- Reading --------------------------------------------------------------------------------


def is_timm_config(content: Mapping[str, Any]) -> bool:
    """Whether a parsed config.json is timm's (transformers' has "model_type", vitkit's
    "format"): it names the architecture and holds a pretrained_cfg."""
    return "architecture" in content and "pretrained_cfg" in content


@dataclass(frozen=True)
class TimmConfig:
    """What a timm config.json says that its state dict cannot, each value type-checked:
    num_heads, img_size, classifier (the pooling) for `config_from_timm`; the GELU its act_layer
    names (None: the architecture's own, which the weights show) and LayerScale's start
    (init_values; the weights hold the learned factors only); `told`: for
    each of the first three the file gives, the key and value as the file has them (for errors);
    `claims`: (key as the file names it, ViTConfig field, value) the converted weights must bear
    out; the pretrained_cfg for `timm_preprocessing`; the label names as found (key, value),
    checked once the head's size is known."""

    path: Path
    num_heads: int | None
    img_size: tuple[int, int] | None
    classifier: Classifier | None
    gelu: Gelu | None
    layer_scale_init: float | None
    told: dict[str, tuple[str, object]]
    claims: tuple[tuple[str, str, object], ...]
    pretrained_cfg: dict[str, Any]
    label_names: tuple[str, object] | None


def _integer(value: object, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"{where} must be an integer >= {minimum}, got {value!r:.60}")
    return value


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise CheckpointError(f"{where} must be true or false, got {value!r:.60}")
    return value


def _choice(value: object, where: str, choices: Mapping[str, object]) -> str:
    if not isinstance(value, str) or value not in choices:
        known = ", ".join(map(repr, choices))
        raise CheckpointError(f"{where} is {value!r:.60}; vitkit reads {known}")
    return value


def _image_size(
    model_args: Mapping[str, Any], pretrained_cfg: Mapping[str, Any], path: Path
) -> tuple[str, tuple[int, int]] | None:
    """(the key, the size) of the image size timm builds the model for: model_args' img_size,
    else, for a fixed-size model (fixed_input_size), pretrained_cfg's input_size; else None."""
    if (size := model_args.get("img_size")) is not None:
        where = f"{path}: model_args.img_size"
        sides = [size] * 2 if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(sides, list) or len(sides) != 2:
            raise CheckpointError(f"{where} must be a side or [height, width], got {size!r:.60}")
        height, width = (_integer(side, where, minimum=1) for side in sides)
        return "model_args.img_size", (height, width)
    fixed = _flag(
        pretrained_cfg.get("fixed_input_size", False), f"{path}: pretrained_cfg.fixed_input_size"
    )
    if not fixed or "input_size" not in pretrained_cfg:
        return None
    where, input_size = f"{path}: pretrained_cfg.input_size", pretrained_cfg["input_size"]
    if not isinstance(input_size, list) or len(input_size) != 3:
        raise CheckpointError(f"{where} must be [channels, height, width], got {input_size!r:.60}")
    height, width = (_integer(side, where, minimum=1) for side in input_size[1:])
    return "pretrained_cfg.input_size", (height, width)


def _pooling(
    content: Mapping[str, Any], model_args: Mapping[str, Any], path: Path
) -> tuple[str, str] | None:
    """(the key, timm's global_pool) the model was built with: model_args' (what timm builds
    from), else the top level's (a hub export's, informational for timm); None when neither."""
    pools = {}
    for key, pool in (
        ("model_args.global_pool", model_args.get("global_pool")),
        ("global_pool", content.get("global_pool")),
    ):
        if pool is not None:
            pools[key] = _choice(pool, f"{path}: {key}", _POOLS)
    if len(set(pools.values())) > 1:
        raise CheckpointError(
            f"{path}: global_pool {pools['global_pool']!r} and "
            f"model_args.global_pool {pools['model_args.global_pool']!r} "
            "disagree"
        )
    return next(iter(pools.items()), None)


def read_timm_config(path: Path, content: Mapping[str, Any] | None = None) -> TimmConfig:
    """The checked contents of timm's config.json at `path` (`content`: the file parsed
    already); a CheckpointError naming the file and the key for any value of the wrong type or
    one vitkit does not model."""
    content = read_json_object(path) if content is None else content
    if not is_timm_config(content):
        raise CheckpointError(f'{path}: not timm\'s (no "architecture" and "pretrained_cfg")')
    if not isinstance(content["architecture"], str):
        raise CheckpointError(f"{path}: architecture must be a timm model name (a string)")
    pretrained_cfg, model_args = content["pretrained_cfg"], content.get("model_args", {})
    for key, value in (("pretrained_cfg", pretrained_cfg), ("model_args", model_args)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: {key} must be an object, got {type(value).__name__}")
    told: dict[str, tuple[str, object]] = {}
    num_heads = model_args.get("num_heads")
    if num_heads is not None:
        num_heads = _integer(num_heads, f"{path}: model_args.num_heads", minimum=1)
        told["num_heads"] = ("model_args.num_heads", num_heads)
    img_size = None
    if found := _image_size(model_args, pretrained_cfg, path):
        key, img_size = found
        told["img_size"] = (key, list(img_size))
    classifier = None
    if found := _pooling(content, model_args, path):
        told["classifier"] = found
        classifier = _POOLS[found[1]]
    gelu = None
    if (act_layer := model_args.get("act_layer")) is not None:
        gelu = _ACT_LAYERS[_choice(act_layer, f"{path}: model_args.act_layer", _ACT_LAYERS)]
        told["gelu"] = ("model_args.act_layer", act_layer)
    init_values = model_args.get("init_values")
    if init_values is not None and (
        isinstance(init_values, bool)
        or not isinstance(init_values, int | float)
        or not 0 < init_values < 1e6
    ):
        raise CheckpointError(
            f"{path}: model_args.init_values must be a positive number, got {init_values!r:.60}"
        )
    norm_layer = model_args.get("norm_layer")
    if norm_layer is not None and (
        not isinstance(norm_layer, str) or norm_layer.replace("_", "").lower() != "layernorm"
    ):
        raise CheckpointError(
            f"{path}: model_args.norm_layer is {norm_layer!r:.60}; vitkit reads "
            "timm's LayerNorm ('layernorm', eps 1e-6) only"
        )
    label_names = None  # the top level's first, as timm reads them
    if (names := content.get("label_names")) is not None:
        label_names = ("label_names", names)
    elif (names := pretrained_cfg.get("label_names")) is not None:
        label_names = ("pretrained_cfg.label_names", names)
    claims = _claims(content, model_args, pretrained_cfg, path)
    return TimmConfig(
        path,
        num_heads,
        img_size,
        classifier,
        gelu,
        None if init_values is None else float(init_values),
        told,
        claims,
        pretrained_cfg,
        label_names,
    )


def _claims(
    content: Mapping[str, Any],
    model_args: Mapping[str, Any],
    pretrained_cfg: Mapping[str, Any],
    path: Path,
) -> tuple[tuple[str, str, object], ...]:
    """Every value the file gives that the weights record too, type-checked: (key, ViTConfig
    field, value); model_args' mlp_ratio stands for the MLP width timm builds from it."""
    claims = []
    for key, field in _INT_ARGS.items():
        if (value := model_args.get(key)) is not None:
            minimum = 0 if field in ("num_classes", "reg_tokens") else 1
            value = _integer(value, f"{path}: model_args.{key}", minimum=minimum)
            claims.append((f"model_args.{key}", field, value))
    for key in _BOOL_ARGS:
        if (value := model_args.get(key)) is not None:  # fc_norm None: timm's choice by pooling
            claims.append((f"model_args.{key}", key, _flag(value, f"{path}: model_args.{key}")))
    for key, field, value in (
        ("num_classes", "num_classes", content.get("num_classes")),
        ("num_features", "width", content.get("num_features")),
        ("pretrained_cfg.num_classes", "num_classes", pretrained_cfg.get("num_classes")),
    ):
        if value is not None:
            claims.append((key, field, _integer(value, f"{path}: {key}", minimum=0)))
    if (ratio := model_args.get("mlp_ratio")) is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1e6:
            raise CheckpointError(
                f"{path}: model_args.mlp_ratio must be a positive number, got {ratio!r:.60}"
            )
        claims.append(("model_args.mlp_ratio", "mlp_ratio", ratio))
    return tuple(claims)


def _with_numerics(record: TimmConfig, config: ViTConfig) -> ViTConfig:
    """`config` with the GELU and LayerScale start the file records, which no weights show."""
    changes: dict[str, object] = {}
    if record.gelu is not None:
        changes["gelu"] = record.gelu
    if record.layer_scale_init is not None:
        if config.layer_scale_init is None:
            raise CheckpointError(
                f"{record.path}: model_args.init_values is {record.layer_scale_init!r} but the "
                "weights have no LayerScale (blocks.N.ls1, ls2)"
            )
        changes["layer_scale_init"] = record.layer_scale_init
    return dataclasses.replace(config, **changes)


def _check_claims(record: TimmConfig, config: ViTConfig) -> None:
    """Hold every claim of the file to the config its weights give."""
    for key, field, value in record.claims:
        claimed = value
        if field == "mlp_ratio":  # timm's MLP width is int(embed_dim * mlp_ratio)
            field, claimed = "mlp_dim", int(config.width * value)
        if getattr(config, field) != claimed:
            raise CheckpointError(
                f"{record.path}: {key} is {value!r} but the weights give {field}="
                f"{getattr(config, field)!r}"
            )


@dataclass(frozen=True)
class TimmCheckpoint:
    """A timm checkpoint converted: config, state dict in vitkit's names, preprocessing, class
    names (None when none are recorded) and the weights file they came from."""

    config: ViTConfig
    state: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    class_names: ClassNames | None
    weights: Path


def _folder_weights(directory: Path) -> Path:
    for name in WEIGHTS_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: a timm folder with neither {' nor '.join(WEIGHTS_FILES)}")


def _config_beside(weights: Path) -> TimmConfig | None:
    """The timm config.json beside a bare weights file (a hub repository's), or None when there
    is none: no file, or another program's (transformers', vitkit's), or no JSON object."""
    path = weights.with_name(CONFIG_FILE)
    if not path.is_file():
        return None
    try:
        content = read_json_object(path)
    except CheckpointError:
        return None  # not ours to judge: a transformers or vitkit config is read elsewhere
    return read_timm_config(path, content) if is_timm_config(content) else None


def _agreed(record: TimmConfig, field: str, given: object, recorded: object) -> object:
    """The caller's value for `field` where the file records none, else the file's; both and
    different is a contradiction."""
    if given is not None and recorded is not None and given != recorded:
        key, value = record.told[field]
        raise CheckpointError(
            f"{record.path}: {key} records {value!r}; {field}={given!r} contradicts it"
        )
    return recorded if given is None else given


def read_timm(
    path: Path,
    *,
    num_heads: int | None = None,
    classifier: Classifier | None = None,
    gelu: Gelu | None = None,
) -> TimmCheckpoint:
    """A timm checkpoint: a folder in timm's local-dir layout (config.json + weights), or a bare
    state dict file with, where there is one, the timm config.json beside it. `num_heads`,
    `classifier` and `gelu` say what neither records (a bare file's heads, pooling and a CLIP
    tower's activation) and must agree with the file where it does. A bare file's class names
    are its labels file's (`class_names.labels_file`), else its config.json's."""
    path = Path(path)
    if path.is_dir():
        record, weights = read_timm_config(path / CONFIG_FILE), _folder_weights(path)
    else:
        record, weights = _config_beside(path), path
    state = read_state_dict(weights)
    if record is None:
        config, state = timm_to_vitkit(state, num_heads=num_heads, classifier=classifier, gelu=gelu)
    else:
        num_heads = _agreed(record, "num_heads", num_heads, record.num_heads)
        classifier = _agreed(record, "classifier", classifier, record.classifier)
        gelu = _agreed(record, "gelu", gelu, record.gelu)
        try:
            config, state = timm_to_vitkit(
                state,
                num_heads=num_heads,
                img_size=record.img_size,
                classifier=classifier,
                gelu=gelu,
            )
        except (CheckpointError, ConfigError) as error:
            if not record.told:
                raise
            told = ", ".join(f"{key}={value!r}" for key, value in record.told.values())
            raise CheckpointError(f"{error} (read with {record.path}: {told})") from None
        config = _with_numerics(record, config)
        _check_claims(record, config)
    if classifier is None and pooling_unrecorded(state):
        warnings.warn(
            UnrecordedPoolingWarning(
                f"{path}: a timm state dict does not record its pooling; read as "
                f"{_POOLING_WORDS[config.classifier]} (this timm model's default); one made "
                f"otherwise needs classifier={_OTHER_POOLING[config.classifier]!r} "
                f"(--classifier {_OTHER_POOLING[config.classifier]})"
            ),
            stacklevel=4,
        )
    if gelu is None and activation_unrecorded(state):
        warnings.warn(
            UnrecordedActivationWarning(
                f"{path}: a timm CLIP tower's state dict does not record its activation; read "
                "with exact GELU (OpenCLIP's); OpenAI's weights need gelu='quick' (--gelu quick)"
            ),
            stacklevel=4,
        )
    preprocessing = timm_preprocessing(None if record is None else record.pretrained_cfg, config)
    return TimmCheckpoint(config, state, preprocessing, _class_names(path, record, config), weights)


def _class_names(path: Path, record: TimmConfig | None, config: ViTConfig) -> ClassNames | None:
    """A bare file's labels file (`class_names.labels_file`), else the config.json's
    label_names (timm allows a dict of index -> name, for labels with gaps: vitkit's heads have
    none, so its keys must be "0" to "n-1")."""
    if not path.is_dir() and (labels := labels_file(path)).is_file():
        return read_labels(labels, config.num_classes)
    if record is None or record.label_names is None:
        return None
    key, names = record.label_names
    source = f"{record.path}: {key}"
    if isinstance(names, dict):
        if sorted(names) != sorted(map(str, range(len(names)))):
            raise CheckpointError(f"{source}: maps names to other keys than the indices 0 to n-1")
        names = [names[str(index)] for index in range(len(names))]
    return checked_class_names(names, config.num_classes, source=source)
