"""Hugging Face transformers directories (config.json + model.safetensors/pytorch_model.bin),
read and written: the ViT here, and the families of weights/hf_*.py (DINOv2, DINOv3, CLIP's and
SigLIP's image towers) chosen from `FAMILIES` by model_type when reading and by the model's
config when writing. This module keeps what every family shares: the preprocessor file, the
class names and the writing of the directory.

Handles `ViTForImageClassification` (head "classifier") and `ViTModel` (optionally with its
pooler, Linear + tanh on the [class] token, which is the paper's pre-logits layer). Both the key
names of files on the Hub (encoder.layer.N.attention.attention.query, ...) and those of
transformers 5 modules (layers.N.attention.q_proj, ...) are read. Numerics are taken from the
config: exact GELU for "gelu", LayerNorm eps usually 1e-12. The weights' preprocessing (image_mean,
image_std, resample) is preprocessor_config.json's, read and written beside them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitkit.errors import CheckpointError, ConfigError
from vitkit.io import atomic_write, atomic_write_json
from vitkit.models.config import ViTConfig, config_from_fields
from vitkit.models.preprocessing import Interpolation, Preprocessing
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value
from vitkit.weights.class_names import ClassNames, checked_class_names, model_class_names
from vitkit.weights.hf_clip import CLIP
from vitkit.weights.hf_dinov2 import DINOV2
from vitkit.weights.hf_dinov3 import DINOV3
from vitkit.weights.hf_family import HFFamily, sizes_entries
from vitkit.weights.hf_siglip import SIGLIP
from vitkit.weights.key_maps import Row, read_renamed, to_foreign
from vitkit.weights.shapes import require_shape

# transformers' ACT2FN names: the exact (erf) GELU, and the tanh approximation.
_EXACT_GELUS = ("gelu", "gelu_python")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")

# Every parameter of a transformers ViT, without the "vit." prefix that ViTForImageClassification
# adds to all but its classifier: vitkit's key, the key of the files on the Hub (which every
# transformers version reads, and which the writer writes), and the key of transformers 5's
# modules (read too). The tensors are vitkit's as they are; query, key and value fuse, in this
# order, into vitkit's qkv. The reader and the writer both follow from this table.
_HUB, _V5 = "encoder.layer.{i}.", "layers.{i}."
# fmt: off
HF_KEYS: tuple[Row, ...] = (
    Row("cls_token", "embeddings.cls_token"),
    Row("pos_embed", "embeddings.position_embeddings"),
    Row("patch_embed.proj.{w}", "embeddings.patch_embeddings.projection.{w}"),
    Row("blocks.{i}.norm1.{w}", _HUB + "layernorm_before.{w}",
        aliases=(_V5 + "layernorm_before.{w}",)),
    Row("blocks.{i}.attn.qkv.{w}", _HUB + "attention.attention.query.{w}",
        aliases=(_V5 + "attention.q_proj.{w}",)),
    Row("blocks.{i}.attn.qkv.{w}", _HUB + "attention.attention.key.{w}",
        aliases=(_V5 + "attention.k_proj.{w}",)),
    Row("blocks.{i}.attn.qkv.{w}", _HUB + "attention.attention.value.{w}",
        aliases=(_V5 + "attention.v_proj.{w}",)),
    Row("blocks.{i}.attn.proj.{w}", _HUB + "attention.output.dense.{w}",
        aliases=(_V5 + "attention.o_proj.{w}",)),
    Row("blocks.{i}.norm2.{w}", _HUB + "layernorm_after.{w}",
        aliases=(_V5 + "layernorm_after.{w}",)),
    Row("blocks.{i}.mlp.fc1.{w}", _HUB + "intermediate.dense.{w}", aliases=(_V5 + "mlp.fc1.{w}",)),
    Row("blocks.{i}.mlp.fc2.{w}", _HUB + "output.dense.{w}", aliases=(_V5 + "mlp.fc2.{w}",)),
    Row("norm.{w}", "layernorm.{w}"),
    Row("pre_logits.0.{w}", "pooler.dense.{w}"),  # ViTModel's pooler: Linear + tanh
    Row("head.{w}", "classifier.{w}"),
)
# fmt: on
# The fields transformers' ViTConfig has no default for (vitkit reads no default for them).
_REQUIRED_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")


# ViTConfig fields under the names of transformers' config.json, for errors that name the field
# the file has.
HF_FIELD_NAMES = {
    "img_size": "image_size",
    "patch_size": "patch_size",
    "in_chans": "num_channels",
    "width": "hidden_size",
    "depth": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "mlp_dim": "intermediate_size",
    "qkv_bias": "qkv_bias",
    "layer_norm_eps": "layer_norm_eps",
    "num_classes": "the classifier's rows",
    "representation_size": "the pooler's rows",
}


def _patch_size(value: object) -> object:
    """config.json's patch_size, an int or an [h, w] pair (square patches only); other values
    are left for ViTConfig to refuse."""
    if not isinstance(value, list) or len(value) != 2:
        return value
    height, width = value
    if height != width:
        raise CheckpointError(
            f"config.json: patch_size {height!r:.20}x{width!r:.20} is not square, which vitkit "
            "does not support"
        )
    return height


def _rows(state: dict[str, torch.Tensor], key: str) -> int | None:
    """The rows of a 2-d weight (a layer's outputs), None when the state has no `key`."""
    if key not in state:
        return None
    return require_shape(state, key, 2)[0]


def config_from_hf(hf_config: dict, state: dict[str, torch.Tensor]) -> ViTConfig:
    """vitkit's config for a transformers `ViTConfig` dict and its (vitkit-named) weights."""
    if hf_config.get("model_type", "vit") != "vit":
        raise CheckpointError(
            f"config.json: model_type {hf_config['model_type']!r:.60} is not 'vit'"
        )
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in (*_EXACT_GELUS, *_TANH_GELUS):
        raise CheckpointError(f"config.json: hidden_act {activation!r:.60} is not a GELU")
    # vitkit's pre-logits layer is Linear + tanh; transformers' pooler applies `pooler_act`.
    pooler_act = hf_config.get("pooler_act", "tanh")
    if "pre_logits.0.weight" in state and pooler_act != "tanh":
        raise CheckpointError(
            f"config.json: the pooler's activation pooler_act={pooler_act!r:.60} is not 'tanh', "
            "which vitkit does not support"
        )
    missing = [name for name in _REQUIRED_FIELDS if name not in hf_config]
    if missing:
        raise CheckpointError(f"config.json: missing field {missing[0]!r}")
    width, num_heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim")
    if head_dim is not None and not (
        isinstance(head_dim, int) and isinstance(num_heads, int) and head_dim * num_heads == width
    ):
        raise CheckpointError(
            f"config.json: head_dim {head_dim!r:.40} x num_attention_heads {num_heads!r:.40} is "
            f"not hidden_size {width!r:.40}, which vitkit does not support"
        )
    values = dict(
        img_size=hf_config.get("image_size", 224),
        patch_size=_patch_size(hf_config.get("patch_size", 16)),
        in_chans=hf_config.get("num_channels", 3),
        width=width,
        depth=hf_config["num_hidden_layers"],
        num_heads=num_heads,
        mlp_dim=hf_config["intermediate_size"],
        qkv_bias=hf_config.get("qkv_bias", True),
        num_classes=_rows(state, "head.weight") or 0,
        representation_size=_rows(state, "pre_logits.0.weight"),
        gelu="exact" if activation in _EXACT_GELUS else "tanh",
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
    )
    try:
        return config_from_fields(values, names=HF_FIELD_NAMES)
    except ConfigError as error:
        raise CheckpointError(f"config.json: {error}") from None


def hf_to_vitkit(
    hf_config: dict, hf_state: dict[str, torch.Tensor]
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a transformers directory (config dict, state dict) to (config, vitkit state
    dict), by the family its model_type names (`FAMILIES`; a ViT by default)."""
    model_type = hf_config.get("model_type")
    family = next((family for family in FAMILIES if model_type in family.model_types), VIT)
    return family.read(hf_config, hf_state)


def _vit_to_vitkit(
    hf_config: dict, hf_state: dict[str, torch.Tensor]
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """(config, vitkit state dict) of a transformers ViT."""
    # ViTForImageClassification prefixes its ViTModel with "vit."; the [mask] token is only used
    # for masked-image modelling, never in classification.
    renamed = {key.removeprefix("vit."): value for key, value in hf_state.items()}
    renamed.pop("embeddings.mask_token", None)
    state = read_renamed(HF_KEYS, renamed, source="transformers ViT")
    return config_from_hf(hf_config, state), state


# The two resizes vitkit has, by the numbers ViTImageProcessor's "resample" holds (PIL's
# Image.Resampling: 2 BILINEAR, 3 BICUBIC).
_RESAMPLE: dict[int, Interpolation] = {2: "bilinear", 3: "bicubic"}
_PREPROCESSOR_NAMES = {
    "mean": "image_mean (preprocessor_config.json)",
    "std": "image_std (preprocessor_config.json)",
}


def preprocessing_from_hf(preprocessor: dict | None, config: ViTConfig) -> Preprocessing:
    """The preprocessing of a transformers directory's weights at the model's resolution:
    preprocessor_config.json's image_mean/image_std (ViTImageProcessor's default 0.5, i.e.
    [-1, 1], when the file or the field is absent) and its resample filter (bicubic for PIL's 3,
    else bilinear, ViTImageProcessor's default)."""
    preprocessor = preprocessor or {}
    default = Preprocessing.google(config.img_size, channels=config.in_chans)
    resample = preprocessor.get("resample")
    values = dict(
        resolution=config.img_size,
        mean=preprocessor.get("image_mean", default.mean),
        std=preprocessor.get("image_std", default.std),
        interpolation=_RESAMPLE.get(resample, "bilinear") if type(resample) is int else "bilinear",
    )
    try:
        return Preprocessing.from_fields(values, names=_PREPROCESSOR_NAMES)
    except ConfigError as error:
        raise CheckpointError(f"preprocessor_config.json: {error}") from None


def class_names_from_hf(hf_config: dict, num_classes: int) -> ClassNames | None:
    """The class names of config.json's id2label, None when it has only transformers' defaults
    ("LABEL_0", ...) or the model has no head (ViTModel configs keep a default id2label).

    id2label must map "0".."N-1" (N the classifier's rows) to strings, as transformers writes it.
    """
    id2label = hf_config.get("id2label")
    if num_classes == 0 or id2label is None:
        return None
    source = "config.json: id2label"
    if not isinstance(id2label, dict):
        raise CheckpointError(f"{source}: must be an object, not a {type(id2label).__name__}")
    expected = [str(i) for i in range(num_classes)]
    if set(id2label) != set(expected):
        keys = ", ".join(list(id2label)[:6]) + (", ..." if len(id2label) > 6 else "")
        raise CheckpointError(
            f"{source}: keys must be 0..{num_classes - 1} (the classifier's rows), got "
            f"{len(id2label)} keys: {keys:.100}"
        )
    names = [id2label[key] for key in expected]
    if names == [f"LABEL_{i}" for i in range(num_classes)]:
        return None  # transformers' placeholders: the file names no classes
    return checked_class_names(names, num_classes, source=source)


# ---------------------------------------------------------------------------------------------
# Writing: vitkit -> transformers, under the key names of the files on the Hub (`HF_KEYS`), which
# every transformers version reads (transformers 5 renames them to its own modules when loading).


# What a transformers ViT directory can hold (weights/capabilities.py); the reasons for the
# narrow ones are `hf_refusal`'s.
HF_HOLDS: Holds = {
    **PAPER_FIELDS,
    "qkv_bias": ANY,
    "classifier": ("token",),
    "class_token": (True,),
    "representation_size": ANY,
    "gelu": ("exact", "tanh"),
    "layer_norm_eps": ANY,
}


def hf_refusal(config: ViTConfig) -> str | None:
    """Why no transformers model vitkit writes can express `config`, or None: the family that
    writes it (`writing_family`) answers."""
    return writing_family(config).refusal(config)


def _vit_refusal(config: ViTConfig) -> str | None:
    """Why transformers' ViT cannot express `config`, or None when it can: the one reason, the
    first that fails, naming only the field that differs (`export_model` adds the formats that
    do hold the model). Its numerics (GELU flavour, LayerNorm eps) are recorded in config.json,
    so they never stand in the way."""
    if problem := no_place(config, HF_HOLDS, holder="transformers' ViT"):
        return problem
    if config.is_hybrid:
        return (
            "transformers has no ResNet + ViT hybrid (ViTHybrid was removed in transformers 5), "
            f"and this model has a ResNet stem (resnet_layers={config.resnet_layers})"
        )
    if not config.class_token:
        return (
            "transformers' ViT always prepends a [class] token, and this model has none "
            "(class_token=False)"
        )
    if config.classifier != "token":
        return (
            "ViTForImageClassification reads the [class] token, but this model averages the "
            f"patch tokens (classifier={config.classifier!r})"
        )
    if config.representation_size and config.num_classes:
        return (
            "ViTForImageClassification has no pre-logits layer (Linear + tanh) before its head, "
            "and ViTModel's pooler, which is one, has no head; drop the pre-logits layer first "
            "(load with num_classes=...) or export the features only (num_classes=0)"
        )
    return unheld_value(config, HF_HOLDS, holder="transformers' ViT")


def vitkit_to_hf(
    config: ViTConfig,
    state: dict[str, torch.Tensor],
    class_names: ClassNames | None = None,
    preprocessing: Preprocessing | None = None,
) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(config.json, state dict, preprocessor_config.json) of the transformers model computing
    what a vitkit model of `config` computes: `ViTForImageClassification` when it has a head,
    else `ViTModel` (with its pooler as the pre-logits layer where there is one); a DINOv2, a
    CLIPVisionModel or a SiglipVisionModel for the models `hf_refusal` sends there.

    class_names become id2label/label2id (what `pipeline("image-classification")` prints);
    without them, transformers' own placeholders "LABEL_i". preprocessing (the model's record;
    Google's [-1, 1] at the model's size by default) becomes the image processor's size,
    image_mean, image_std and resample."""
    if problem := hf_refusal(config):
        raise CheckpointError(problem)
    class_names = checked_class_names(class_names, config.num_classes, source="class_names")
    hf_config, hf_state = writing_family(config).write(config, state)
    if config.num_classes:
        names = class_names or [f"LABEL_{i}" for i in range(config.num_classes)]
        hf_config["id2label"] = {str(i): name for i, name in enumerate(names)}
        # Repeated names (ImageNet-1k has two "crane"s) keep their last index, as in transformers.
        hf_config["label2id"] = {name: i for i, name in enumerate(names)}
    return hf_config, hf_state, _preprocessor(config, preprocessing)


def _vitkit_to_vit(
    config: ViTConfig, state: dict[str, torch.Tensor]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of the transformers ViT computing what a vitkit model of
    `config` computes."""
    classifier = config.num_classes > 0
    hf_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        tensors = to_foreign(HF_KEYS, key, value)
        if tensors is None:  # hf_refusal has turned away every model with such a parameter
            raise CheckpointError(f"{key}: transformers' ViT has no place for this parameter")
        for name, tensor in tensors.items():
            # ViTForImageClassification holds a ViTModel as `vit`, beside its classifier.
            inside = classifier and not name.startswith("classifier.")
            hf_state[f"vit.{name}" if inside else name] = tensor
    hf_config = {
        "architectures": ["ViTForImageClassification" if classifier else "ViTModel"],
        "model_type": "vit",
        **sizes_entries(config),
        "intermediate_size": config.mlp_dim,
        # ACT2FN: "gelu" is the exact (erf) GELU, "gelu_pytorch_tanh" nn.GELU(approximate="tanh").
        "hidden_act": "gelu" if config.gelu == "exact" else "gelu_pytorch_tanh",
        "qkv_bias": config.qkv_bias,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "encoder_stride": config.patch_size,
    }
    if not classifier and config.representation_size:
        hf_config["pooler_output_size"] = config.representation_size
        hf_config["pooler_act"] = "tanh"
    return hf_config, hf_state


# The ViT itself, what a directory is read as and a model written as when no family claims it.
VIT = HFFamily(
    model_types=("vit",),
    writes=lambda config: True,
    read=_vit_to_vitkit,
    refusal=_vit_refusal,
    write=_vitkit_to_vit,
)
# The families beside the ViT, in the order they are asked whether they write a model: DINOv3
# (rotary positions), SigLIP (attention pooling), CLIP (a pre-norm), DINOv2 (LayerScale).
FAMILIES: tuple[HFFamily, ...] = (DINOV3, SIGLIP, CLIP, DINOV2)


def writing_family(config: ViTConfig) -> HFFamily:
    """The family a vitkit model of `config` is written as: the first of `FAMILIES` that claims
    it, else the ViT."""
    return next((family for family in FAMILIES if family.writes(config)), VIT)


def _preprocessor(config: ViTConfig, preprocessing: Preprocessing | None) -> dict:
    """preprocessor_config.json for the model's preprocessing record (Google's [-1, 1] at the
    model's size by default): the whole image resized, as vitkit feeds its models."""
    preprocessing = preprocessing or Preprocessing.google(config.img_size, channels=config.in_chans)
    resample = {name: number for number, name in _RESAMPLE.items()}[preprocessing.interpolation]
    size_height, size_width = preprocessing.resolution
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": size_height, "width": size_width},
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(preprocessing.mean),
        "image_std": list(preprocessing.std),
    }


def write_hf(model: torch.nn.Module, directory: Path) -> Path:
    """Write `model` (a vitkit VisionTransformer) as a transformers directory that
    `ViTForImageClassification.from_pretrained` (or `ViTModel`'s) loads: config.json,
    model.safetensors and preprocessor_config.json, each replaced atomically, the weights first.
    Nothing is written when transformers cannot express the model."""
    from safetensors.torch import save as safetensors_bytes

    directory = Path(directory)
    names = model_class_names(model)
    hf_config, hf_state, preprocessor = vitkit_to_hf(
        model.config, model.state_dict(), names, model.preprocessing
    )
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory")
    tensors = {key: value.detach().cpu().contiguous() for key, value in hf_state.items()}
    payload = safetensors_bytes(tensors, metadata={"format": "pt"})
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda file: file.write(payload))
    atomic_write_json(directory / "preprocessor_config.json", preprocessor)
    atomic_write_json(directory / "config.json", hf_config)
    return directory
