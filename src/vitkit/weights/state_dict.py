"""Loading a converted state dict into a model, with every key and shape checked first.

Converters produce a state dict in vitkit's naming; this is the single place that compares it with
the model and fails loudly (nanoGPT's habit), before `load_state_dict(strict=True)`. A partial
load (strict=False: a backbone into a model with another head, a pruned file) loads what fits
and returns the same full list of what did not, so nothing is skipped silently.

Every format passes through here, so this is also where the architecture a config claims is held
to the tensors that record it before any module is built (a config.json may claim a billion
blocks over a file of twelve), and where weights that are not finite are reported.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitkit.errors import CheckpointError
from vitkit.models.config import ViTConfig
from vitkit.models.positions import position_scheme
from vitkit.models.vit import VisionTransformer
from vitkit.weights.shapes import block_indices


class PartialLoadWarning(UserWarning):
    """`load_model(..., strict=False)` left parameters at their initial values; the message lists
    the missing, unexpected and misshapen keys."""


class UnrecordedSettingWarning(UserWarning):
    """A checkpoint does not record a setting that changes its outputs, and it was read with
    the source library's default; the message names the setting and how to state it."""


class UnrecordedActivationWarning(UnrecordedSettingWarning):
    """A timm CLIP tower's state dict does not record its activation (OpenAI's weights take
    quick GELU, OpenCLIP's exact GELU, with the same keys); it was read with exact GELU.
    `load_model(..., gelu="quick")` (`--gelu quick`) states the other, and silences this."""


class UnrecordedPoolingWarning(UnrecordedSettingWarning):
    """A checkpoint does not record how its model pools (a timm state dict with a [class] token
    and no fc_norm: global_pool "token" and "avg" have the same keys); it was read with timm's
    default, token pooling. `load_model(..., classifier="gap")` (`--classifier gap`) states the
    other, and silences this."""


class NonFiniteWeightsWarning(UserWarning):
    """A checkpoint holds NaN or inf weights; the message names the tensors. They are loaded all
    the same (a diverged run's checkpoint is worth inspecting), but outputs will not be finite."""


Shape = tuple[int, ...]


@dataclass(frozen=True)
class KeyReport:
    """How a state dict differs from a model's: keys the model has and the file lacks, keys the
    model lacks, and keys both have with different shapes, as (key, model's shape, file's shape).
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, Shape, Shape], ...] = ()

    def __bool__(self) -> bool:
        """True when there is anything to report."""
        return bool(self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        """Every difference, in full: a partial list hides the key that explains the rest."""
        parts = []
        if self.missing:
            parts.append(f"{_count(self.missing, 'missing key')}: {', '.join(self.missing)}")
        if self.unexpected:
            keys = ", ".join(self.unexpected)
            parts.append(f"{_count(self.unexpected, 'unexpected key')}: {keys}")
        if self.mismatched:
            shapes = "; ".join(
                f"{key}: expected shape {expected}, found {found}"
                for key, expected, found in self.mismatched
            )
            parts.append(f"{_count(self.mismatched, 'shape mismatch')}: {shapes}")
        return "; ".join(parts)


def _count(items: tuple, noun: str) -> str:
    plural = "" if len(items) == 1 else ("es" if noun.endswith("ch") else "s")
    return f"{len(items)} {noun}{plural}"


# The dtypes weights may have; each casts exactly (or by rounding) into the model's parameters.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_dtypes(dtypes: Mapping[str, torch.dtype | np.dtype], *, source: str) -> None:
    """Refuse weights that are not fp16, bf16, fp32 or fp64 (torch) or their numpy kin: loading
    would cast int, bool, complex or string values into the model's float parameters without a
    word, so such a tensor where a weight belongs means a broken or foreign file."""
    for key, dtype in dtypes.items():
        if isinstance(dtype, torch.dtype):
            floating = dtype in FLOAT_DTYPES
        else:
            floating = dtype.kind == "f" and dtype.itemsize in (2, 4, 8)
        if not floating:
            raise CheckpointError(
                f"{source}: {key} holds {dtype} values; weights must be float16, bfloat16, "
                "float32 or float64"
            )


def warn_non_finite(state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Warn (`NonFiniteWeightsWarning`, naming every tensor) when weights hold NaN or inf."""
    keys = [key for key, tensor in state.items() if not torch.isfinite(tensor).all()]
    if keys:
        tensors = _count(tuple(keys), "tensor")
        message = f"{source}: NaN or inf in {tensors}: {', '.join(keys)}"
        warnings.warn(NonFiniteWeightsWarning(message), stacklevel=2)


def check_architecture(
    config: ViTConfig,
    state: Mapping[str, torch.Tensor],
    *,
    config_source: str,
    weights_source: str,
    names: Mapping[str, str] | None = None,
) -> None:
    """Hold the fields of `config` that size a model (depth, width, patch, channels, MLP width,
    positions, ResNet width, pre-logits width) to the tensors of `state` that record them, before
    anything is built: a mismatch is a CheckpointError naming the field as the config file has it
    (`names`: ViTConfig field -> that name), in microseconds. Afterwards the model is no larger
    than its file, save for its head (see `build_and_load`)."""

    def field(name: str) -> str:
        return (names or {}).get(name, name)

    blocks = block_indices(state)
    numbered_from_0 = max(blocks, default=-1) == len(blocks) - 1
    if len(blocks) != config.depth or not numbered_from_0:
        holding = f"{len(blocks)} blocks"
        if not numbered_from_0:
            holding += f" numbered {', '.join(map(str, sorted(blocks)[:4]))}..., not from 0 on"
        raise CheckpointError(
            f"{config_source}: {field('depth')}={config.depth} but {weights_source} holds {holding}"
        )
    tables = position_scheme(config).table_shapes()  # the model's own, not its blocks'
    for key in ["patch_embed.proj.weight", *tables]:
        if key not in state:
            raise CheckpointError(
                f"{weights_source}: has no {key}, which records the model's width and input size"
            )
    for name, claim, key, dim in _claims(config):
        shape = tuple(state[key].shape) if key in state else None
        if shape is not None and (len(shape) <= dim or shape[dim] != claim):
            raise CheckpointError(
                f"{config_source}: {field(name)}={claim} but {weights_source} holds {key} of "
                f"shape {shape}"
            )
    for key, expected in tables.items():  # their sizes follow from the image and patch sizes
        if (found := tuple(state[key].shape)) != expected:
            height, width = config.img_size
            raise CheckpointError(
                f"{config_source}: {field('img_size')}={height}x{width} with "
                f"{field('patch_size')}={config.patch_size} needs {key} of shape {expected} but "
                f"{weights_source} holds {key} of shape {found}"
            )


def _claims(config: ViTConfig) -> list[tuple[str, int, str, int]]:
    """(field, its value, the key of a tensor that records it, the dimension that does)."""
    claims = [
        ("width", config.width, "patch_embed.proj.weight", 0),
        ("patch_size", config.patch_size, "patch_embed.proj.weight", 2),
        ("patch_size", config.patch_size, "patch_embed.proj.weight", 3),
        ("width", config.width, "pos_embed", 2),
        ("mlp_dim", config.mlp_dim, "blocks.0.mlp.fc1.weight", 0),
    ]
    if config.is_hybrid:  # the patch embedding reads the ResNet's channels, not the image's
        stem = "patch_embed.backbone.stem.conv.weight"
        claims += [("resnet_width", config.resnet_width, stem, 0),
                   ("in_chans", config.in_chans, stem, 1)]  # fmt: skip
    else:
        claims.append(("in_chans", config.in_chans, "patch_embed.proj.weight", 1))
    if config.representation_size:
        size = config.representation_size
        claims.append(("representation_size", size, "pre_logits.0.weight", 0))
    if config.reg_tokens:
        claims.append(("reg_tokens", config.reg_tokens, "reg_token", 1))
    return claims


class _ShapeProbe(VisionTransformer):
    """A VisionTransformer for its keys and shapes only, built on the meta device: its weights
    have no values to initialise (and initialising meta tensors imports torch's compiler, a
    second's work)."""

    def init_weights(self) -> None:
        """Nothing to initialise."""


def expected_shapes(config: ViTConfig) -> dict[str, Shape]:
    """Every key of a model of `config` with its shape, in the model's order, at no memory cost:
    a one-block model on the meta device gives the keys outside the blocks, and block 0's keys
    stand for every block's (all blocks are alike). The cost grows with the depth only, which
    `check_architecture` holds to the file's own blocks."""
    with torch.device("meta"):
        probe = _ShapeProbe(dataclasses.replace(config, depth=1))
    items = [(key, tuple(tensor.shape)) for key, tensor in probe.state_dict().items()]
    block = [(key.removeprefix("blocks.0."), shape) for key, shape in items
             if key.startswith("blocks.0.")]  # fmt: skip
    shapes: dict[str, Shape] = {}
    for key, shape in items:
        if key == f"blocks.0.{block[0][0]}":  # where the blocks begin
            shapes.update((f"blocks.{i}.{name}", block_shape)
                          for i in range(config.depth) for name, block_shape in block)  # fmt: skip
        elif not key.startswith("blocks.0."):
            shapes[key] = shape
    return shapes


def compare_shapes(
    expected: Mapping[str, Shape], state_dict: Mapping[str, torch.Tensor]
) -> KeyReport:
    """Every difference between `state_dict` and a model's keys and shapes (`expected`)."""
    return KeyReport(
        missing=tuple(key for key in expected if key not in state_dict),
        unexpected=tuple(key for key in state_dict if key not in expected),
        mismatched=tuple(
            (key, expected[key], tuple(tensor.shape))
            for key, tensor in state_dict.items()
            if key in expected and tuple(tensor.shape) != expected[key]
        ),
    )


def compare_keys(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> KeyReport:
    """Every difference between `state_dict` and `model.state_dict()` in keys and shapes."""
    return compare_shapes(_shapes(model), state_dict)


def _shapes(model: nn.Module) -> dict[str, Shape]:
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def load_checked(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, strict: bool = True
) -> KeyReport:
    """Load `state_dict` into `model`, naming each missing, unexpected or misshapen key.

    strict=True: any difference raises a `CheckpointError` that lists them all. strict=False:
    the keys that fit are loaded, the others left as they are, and the differences returned.
    """
    report = _compared(_shapes(model), state_dict, source=source, strict=strict)
    _load(model, state_dict, report, source=source)
    return report


def build_and_load(
    config: ViTConfig, state_dict: dict[str, torch.Tensor], *, source: str, strict: bool = True
) -> tuple[VisionTransformer, KeyReport]:
    """A model of `config` holding `state_dict`, compared key by key before the model is built,
    so that a file that does not fit costs no memory (see `load_checked` for `strict`). A partial
    load must load more parameters than it leaves at their initial values: otherwise a config
    claiming a head of millions of classes over a file without one would allocate it."""
    expected = expected_shapes(config)
    report = _compared(expected, state_dict, source=source, strict=strict)
    fresh = sum(math.prod(expected[key]) for key in report.missing) + sum(
        math.prod(shape) for _, shape, _ in report.mismatched
    )
    loaded = sum(tensor.numel() for tensor in _fitting(state_dict, report).values())
    if fresh > loaded:
        raise CheckpointError(
            f"{source}: a partial load would leave {fresh} parameters at their initial values "
            f"and load only {loaded}; refused: {report}"
        )
    model = VisionTransformer(config)
    _load(model, state_dict, report, source=source)
    return model, report


def _compared(
    expected: Mapping[str, Shape],
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    strict: bool,
) -> KeyReport:
    """The differences of `state_dict` from `expected`, raised when strict; the tensors that
    will load must be weights (an unexpected int buffer is only reported as unexpected)."""
    report = compare_shapes(expected, state_dict)
    if report and strict:
        raise CheckpointError(f"{source} does not fit the model: {report}")
    fitting = _fitting(state_dict, report)
    check_float_dtypes({key: tensor.dtype for key, tensor in fitting.items()}, source=source)
    return report


def _fitting(state_dict: Mapping[str, torch.Tensor], report: KeyReport) -> dict[str, torch.Tensor]:
    """The tensors of `state_dict` that load: those the model has, in the model's shape."""
    skipped = set(report.unexpected) | {key for key, _, _ in report.mismatched}
    return {key: tensor for key, tensor in state_dict.items() if key not in skipped}


def _load(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], report: KeyReport, *, source: str
) -> None:
    fitting = _fitting(state_dict, report)
    warn_non_finite(fitting, source=source)
    model.load_state_dict(fitting, strict=not report)
