"""`load_model`: read any supported checkpoint, build the model it describes, load it strictly.

Formats are detected from the path: a `.npz` file is Google's; a directory whose `config.json`
says `"format": "vitkit"` is vitkit's own (`save_pretrained`), one whose `config.json` names an
"architecture" and holds a "pretrained_cfg" is timm's (its local-dir layout, a hub repository),
any other directory with `config.json` is Hugging Face transformers'; `.safetensors`, `.pth`, `.pt`
and `.bin` files are torchvision state dicts when their keys are torchvision's (conv_proj,
encoder.pos_embedding), timm state dicts otherwise.

Each reader also gives the weights' `Preprocessing` record, which becomes `model.preprocessing`:
vitkit's config.json records it; transformers' preprocessor_config.json holds image_mean,
image_std and resample; a timm hub repository's config.json the `pretrained_cfg`; torchvision's
weights take ImageNet's statistics and Google's [-1, 1]. Registered weights
("ViT-B/16@i21k") take their registry entry's mean and std.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.io import regular_file
from vitkit.models.config import Classifier, Gelu, ViTConfig, as_pair
from vitkit.models.patch_resample import resample_patch_embed
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer, resize_position_parameter
from vitkit.weights.class_names import ClassNames, labels_file, read_labels
from vitkit.weights.files import read_json_object, read_state_dict, torch_load, unwrap_state_dict
from vitkit.weights.google import google_to_vitkit, read_google_npz
from vitkit.weights.hf import (
    HF_FIELD_NAMES,
    class_names_from_hf,
    hf_to_vitkit,
    preprocessing_from_hf,
)
from vitkit.weights.native import CONFIG_FILE, WEIGHTS_FILE, is_native_config, read_native
from vitkit.weights.registry import registered_weights, resolve_checkpoint
from vitkit.weights.state_dict import (
    PartialLoadWarning,
    build_and_load,
    check_architecture,
    expected_shapes,
)
from vitkit.weights.timm_folder import is_timm_config, read_timm
from vitkit.weights.torchvision import (
    looks_like_torchvision,
    torchvision_preprocessing,
    torchvision_to_vitkit,
)

Format = Literal["npz", "timm", "hf", "torchvision", "vitkit"]
# Every format `load_model` reads (`format=`, `vitkit convert --format`), in one place.
SOURCE_FORMATS: tuple[Format, ...] = get_args(Format)
# The formats whose files hold parameters only: class names live beside them in a labels file
# (`class_names.labels_file`), read by their readers (here; timm's in `timm_folder.read_timm`)
# and written by `export_model`. timm's folder form holds them in its config.json.
PARAMETERS_ONLY: tuple[Format, ...] = ("npz", "timm", "torchvision")
_TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def detect_format(path: Path) -> Format:
    if path.is_dir():
        if (path / "config.json").is_file():
            content = read_json_object(path / "config.json")
            if is_native_config(content):
                return "vitkit"
            return "timm" if is_timm_config(content) else "hf"
        raise CheckpointError(f"{path}: a directory without config.json is no known checkpoint")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix == ".npz":
        return "npz"
    if path.suffix in _TORCH_SUFFIXES:
        return "torchvision" if looks_like_torchvision(_state_dict_keys(path)) else "timm"
    raise CheckpointError(
        f"{path}: cannot tell the checkpoint format from the name; expected a Google .npz, a "
        f"vitkit, timm or Hugging Face directory or a timm state dict "
        f"({', '.join(_TORCH_SUFFIXES)}); pass format="
    )


def _state_dict_keys(path: Path) -> list[str]:
    """The tensor names of a state dict file, read without loading the tensors where the file
    allows it (safetensors' header; a memory-mapped torch zip); [] when it cannot be read, so
    that the reader chosen afterwards reports the problem."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                return list(file.keys())
        state = unwrap_state_dict(torch_load(path, mmap=True))
    except MemoryError:
        raise
    except Exception:
        return []
    return [key for key in state if isinstance(key, str)] if isinstance(state, dict) else []


@dataclass(frozen=True)
class _Checkpoint:
    """What a reader found, and where, for errors: the file the architecture was read from (a
    config file, or the weights' own shapes) and its names for ViTConfig's fields; the
    preprocessing the weights expect; and the class names where the format records them
    (vitkit's and transformers'; .npz and state dicts hold parameters only)."""

    config: ViTConfig
    state: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    config_source: str
    weights_source: str
    field_names: Mapping[str, str] = field(default_factory=dict)
    class_names: ClassNames | None = None


@dataclass(frozen=True)
class Unrecorded:
    """What some files cannot say and the caller may: the number of heads (timm and torchvision
    state dicts), the pooling (a timm state dict with a [class] token and no fc_norm) and the
    activation (a timm CLIP tower's state dict). A value given for a file that records the
    setting must agree with it."""

    num_heads: int | None = None
    classifier: Classifier | None = None
    gelu: Gelu | None = None


def _read(path: Path, format: Format, told: Unrecorded) -> _Checkpoint:
    """The checkpoint at `path` in `format`, converted to vitkit's config and names, with the
    settings `told` where the file cannot tell them and checked against the file's where it
    can."""
    checkpoint = _read_format(path, format, told)
    for setting in dataclasses.fields(told):
        given, recorded = getattr(told, setting.name), getattr(checkpoint.config, setting.name)
        if given is not None and given != recorded:
            raise CheckpointError(
                f"{path}: records {setting.name}={recorded!r}; {setting.name}={given!r} "
                "contradicts it"
            )
    return checkpoint


def _read_format(path: Path, format: Format, told: Unrecorded) -> _Checkpoint:
    shapes = "the config its shapes give"
    if format == "timm":  # a folder, or a bare file with its config.json or labels file beside
        timm = read_timm(path, num_heads=told.num_heads, classifier=told.classifier, gelu=told.gelu)
        return _Checkpoint(timm.config, timm.state, timm.preprocessing, shapes,
                           timm.weights.name, class_names=timm.class_names)  # fmt: skip
    inferred = dict(config_source=shapes, weights_source=path.name)
    if format == "npz":
        config, state = google_to_vitkit(read_google_npz(path))
        # The files record no preprocessing; Google's models all take [-1, 1].
        preprocessing = Preprocessing.google(config.img_size, channels=config.in_chans)
    elif format == "torchvision":
        config, state = torchvision_to_vitkit(read_state_dict(path), num_heads=told.num_heads)
        preprocessing = torchvision_preprocessing(config)
    if format in PARAMETERS_ONLY:  # names live beside the file
        names = None
        if (labels := labels_file(path)).is_file():
            names = read_labels(labels, config.num_classes)
        return _Checkpoint(config, state, preprocessing, **inferred, class_names=names)
    if format == "hf":
        weights = _hf_weights(path)
        preprocessor_file = path / "preprocessor_config.json"
        preprocessor = read_json_object(preprocessor_file) if preprocessor_file.is_file() else None
        hf_config = read_json_object(path / "config.json")
        config, state = hf_to_vitkit(hf_config, read_state_dict(weights))
        preprocessing = preprocessing_from_hf(preprocessor, config)
        names = class_names_from_hf(hf_config, config.num_classes)
        return _Checkpoint(config, state, preprocessing, "config.json", weights.name,
                           HF_FIELD_NAMES, names)  # fmt: skip
    if format == "vitkit":
        config, state, names, preprocessing = read_native(path)
        return _Checkpoint(config, state, preprocessing, CONFIG_FILE, WEIGHTS_FILE,
                           class_names=names)  # fmt: skip
    *others, last = map(repr, SOURCE_FORMATS)
    raise CheckpointError(f"unknown format {format!r}; expected {', '.join(others)} or {last}")


def _hf_weights(path: Path) -> Path:
    for name in _HF_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path}: has neither {' nor '.join(_HF_WEIGHTS)}")


def _resized_positions(
    state: dict[str, torch.Tensor], config: ViTConfig, grid: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """`state` of a model of `config` with its position tables resized for the patch grid `grid`
    (`resize_position_parameter`). A table whose shape is not the one `config` gives it is left
    as it is, for the strict load to report, never resized from whatever size it has."""
    expected = expected_shapes(config)
    return {
        key: resize_position_parameter(key, tensor, config=config, new_grid=grid)
        if tuple(tensor.shape) == expected.get(key)
        else tensor
        for key, tensor in state.items()
    }


def _resampled_patches(state: dict[str, torch.Tensor], patch_size: int) -> dict[str, torch.Tensor]:
    """`state` with its patch-embedding kernel resampled for `patch_size` (FlexiViT)."""
    key = "patch_embed.proj.weight"
    if key not in state or state[key].ndim != 4:  # missing or misshapen: the strict load says so
        return state
    return {**state, key: resample_patch_embed(state[key], patch_size)}


def load_model(
    path: str | Path,
    *,
    img_size: int | tuple[int, int] | None = None,
    patch_size: int | None = None,
    num_classes: int | None = None,
    format: Format | None = None,
    num_heads: int | None = None,
    classifier: Classifier | None = None,
    gelu: Gelu | None = None,
    strict: bool = True,
    dynamic_img_size: bool = False,
) -> VisionTransformer:
    """Build the model a checkpoint describes and load its weights (returned in eval mode).
    `model.class_names` are the labels the checkpoint records for its head (vitkit's
    "class_names", transformers' id2label), else None.

    path: a file or directory; or the name of released weights ("ViT-B/16@i21k", see
        `vitkit pretrained`), downloaded into $VITKIT_HOME/weights on first use; or a Hugging
        Face hub id ("hf:google/vit-base-patch16-224", or plain "org/name"), fetched into the
        hub's cache. An existing local path always wins.

    img_size: build for this resolution instead of the checkpoint's; the position embeddings
        are resized on the patch grid (the paper's fine-tuning at higher resolution), and
        `model.preprocessing` resizes images to it.
    patch_size: build for patches of this size instead of the checkpoint's (FlexiViT): the
        patch-embedding kernel is resampled by the pseudo-inverse of the patch resize
        (`vitkit.models.patch_resample`) and the position embeddings resized to the new grid;
        with img_size, both change.
    num_classes: replace the head by a new zero-initialised one and drop the pre-logits layer,
        as the paper does for fine-tuning (even when the count equals the checkpoint's); the
        class names, which belong to the old head, are dropped with it.
    format: one of `SOURCE_FORMATS` ("npz", "timm", "hf", "torchvision", "vitkit"), when the
        path does not tell.
    num_heads: for timm and torchvision state dicts whose width is no paper variant's (their
        files omit it).
    classifier: "token" or "gap", the pooling, for timm state dicts with a [class] token and
        no fc_norm, whose keys cannot tell timm's global_pool "token" from "avg" (read as
        "token" with an `UnrecordedPoolingWarning` when not given and no config.json beside the
        file records it); for any other file it must agree with what the file records.
    gelu: "exact", "tanh" or "quick", the activation, for timm CLIP towers' state dicts (a
        pre-norm), whose keys cannot tell OpenAI's quick GELU from OpenCLIP's exact one (read
        as exact with an `UnrecordedActivationWarning` when not given); for any other file it
        must agree with what the file records. (The same three go to every command as
        --num-heads, --classifier and --gelu, and to training as init_settings.)
    dynamic_img_size: build a model that takes images of any size whose sides are multiples of
        the patch size, its position embeddings resized to each input's grid at every call (as
        timm's dynamic_img_size=True); packed evaluation at each image's aspect ratio needs it.
    strict: True raises a `CheckpointError` listing every missing, unexpected and misshapen key;
        False loads the keys that fit, leaves the others at their initial values and lists them
        all in a `PartialLoadWarning` (for partial loads, e.g. a backbone without its head), as
        long as it loads more parameters than it leaves.

    Files come from strangers: nothing in them runs, their sizes are checked before anything is
    inflated or built, and every problem is a one-line `CheckpointError` naming the file and the
    key or field. Weights must be fp16, bf16, fp32 or fp64; NaN or inf ones load with a
    `NonFiniteWeightsWarning` naming them.
    """
    registered = registered_weights(path)
    path = resolve_checkpoint(path)
    if not path.is_dir():  # a FIFO would hang the read, /dev/zero fill memory
        regular_file(path, error=CheckpointError)
    format = format or detect_format(path)
    try:
        told = Unrecorded(num_heads=num_heads, classifier=classifier, gelu=gelu)
        checkpoint = _read(path, format, told)
        # Before anything is built: a config claiming more than the tensors hold fails here.
        check_architecture(
            checkpoint.config,
            checkpoint.state,
            config_source=checkpoint.config_source,
            weights_source=checkpoint.weights_source,
            names=checkpoint.field_names,
        )
        preprocessing = checkpoint.preprocessing
        if registered is not None:  # the registry knows the weights better than their file
            preprocessing = dataclasses.replace(
                preprocessing, mean=registered.mean, std=registered.std
            )
        preprocessing.check_channels(checkpoint.config.in_chans)
    except (CheckpointError, ConfigError) as error:
        message = str(error)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None

    config, state = checkpoint.config, checkpoint.state
    target = dataclasses.replace(
        config,
        img_size=config.img_size if img_size is None else as_pair(img_size),
        patch_size=config.patch_size if patch_size is None else patch_size,
    )
    if target != config:
        state = _resized_positions(state, config, target.grid_size)
        state = _resampled_patches(state, target.patch_size)
        config = target
        preprocessing = dataclasses.replace(preprocessing, resolution=config.img_size)
    if dynamic_img_size:
        config = dataclasses.replace(config, dynamic_img_size=True)
    model, report = build_and_load(config, state, source=str(path), strict=strict)
    if report:
        warnings.warn(PartialLoadWarning(f"{path}: loaded partially: {report}"), stacklevel=2)
    model.preprocessing = preprocessing
    model.class_names = checkpoint.class_names
    if num_classes is not None:
        model.reset_classifier(num_classes)  # a new head: the names go with the old one
    return model.eval()
