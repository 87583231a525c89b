"""`ViTConfig` and the registry of named architectures.

The names are the paper's: "ViT-B/16" is the Base model (Table 1 of Dosovitskiy et al. 2021) with
16x16 patches. A config describes an architecture and its numerics, never weights: named pretrained
weights live in `vitkit.weights`, apart from architectures (timm's `arch.tag` convention), and
how images become inputs for a set of weights (resolution, mean, std) is their `Preprocessing`
record (models/preprocessing.py), which the model carries beside its config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from vitkit.errors import ConfigError
from vitkit.models.checks import (
    FieldProblem,
    boolean,
    check_each,
    choice,
    image_size,
    integer,
    optional_integer,
    optional_real,
    rate,
    real,
    shown,
)

Classifier = Literal["token", "gap", "map"]
Gelu = Literal["exact", "tanh", "quick"]
PosEmbedInterpolation = Literal["bilinear", "bicubic", "bicubic_no_antialias"]
PosEmbedType = Literal["learned_1d", "none", "learned_2d", "relative", "sincos_2d", "rope_2d"]
ResNetNumerics = Literal["google", "timm"]

# ResNet stage layouts of the hybrids (units per stage) with a name. Google's code and timm take
# any tuple, so a layout read from a file is accepted when it is sane (up to MAX_RESNET_STAGES
# stages of 1 to MAX_RESNET_UNITS units): the file is the authority. A layout typed over a named
# preset (`get_config("R50+ViT-B/16", resnet_layers=...)`) must be one of these, so that a typo
# is an error rather than a new, untrained architecture.
MAX_RESNET_STAGES, MAX_RESNET_UNITS = 8, 64
RESNET_LAYOUTS: dict[tuple[int, ...], str] = {
    (): "R (root only: 7x7 conv + max-pool, stride 4)",
    (2, 2, 2, 2): "R26",
    (3, 4, 9): "R50 with 3 stages (the paper's hybrids, stride 16)",
    (3, 4, 6, 3): "R50",
    (3, 4, 23, 3): "R101",
    (3, 8, 36, 3): "R152",
}


def as_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) from an int or a pair, so that configs always hold tuples."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def resnet_stride(resnet_layers: tuple[int, ...] | None) -> int:
    """Pixels per position of a ResNet stem's feature map (1 without a ResNet): the root's 4,
    doubled by every stage after the first."""
    if resnet_layers is None:
        return 1
    return 4 * 2 ** max(len(resnet_layers) - 1, 0)


def resnet_channels(resnet_layers: tuple[int, ...], resnet_width: int) -> int:
    """Channels of a ResNet stem's output: the root's, or 4x the last stage's width."""
    if not resnet_layers:
        return resnet_width
    return 4 * resnet_width * 2 ** (len(resnet_layers) - 1)


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Everything that defines a Vision Transformer's architecture and numerics.

    Variants are made with `dataclasses.replace(config, field=value)`; the model never reads
    anything but this object.
    """

    # Input. The position embeddings are learned for one grid (img_size / patch_size); other
    # resolutions are reached by resizing them (`vitkit.models.pos_embed.resize_pos_embed`).
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3

    # Transformer (Table 1 of the paper: width D, depth, heads, MLP width).
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    qkv_bias: bool = True
    # With qkv_bias, whether the keys have one too. DINOv3 has none: its rotary embedding turns a
    # key bias with each key's position, so one would change its outputs.
    key_bias: bool = True
    # LayerScale (Touvron et al. 2021, CaiT; DeiT III, DINOv2, timm's init_values): each block
    # scales its two residual branches by learned per-channel factors, which start at this value.
    # None: no LayerScale (the paper). Files hold the learned factors, not their start: readers
    # set the family's usual value, which matters only for training from scratch.
    layer_scale_init: float | None = None
    # A LayerNorm over the tokens before the first block (CLIP's image tower, timm's pre_norm),
    # which CLIP builds with no bias in the patch embedding (patch_bias=False).
    pre_norm: bool = False
    patch_bias: bool = True

    # Classification. "token" reads the prepended [class] token, "gap" averages the patch tokens
    # after the final LayerNorm (Google's code), "map" pools them by a learned query's attention
    # (SigLIP, models/attention_pool.py). num_classes=0 gives features, no head.
    num_classes: int = 1000
    classifier: Classifier = "token"
    class_token: bool = True
    # Register tokens (Darcet et al. 2024, "Vision Transformers Need Registers"): learned tokens
    # after the [class] token that give attention a scratch space instead of low-information
    # patches; never pooled. timm's reg_tokens (cls, registers, patches, in that order).
    reg_tokens: int = 0
    # Position embeddings for the patches only, added before the prefix tokens are prepended
    # (DeiT III, big_vision, timm's registers models): pos_embed has h*w rows, not prefix + h*w.
    no_embed_class: bool = False
    # LayerNorm after average pooling instead of the final one over every token (MAE and BEiT
    # fine-tuning; timm's fc_norm=True with global_pool="avg"): the two differ for "gap" only.
    fc_norm: bool = False
    # Pre-training head of the paper: Linear(width, representation_size) + tanh before the head.
    representation_size: int | None = None

    # Regularisation (all off by default, as for fine-tuning in the paper).
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth: the last block's rate, growing linearly from 0

    # Numerics. Google's JAX code uses tanh-GELU and eps 1e-6; timm uses exact GELU and eps 1e-6;
    # Hugging Face uses exact GELU and eps 1e-12; OpenAI's CLIP x * sigmoid(1.702 x) ("quick")
    # and eps 1e-5. Loaders set these to the source's values.
    gelu: Gelu = "exact"
    layer_norm_eps: float = 1e-6

    # Accept inputs of any size that is a multiple of patch_size, resizing the position
    # embeddings on every forward pass instead of raising an error.
    dynamic_img_size: bool = False
    # Accept another patch size on each forward pass (`model(images, patch_size=8)`, FlexiViT):
    # the kernel is resampled for it (models/patch_resample.py) and the position embeddings are
    # resized to the grid it gives.
    dynamic_patch_size: bool = False
    pos_embed_interpolation: PosEmbedInterpolation = "bilinear"
    # Where the position information comes from (Appendix D.4 and Table 8 of the paper, which
    # finds any of them far ahead of "none" and the others alike): "learned_1d", one learned
    # embedding per token (the paper's default, timm's and Google's pos_embed); "none";
    # "learned_2d", learned X- and Y-embeddings of width/2 each, concatenated per patch;
    # "relative", a learned bias per head and 2-D offset between patches added to every block's
    # attention logits (BEiT's layout); "sincos_2d", big_vision's fixed 2-D sin-cos embedding;
    # "rope_2d", DINOv3's rotary embedding of the queries and keys.
    # All but "learned_1d" give the patches only, never the prefix tokens
    # (models/pos_embed.py has the formulas and how each is resized).
    pos_embed_type: PosEmbedType = "learned_1d"

    # Hybrid (section 3.1 of the paper): a BiT ResNet stem (models/resnet.py) turns the image into
    # a feature map, which the patch embedding cuts into patch_size x patch_size patches (1 for
    # R50+ViT-B/16). resnet_layers: units per stage (see RESNET_LAYOUTS); None: a plain ViT.
    resnet_layers: tuple[int, ...] | None = None
    resnet_width: int = 64  # the root's channels; stage i has resnet_width * 2^i (x4 out)
    # "google": weight standardisation (w - mean) / (std + 1e-5), GroupNorm eps 1e-6 (vit_jax);
    # "timm": (w - mean) / sqrt(var + 1e-8), GroupNorm eps 1e-5 (timm's hybrid ViTs).
    resnet_numerics: ResNetNumerics = "google"

    def __post_init__(self) -> None:
        """Check and normalise every field (`checked_fields`): a config from code, a JSON file
        or a checkpoint's shapes is valid, or a ConfigError names each bad field."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        for name, value in checked_fields(fields).items():
            object.__setattr__(self, name, value)

    def describe(self) -> str:
        """The architecture in one phrase, for logs and captions: width, depth, heads, patch,
        resolution, pooling and, for hybrids, the ResNet stages."""
        stem = f", ResNet stages {self.resnet_layers}" if self.is_hybrid else ""
        positions = ""
        if self.pos_embed_type != "learned_1d":
            positions = f", position information {self.pos_embed_type}"
        return (
            f"width {self.width}, depth {self.depth}, {self.num_heads} heads, patch "
            f"{self.patch_size}, {self.img_size[0]}x{self.img_size[1]} px, {self.classifier} "
            f"pooling{stem}{positions}"
        )

    @property
    def is_hybrid(self) -> bool:
        return self.resnet_layers is not None

    @property
    def resnet_stride(self) -> int:
        """Pixels per position of the ResNet's feature map (1 without a ResNet)."""
        return resnet_stride(self.resnet_layers)

    @property
    def embed_in_chans(self) -> int:
        """Channels the patch embedding reads: the image's, or the ResNet's output."""
        if self.resnet_layers is None:
            return self.in_chans
        return resnet_channels(self.resnet_layers, self.resnet_width)

    @property
    def total_stride(self) -> int:
        """Pixels per token along each side: the patch size times the ResNet's stride."""
        return self.patch_size * self.resnet_stride

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along (height, width) at the build resolution."""
        return (self.img_size[0] // self.total_stride, self.img_size[1] // self.total_stride)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the [class] token (if any), then the registers."""
        return int(self.class_token) + self.reg_tokens

    @property
    def num_tokens(self) -> int:
        """Sequence length the encoder sees at the build resolution."""
        grid_h, grid_w = self.grid_size
        return grid_h * grid_w + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


# ---------------------------------------------------------------------------------------------
# Validation. Configs come from files written by strangers (config.json, a checkpoint's shapes) as
# much as from code, so every field is checked for type, range and choice before anything reads
# it, and a bad one is a `ConfigError` naming it, never a ZeroDivisionError or a torch traceback
# (the checks of single values are models/checks.py's).


def _resnet_layers(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise FieldProblem(f"must be a list of units per stage, got {shown(value)}")
    if len(value) > MAX_RESNET_STAGES:
        raise FieldProblem(
            f"has {len(value)} ResNet stages; at most {MAX_RESNET_STAGES} are supported"
        )
    try:
        return tuple(integer(units, maximum=MAX_RESNET_UNITS) for units in value)
    except FieldProblem as problem:
        raise FieldProblem(f"(units per stage) {problem} (in {shown(value)})") from None


def known_resnet_layout(layers: tuple[int, ...]) -> tuple[int, ...]:
    """`layers` if it is a named ResNet (RESNET_LAYOUTS), else a ConfigError listing those: for
    layouts a person types, where a typo must not build a new, untrained architecture."""
    if layers not in RESNET_LAYOUTS:
        known = ", ".join(f"{layout} ({name})" for layout, name in RESNET_LAYOUTS.items())
        raise ConfigError(f"unknown ResNet stage layout {layers}; known layouts: {known}")
    return layers


# One check per ViTConfig field (a test holds the two to the same names).
_CHECKS: dict[str, Callable[[object], object]] = {
    "img_size": image_size,
    "patch_size": integer,
    "in_chans": integer,
    "width": integer,
    "depth": functools.partial(integer, minimum=0),  # 0: no blocks (a ResNet with a pooled head)
    "num_heads": integer,
    "mlp_dim": integer,
    "qkv_bias": boolean,
    "key_bias": boolean,
    "layer_scale_init": functools.partial(optional_real, low=0.0, high=math.inf),
    "pre_norm": boolean,
    "patch_bias": boolean,
    "num_classes": functools.partial(integer, minimum=0),
    "classifier": functools.partial(choice, choices=get_args(Classifier)),
    "class_token": boolean,
    "reg_tokens": functools.partial(integer, minimum=0),
    "no_embed_class": boolean,
    "fc_norm": boolean,
    "representation_size": optional_integer,
    "dropout": rate,
    "attention_dropout": rate,
    "drop_path": rate,
    "gelu": functools.partial(choice, choices=get_args(Gelu)),
    "layer_norm_eps": functools.partial(real, low=0.0, high=math.inf, low_included=False),
    "dynamic_img_size": boolean,
    "dynamic_patch_size": boolean,
    "pos_embed_interpolation": functools.partial(choice, choices=get_args(PosEmbedInterpolation)),
    "pos_embed_type": functools.partial(choice, choices=get_args(PosEmbedType)),
    "resnet_layers": _resnet_layers,
    "resnet_width": integer,
    "resnet_numerics": functools.partial(choice, choices=get_args(ResNetNumerics)),
}


def checked_fields(
    values: Mapping[str, object], *, names: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Every ViTConfig field of `values`, checked and normalised (img_size a pair, sizes int,
    resnet_layers a tuple). Raises one ConfigError listing every problem, each naming its
    field as `names` does (ViTConfig field -> the name in the file the values came from), or by
    its own name."""
    names = names or {}
    checked, problems = check_each(_CHECKS, values, names)
    problems += _combination_problems(checked, names)
    if problems:
        raise ConfigError("Invalid ViTConfig: " + "; ".join(problems))
    return checked


def config_from_fields(values: Mapping[str, Any], *, names: Mapping[str, str]) -> ViTConfig:
    """A ViTConfig of `values` (the other fields at their defaults) read from a file whose fields
    are named otherwise (`names`: ViTConfig field -> the file's name), so that an error names the
    field as the file has it."""
    defaults = {field.name: field.default for field in dataclasses.fields(ViTConfig)}
    checked_fields({**defaults, **values}, names=names)
    return ViTConfig(**values)


def _combination_problems(checked: dict[str, Any], names: Mapping[str, str]) -> list[str]:
    """Problems of fields that are valid alone but not together; a pair is checked only when
    both of its fields are valid."""

    def name(field: str) -> str:
        return names.get(field, field)

    def valid(*fields: str) -> bool:
        return all(field in checked for field in fields)

    problems = []
    if valid("width", "num_heads") and checked["width"] % checked["num_heads"]:
        problems.append(
            f"{name('width')} {checked['width']} is not divisible by "
            f"{name('num_heads')} {checked['num_heads']}"
        )
    layers = checked.get("resnet_layers")
    if layers is not None and valid("resnet_width") and checked["resnet_width"] % 32:
        problems.append(
            f"{name('resnet_width')} {checked['resnet_width']} is not a multiple of GroupNorm's "
            "32 groups"
        )
    if valid("img_size", "patch_size", "resnet_layers"):
        patch = checked["patch_size"]
        stride = patch * resnet_stride(layers)
        height, width = checked["img_size"]
        if height % stride or width % stride:
            what = f"patch size {patch}"
            if layers is not None:
                what = f"total stride {stride} (ResNet {stride // patch} x patch size {patch})"
            problems.append(f"{name('img_size')} {height}x{width} is not a multiple of the {what}")
    if valid("classifier", "class_token") and (
        (checked["classifier"], checked["class_token"]) == ("token", False)
    ):
        problems.append(f"{name('classifier')}='token' needs {name('class_token')}=True")
    if valid("fc_norm", "classifier") and checked["fc_norm"] and checked["classifier"] != "gap":
        # A LayerNorm after picking one token is the final LayerNorm: fc_norm means "gap".
        problems.append(f"{name('fc_norm')}=True needs {name('classifier')}='gap'")
    problems += _position_problems(checked, name)
    return problems


def _position_problems(checked: dict[str, Any], name: Callable[[str], str]) -> list[str]:
    """Problems of pos_embed_type with the width (learned_2d splits it into halves; big_vision's
    sin-cos into quarters, dividing by width/4 - 1) and with no_embed_class (which says where
    the rows of a 1-D table go; the other types have no such table)."""
    kind, width = checked.get("pos_embed_type"), checked.get("width")
    field = f"{name('pos_embed_type')}={kind!r}"
    problems = []
    if kind == "learned_2d" and width is not None and width % 2:
        problems.append(f"{field} needs an even {name('width')}, got {width}")
    heads = checked.get("num_heads")
    if kind == "rope_2d" and width is not None and heads and (width // heads) % 4:
        problems.append(f"{field} needs a head width ({name('width')} / {name('num_heads')}) "
                        f"that is a multiple of 4, got {width // heads}")  # fmt: skip
    if kind == "sincos_2d" and width is not None and (width % 4 or width < 8):
        problems.append(f"{field} needs a {name('width')} that is a multiple of 4, at least 8, "
                        f"got {width}")  # fmt: skip
    if kind not in (None, "learned_1d") and checked.get("no_embed_class"):
        problems.append(
            f"{name('no_embed_class')}=True needs {name('pos_embed_type')}='learned_1d' (the "
            f"other types give the patches only), got {field}"
        )
    return problems


@dataclass(frozen=True)
class _Variant:
    width: int
    depth: int
    num_heads: int
    mlp_dim: int


# Table 1 of the paper, plus Ti and S (DeiT, AugReg "How to train your ViT", Steiner et al. 2021).
VARIANTS: dict[str, _Variant] = {
    "Ti": _Variant(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": _Variant(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": _Variant(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": _Variant(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "H": _Variant(width=1280, depth=32, num_heads=16, mlp_dim=5120),
}
PATCH_SIZES = (8, 14, 16, 32)


def _paper_presets() -> dict[str, ViTConfig]:
    presets = {}
    for variant_name, variant in VARIANTS.items():
        for patch in PATCH_SIZES:
            presets[f"ViT-{variant_name}/{patch}"] = ViTConfig(
                img_size=224, patch_size=patch, **dataclasses.asdict(variant)
            )
    return presets


PRESETS: dict[str, ViTConfig] = {
    **_paper_presets(),
    # The demo's model (vitkit demo): small enough to pre-train on CIFAR-10 at 16 px and
    # fine-tune at 32 px within minutes on a laptop CPU; 4x4 patches, so 16 or 64 tokens.
    "ViT-CIFAR/4": ViTConfig(
        img_size=32,
        patch_size=4,
        width=128,
        depth=6,
        num_heads=4,
        mlp_dim=256,
        num_classes=10,
        classifier="gap",
        class_token=False,
    ),  # fmt: skip
    # The demo's model on a GPU (vitkit demo --hardware gpu): the shape of ViT-Lite-7/4
    # (Hassani et al. 2021), which reaches ~91% on CIFAR-10 from scratch with a long schedule.
    "ViT-CIFAR-L/4": ViTConfig(
        img_size=32,
        patch_size=4,
        width=256,
        depth=7,
        num_heads=4,
        mlp_dim=512,
        num_classes=10,
        classifier="gap",
        class_token=False,
    ),  # fmt: skip
    # A model small enough for unit tests: 2 blocks of width 64 on 32x32 images.
    "ViT-Test/8": ViTConfig(
        img_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128, num_classes=10
    ),
}


def _hybrid(variant: str, patch_size: int, layers: tuple[int, ...]) -> ViTConfig:
    return ViTConfig(
        img_size=224,
        patch_size=patch_size,
        resnet_layers=layers,
        **dataclasses.asdict(VARIANTS[variant]),
    )


# ResNet + ViT hybrids (section 3.1 and Table 6 of the paper; vit_jax's configs/models.py). The
# name's "/16" or "/32" is the total stride: patch size 1 on the ResNet's feature map, whose
# stride is 16 with three stages (the paper's option (ii): stage 4's units moved into stage 3)
# and 32 with four. R+ViT-Ti/16 (AugReg) has only the root (stride 4) and 8x8 patches.
HYBRID_PRESETS: dict[str, ViTConfig] = {
    "R50+ViT-B/16": _hybrid("B", 1, (3, 4, 9)),
    "R50+ViT-B/32": _hybrid("B", 1, (3, 4, 6, 3)),
    "R50+ViT-L/16": _hybrid("L", 1, (3, 4, 9)),
    "R50+ViT-L/32": _hybrid("L", 1, (3, 4, 6, 3)),
    "R26+ViT-S/32": _hybrid("S", 1, (2, 2, 2, 2)),
    "R26+ViT-B/32": _hybrid("B", 1, (2, 2, 2, 2)),
    "R+ViT-Ti/16": _hybrid("Ti", 8, ()),
    # The demo's model (vitkit demo): ViT-CIFAR/4's transformer fed by the ResNet root only
    # (7x7 stride-2 conv, GroupNorm, ReLU, 3x3 stride-2 max-pool: stride 4, 64 channels) and a 1x1
    # patch embedding, so 16 or 64 tokens at 16 or 32 px as with 4x4 patches. The paper finds
    # hybrids ahead of ViT at small budgets; here +5.8 points after 800 steps at about the same
    # FLOPs (benchmarks/RESULTS.md).
    "R+ViT-CIFAR/4": dataclasses.replace(PRESETS["ViT-CIFAR/4"], patch_size=1, resnet_layers=()),
    # A BiT-style ResNet for CIFAR with no transformer at all (depth 0): the hybrids' ResNet-26
    # stem (stride 32: one position at 32 px), a 1x1 projection to width 256, the final
    # LayerNorm, average pooling and the head. At 32 px it costs 97 MFLOPs per image against
    # ViT-CIFAR/4's 114, so `vitkit experiment data-scale` compares the two at about equal compute.
    "BiT-R26-CIFAR": dataclasses.replace(
        PRESETS["ViT-CIFAR/4"], patch_size=1, resnet_layers=(2, 2, 2, 2), width=256, depth=0
    ),
}


def list_models() -> list[str]:
    """Names accepted by `vitkit.create_model`, in registry order (plain ViTs, then hybrids)."""
    return [*PRESETS, *HYBRID_PRESETS]


def get_config(name: str, **overrides: object) -> ViTConfig:
    """The preset `name` with `overrides` applied (any ViTConfig field, e.g. num_classes=10).

    Names are matched case-insensitively, and "ViT-B_16" (Google's file names) works too.
    """
    presets = {**PRESETS, **HYBRID_PRESETS}
    wanted = name.replace("_", "/").lower()
    matches = [key for key in presets if key.lower() == wanted]
    if not matches:
        raise KeyError(f"Unknown model {name!r}. Known models: {', '.join(presets)}")
    unknown = set(overrides) - {field.name for field in dataclasses.fields(ViTConfig)}
    if unknown:
        raise TypeError(f"Unknown ViTConfig field(s): {', '.join(sorted(unknown))}")
    if isinstance(layers := overrides.get("resnet_layers"), (list, tuple)):
        known_resnet_layout(tuple(layers))  # a typed layout: a named ResNet's
    return dataclasses.replace(presets[matches[0]], **overrides)
