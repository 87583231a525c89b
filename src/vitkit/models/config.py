"""`ViTConfig` and the registry of named architectures.

The names are the paper's: "ViT-B/16" is the Base model (Table 1 of Dosovitskiy et al. 2021) with
16x16 patches. A config describes an architecture and its numerics, never weights: named pretrained
weights live in `vitkit.weights`, apart from architectures (timm's `arch.tag` convention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from vitkit.errors import ConfigError

Classifier = Literal["token", "gap"]
Gelu = Literal["exact", "tanh"]
PosEmbedInterpolation = Literal["bilinear", "bicubic"]
ResNetNumerics = Literal["google", "timm"]

# ResNet stage layouts of the hybrids (units per stage). Google's code takes any tuple; vitkit
# accepts the ResNets of the paper and of the released checkpoints, so that a typo in a layout
# is an error rather than a new, untrained architecture.
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
    # Per-channel normalisation of [0, 1] pixels that the weights expect, recorded here so that
    # preprocessing follows the weights: Google's checkpoints take [-1, 1] (mean = std = 0.5),
    # many timm/torchvision weights ImageNet's statistics.
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    # Transformer (Table 1 of the paper: width D, depth, heads, MLP width).
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    qkv_bias: bool = True

    # Classification. "token" reads the prepended [class] token, "gap" averages the patch tokens
    # after the final LayerNorm (Google's code). num_classes=0 gives features, no head.
    num_classes: int = 1000
    classifier: Classifier = "token"
    class_token: bool = True
    # Pre-training head of the paper: Linear(width, representation_size) + tanh before the head.
    representation_size: int | None = None

    # Regularisation (all off by default, as for fine-tuning in the paper).
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth: the last block's rate, growing linearly from 0

    # Numerics. Google's JAX code uses tanh-GELU and eps 1e-6; timm uses exact GELU and eps 1e-6;
    # Hugging Face uses exact GELU and eps 1e-12. Loaders set these to the source's values.
    gelu: Gelu = "exact"
    layer_norm_eps: float = 1e-6

    # Accept inputs of any size that is a multiple of patch_size, resizing the position
    # embeddings on every forward pass instead of raising an error.
    dynamic_img_size: bool = False
    pos_embed_interpolation: PosEmbedInterpolation = "bilinear"

    # Hybrid (section 3.1 of the paper): a BiT ResNet stem (models/resnet.py) turns the image into
    # a feature map, which the patch embedding cuts into patch_size x patch_size patches (1 for
    # R50+ViT-B/16). resnet_layers: units per stage (see RESNET_LAYOUTS); None: a plain ViT.
    resnet_layers: tuple[int, ...] | None = None
    resnet_width: int = 64  # the root's channels; stage i has resnet_width * 2^i (x4 out)
    # "google": weight standardisation (w - mean) / (std + 1e-5), GroupNorm eps 1e-6 (vit_jax);
    # "timm": (w - mean) / sqrt(var + 1e-8), GroupNorm eps 1e-5 (timm's hybrid ViTs).
    resnet_numerics: ResNetNumerics = "google"

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", as_pair(self.img_size))
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))
        if self.resnet_layers is not None:
            object.__setattr__(self, "resnet_layers", tuple(int(n) for n in self.resnet_layers))
        problems = []
        if self.resnet_layers is not None and self.resnet_layers not in RESNET_LAYOUTS:
            known = ", ".join(f"{layout} ({name})" for layout, name in RESNET_LAYOUTS.items())
            problems.append(
                f"unknown ResNet stage layout resnet_layers={self.resnet_layers}; known: {known}"
            )
        if self.resnet_layers is not None and self.resnet_width % 32:
            problems.append(
                f"resnet_width {self.resnet_width} is not a multiple of GroupNorm's 32 groups"
            )
        if self.resnet_numerics not in ("google", "timm"):
            problems.append(
                f"resnet_numerics must be 'google' or 'timm', got {self.resnet_numerics!r}"
            )
        if not len(self.mean) == len(self.std) == self.in_chans:
            problems.append(f"mean and std need one value per input channel ({self.in_chans})")
        if self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        stride = self.total_stride
        for axis, size in zip(("height", "width"), self.img_size):
            if size % stride and self.resnet_layers is None:
                problems.append(
                    f"image {axis} {size} is not a multiple of the patch size {self.patch_size}"
                )
            elif size % stride:
                problems.append(
                    f"image {axis} {size} is not a multiple of the total stride {stride} "
                    f"(ResNet stride {self.resnet_stride} x patch size {self.patch_size})"
                )
        if self.classifier == "token" and not self.class_token:
            problems.append("classifier='token' needs class_token=True")
        if self.classifier not in ("token", "gap"):
            problems.append(f"classifier must be 'token' or 'gap', got {self.classifier!r}")
        if self.gelu not in ("exact", "tanh"):
            problems.append(f"gelu must be 'exact' or 'tanh', got {self.gelu!r}")
        if self.pos_embed_interpolation not in ("bilinear", "bicubic"):
            problems.append(
                "pos_embed_interpolation must be 'bilinear' or 'bicubic', "
                f"got {self.pos_embed_interpolation!r}"
            )
        if problems:
            raise ConfigError("Invalid ViTConfig: " + "; ".join(problems))

    @property
    def is_hybrid(self) -> bool:
        return self.resnet_layers is not None

    @property
    def resnet_stride(self) -> int:
        """Pixels per position of the ResNet's feature map (1 without a ResNet)."""
        if self.resnet_layers is None:
            return 1
        return 4 * 2 ** max(len(self.resnet_layers) - 1, 0)

    @property
    def embed_in_chans(self) -> int:
        """Channels the patch embedding reads: the image's, or the ResNet's output."""
        if self.resnet_layers is None:
            return self.in_chans
        if not self.resnet_layers:
            return self.resnet_width
        return 4 * self.resnet_width * 2 ** (len(self.resnet_layers) - 1)

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
        return 1 if self.class_token else 0

    @property
    def num_tokens(self) -> int:
        """Sequence length the encoder sees at the build resolution."""
        grid_h, grid_w = self.grid_size
        return grid_h * grid_w + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


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
    # The main job's model (vitkit demo): small enough to pre-train on CIFAR-10 at 16 px and
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
    # The main job's model on a GPU (vitkit demo --hardware gpu): the shape of ViT-Lite-7/4
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
    # The main job's model (vitkit demo): ViT-CIFAR/4's transformer fed by the ResNet root only
    # (7x7 stride-2 conv, GroupNorm, ReLU, 3x3 stride-2 max-pool: stride 4, 64 channels) and a 1x1
    # patch embedding, so 16 or 64 tokens at 16 or 32 px as with 4x4 patches. The paper finds
    # hybrids ahead of ViT at small budgets; here +5.8 points after 800 steps at about the same
    # FLOPs (benchmarks/RESULTS.md).
    "R+ViT-CIFAR/4": dataclasses.replace(PRESETS["ViT-CIFAR/4"], patch_size=1, resnet_layers=()),
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
    return dataclasses.replace(presets[matches[0]], **overrides)
