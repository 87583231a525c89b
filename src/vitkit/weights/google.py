"""Google's official ViT checkpoints (.npz, as released by google-research/vision_transformer),
read and written (`write_npz`, in the original release's naming).

The files name parameters after the Flax modules that made them. Two block layouts exist: the
original release ("pre-linen": MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) and the
Linen one of later releases such as AugReg (MultiHeadDotProductAttention_0, LayerNorm_1,
MlpBlock_0). Both convert to the same vitkit state dict. The architecture is read from the
shapes, and the numerics are Google's: tanh-GELU, LayerNorm eps 1e-6, "gap" after the final norm.
Each parameter's two names, Google's shape and the change of layout between them are one row of
`GOOGLE_KEYS`, which the reader, the writer and the shape check all follow.

ResNet + ViT hybrids add vit_jax's `models_resnet` parameters at the top level: conv_root and
gn_root, then block{i}/unit{j}/conv1..3, gn1..3 and, in each stage's first unit, conv_proj and
gn_proj. Kernels are stored unstandardised (HWIO); the model standardises them on every forward
pass, in Google's numerics (resnet_numerics="google"). GroupNorm parameters are (C,) or, in some
files, (1, 1, 1, C).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from vitkit.errors import CheckpointError
from vitkit.io import atomic_write
from vitkit.models.config import (
    MAX_RESNET_STAGES,
    MAX_RESNET_UNITS,
    ViTConfig,
    resnet_channels,
    resnet_stride,
)
from vitkit.models.resnet import NUMERICS
from vitkit.weights.capabilities import ANY, PAPER_FIELDS, Holds, no_place, unheld_value
from vitkit.weights.key_maps import SAME, Entry, Row, Transform, fill, read_entries, write_entries
from vitkit.weights.npz import read_npz
from vitkit.weights.shapes import INDEX, Shaped, require_shape, square_side

# Some releases store the parameters under an optimizer or variables prefix.
_PREFIXES = ("opt/target/", "params/")
_BLOCK_LAYOUTS = {
    "pre-linen": {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_1",
                  "ln2": "LayerNorm_2", "mlp": "MlpBlock_3"},
    "linen": {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_0",
              "ln2": "LayerNorm_1", "mlp": "MlpBlock_0"},
}  # fmt: skip
_HYBRID_KEYS = ("conv_root/kernel", "gn_root/scale")
_UNIT_KEY = re.compile(rf"block{INDEX}/unit{INDEX}/")
_ENCODER_BLOCK = re.compile(rf"Transformer/encoderblock_{INDEX}/")
_GROUP_NORM_KEY = re.compile(r"(^|/)gn_?\w*/(scale|bias)$")


def _is_hybrid(params: Mapping[str, Shaped]) -> bool:
    return any(key in params for key in _HYBRID_KEYS) or any(map(_UNIT_KEY.match, params))


def _resnet_layers(params: Mapping[str, Shaped]) -> tuple[int, ...]:
    """Units per stage, from the block{i}/unit{j} keys (both numbered from 1): any layout, as
    Google's `models_resnet` takes any (not only the named ResNets of RESNET_LAYOUTS)."""
    if "conv_root/kernel" not in params:
        found = next(key for key in params if _UNIT_KEY.match(key) or key in _HYBRID_KEYS)
        raise CheckpointError(
            f"has ResNet keys ({found!r}) but no root convolution 'conv_root/kernel': this "
            "matches no ResNet + ViT hybrid"
        )
    units: dict[int, set[int]] = {}
    for key in params:
        if m := _UNIT_KEY.match(key):
            units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(units) != list(range(1, len(units) + 1)):
        stage = next(stage for stage in range(1, len(units) + 2) if stage not in units)
        raise CheckpointError(f"ResNet stage block{stage} is missing (stages are block1..blockN)")
    for stage, ids in units.items():
        if sorted(ids) != list(range(1, len(ids) + 1)):
            raise CheckpointError(
                f"ResNet stage block{stage} has units {sorted(ids)[:5]}, not unit1..unitN"
            )
    layers = tuple(len(units[stage]) for stage in sorted(units))
    # Google's code builds any layout, so the file's is taken as it is, if it is sane.
    if len(layers) > MAX_RESNET_STAGES or max(layers, default=1) > MAX_RESNET_UNITS:
        raise CheckpointError(
            f"ResNet stage layout {layers[:10]} (units per block{{i}}): vitkit builds at most "
            f"{MAX_RESNET_STAGES} stages of at most {MAX_RESNET_UNITS} units"
        )
    return layers


# Flax's Dense kernel is (in, *out), torch's Linear weight (out, in): the query/key/value kernels
# are (D, heads, head_dim), the MLP's and the head's (in, out).
_KERNEL = Transform(
    read=lambda kernel: kernel.reshape(kernel.shape[0], -1).T,
    write=lambda weight, shape: weight.T.reshape(shape),
)
# The attention output's kernel, (heads, head_dim, D), reads every axis but the last.
_OUT_KERNEL = Transform(
    read=lambda kernel: kernel.reshape(-1, kernel.shape[-1]).T, write=_KERNEL.write
)
# A query/key/value bias (heads, head_dim) is its third of vitkit's fused qkv bias, (D,).
_HEADS = Transform(read=lambda bias: bias.reshape(-1), write=SAME.write)
# Convolution kernels: Flax's HWIO (P, P, C, D), torch's OIHW (D, C, P, P).
_CONV = Transform(
    read=lambda kernel: kernel.permute(3, 2, 0, 1),
    write=lambda weight, shape: weight.permute(2, 3, 1, 0).reshape(shape),
)

# Every parameter of a Google checkpoint, in the released files' order, as
# Row(vitkit key, Google key, Google's shape, transform, the condition it exists under). The
# reader, the writer and the check of every key and shape of a file all follow from it (`_entries`
# fills it in for a config). Rows with {unit} repeat for each ResNet unit and rows with {i} for
# each encoder block; the shapes' letters are the config's sizes (`_entries`), digits literal.
# fmt: off
GOOGLE_KEYS: tuple[Row, ...] = (
    # The hybrids' ResNet: the root (c image channels, r its width), then each unit ({unit}:
    # "patch_embed.backbone.stages.{s}.blocks.{u}"; {google_unit}: "block{s+1}/unit{u+1}") with I
    # channels in, W inside and O out; a stage's first unit projects its residual.
    Row("patch_embed.backbone.stem.conv.weight", "conv_root/kernel", "7 7 c r", _CONV, "hybrid"),
    Row("patch_embed.backbone.stem.norm.weight", "gn_root/scale", "r", when="hybrid"),
    Row("patch_embed.backbone.stem.norm.bias", "gn_root/bias", "r", when="hybrid"),
    Row("{unit}.conv1.weight", "{google_unit}/conv1/kernel", "1 1 I W", _CONV),
    Row("{unit}.norm1.weight", "{google_unit}/gn1/scale", "W"),
    Row("{unit}.norm1.bias", "{google_unit}/gn1/bias", "W"),
    Row("{unit}.conv2.weight", "{google_unit}/conv2/kernel", "3 3 W W", _CONV),
    Row("{unit}.norm2.weight", "{google_unit}/gn2/scale", "W"),
    Row("{unit}.norm2.bias", "{google_unit}/gn2/bias", "W"),
    Row("{unit}.conv3.weight", "{google_unit}/conv3/kernel", "1 1 W O", _CONV),
    Row("{unit}.norm3.weight", "{google_unit}/gn3/scale", "O"),
    Row("{unit}.norm3.bias", "{google_unit}/gn3/bias", "O"),
    Row("{unit}.downsample.conv.weight", "{google_unit}/conv_proj/kernel", "1 1 I O", _CONV,
        "projects"),
    Row("{unit}.downsample.norm.weight", "{google_unit}/gn_proj/scale", "O", when="projects"),
    Row("{unit}.downsample.norm.bias", "{google_unit}/gn_proj/bias", "O", when="projects"),
    # The embedding: D the width, P the patch size, C the channels it reads, T the tokens.
    Row("patch_embed.proj.weight", "embedding/kernel", "P P C D", _CONV),
    Row("patch_embed.proj.bias", "embedding/bias", "D"),
    Row("pos_embed", "Transformer/posembed_input/pos_embedding", "1 T D"),
    Row("norm.weight", "Transformer/encoder_norm/scale", "D"),
    Row("norm.bias", "Transformer/encoder_norm/bias", "D"),
    Row("cls_token", "cls", "1 1 D", when="class_token"),
    # Each encoder block {i}: {ln1}, {attn}, {ln2} and {mlp} are its modules in the file's block
    # layout ("Transformer/encoderblock_{i}/LayerNorm_0", ...); H heads of d dimensions, M the
    # MLP's width. Query, key and value fuse, in this order, into vitkit's qkv.
    Row("blocks.{i}.norm1.weight", "{ln1}/scale", "D"),
    Row("blocks.{i}.norm1.bias", "{ln1}/bias", "D"),
    Row("blocks.{i}.norm2.weight", "{ln2}/scale", "D"),
    Row("blocks.{i}.norm2.bias", "{ln2}/bias", "D"),
    Row("blocks.{i}.attn.qkv.weight", "{attn}/query/kernel", "D H d", _KERNEL),
    Row("blocks.{i}.attn.qkv.bias", "{attn}/query/bias", "H d", _HEADS, "qkv_bias"),
    Row("blocks.{i}.attn.qkv.weight", "{attn}/key/kernel", "D H d", _KERNEL),
    Row("blocks.{i}.attn.qkv.bias", "{attn}/key/bias", "H d", _HEADS, "qkv_bias"),
    Row("blocks.{i}.attn.qkv.weight", "{attn}/value/kernel", "D H d", _KERNEL),
    Row("blocks.{i}.attn.qkv.bias", "{attn}/value/bias", "H d", _HEADS, "qkv_bias"),
    Row("blocks.{i}.attn.proj.weight", "{attn}/out/kernel", "H d D", _OUT_KERNEL),
    Row("blocks.{i}.attn.proj.bias", "{attn}/out/bias", "D"),
    Row("blocks.{i}.mlp.fc1.weight", "{mlp}/Dense_0/kernel", "D M", _KERNEL),
    Row("blocks.{i}.mlp.fc1.bias", "{mlp}/Dense_0/bias", "M"),
    Row("blocks.{i}.mlp.fc2.weight", "{mlp}/Dense_1/kernel", "M D", _KERNEL),
    Row("blocks.{i}.mlp.fc2.bias", "{mlp}/Dense_1/bias", "D"),
    # The head: R the pre-logits' width, F the head's inputs (R, or D without pre-logits), K the
    # classes.
    Row("pre_logits.0.weight", "pre_logits/kernel", "D R", _KERNEL, "pre_logits"),
    Row("pre_logits.0.bias", "pre_logits/bias", "R", when="pre_logits"),
    Row("head.weight", "head/kernel", "F K", _KERNEL),
    Row("head.bias", "head/bias", "K"),
)
# fmt: on


def _entries(config: ViTConfig, layout: Mapping[str, str]) -> list[Entry]:
    """`GOOGLE_KEYS` filled in for `config` in a block layout: every array of its file, in order,
    with its shape. Consecutive rows of one scope repeat together, so that the file's order is
    each unit's, then each block's, parameters in turn."""
    dims = dict(
        D=config.width, H=config.num_heads, d=config.head_dim, M=config.mlp_dim,
        P=config.patch_size, C=config.embed_in_chans, T=config.num_tokens, K=config.num_classes,
        R=config.representation_size or 0, F=config.representation_size or config.width,
        c=config.in_chans, r=config.resnet_width,
    )  # fmt: skip
    conditions = dict(
        hybrid=config.is_hybrid,
        class_token=config.class_token,
        qkv_bias=config.qkv_bias,
        pre_logits=bool(config.representation_size),
    )
    entries = []
    for scope, group in itertools.groupby(GOOGLE_KEYS, key=_scope):
        rows = tuple(group)
        for names, sizes, flags in _repeats(scope, config, layout):
            entries += [
                fill(row, names, dims | sizes)
                for row in rows
                if not row.when or (conditions | flags)[row.when]
            ]
    return entries


def _scope(row: Row) -> str:
    """What a row repeats over: "unit" (ResNet units), "block" (encoder blocks) or "model"."""
    return "unit" if "{unit}" in row.vitkit else "block" if "{i}" in row.vitkit else "model"


def _repeats(
    scope: str, config: ViTConfig, layout: Mapping[str, str]
) -> Iterator[tuple[dict[str, object], dict[str, int], dict[str, bool]]]:
    """(the patterns' names, more sizes, more conditions) for each repetition of a scope."""
    if scope == "model":
        yield {}, {}, {}
    elif scope == "block":
        for i in range(config.depth):
            modules = {
                part: f"Transformer/encoderblock_{i}/{name}" for part, name in layout.items()
            }
            yield {"i": i, **modules}, {}, {}
    else:  # each stage's units: widths double per stage; the output is 4x the width
        chans = config.resnet_width
        for s, num_units in enumerate(config.resnet_layers or ()):
            width = config.resnet_width * 2**s
            for u in range(num_units):
                names = {"unit": f"patch_embed.backbone.stages.{s}.blocks.{u}",
                         "google_unit": f"block{s + 1}/unit{u + 1}"}  # fmt: skip
                yield names, {"I": chans, "W": width, "O": 4 * width}, {"projects": u == 0}
                chans = 4 * width


def _block_layout(params: Mapping[str, Shaped]) -> dict[str, str]:
    for layout in _BLOCK_LAYOUTS.values():
        if any(f"/{layout['attn']}/" in key for key in params):
            return layout
    raise CheckpointError(
        "no attention parameters found (expected keys like "
        "'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel')"
    )


def config_from_google(params: Mapping[str, Shaped]) -> ViTConfig:
    """Infer the architecture of a Google checkpoint from its keys and shapes (of arrays, or of
    .npy headers before the data is read)."""
    hybrid: dict[str, object] = {}
    if _is_hybrid(params):
        layers = _resnet_layers(params)  # first: it names a missing root
        root = require_shape(params, "conv_root/kernel", 4)  # (7, 7, in, width)
        hybrid = dict(resnet_layers=layers, resnet_width=root[3], resnet_numerics="google")
    if any(key.startswith("Transformer/encoderblock/") for key in params):
        raise CheckpointError(
            "this is a big_vision checkpoint with stacked (scanned) encoder blocks "
            "('Transformer/encoderblock/...'); vitkit reads vit_jax-style files only"
        )
    patch_h, patch_w, in_chans, width = require_shape(params, "embedding/kernel", 4)  # (P, P, C, D)
    stride = patch_h
    if hybrid:
        embed_chans, in_chans = in_chans, root[2]
        stride = patch_h * resnet_stride(layers)
        resnet_out = resnet_channels(layers, root[3])
        if embed_chans != resnet_out:
            raise CheckpointError(
                f"embedding/kernel: reads {embed_chans} channels, but the ResNet {layers} of "
                f"width {root[3]} gives {resnet_out}"
            )
    if patch_h != patch_w:
        raise CheckpointError(f"embedding/kernel: non-square patches {patch_h}x{patch_w}")
    layout = _block_layout(params)
    block_ids = {int(m.group(1)) for key in params if (m := _ENCODER_BLOCK.match(key))}
    depth = len(block_ids)
    if max(block_ids, default=-1) != depth - 1:
        missing = next(i for i in range(depth) if i not in block_ids)
        raise CheckpointError(f"missing encoder blocks: Transformer/encoderblock_{missing}")
    block0 = f"Transformer/encoderblock_0/{layout['attn']}"
    num_heads = require_shape(params, f"{block0}/query/kernel", 3)[1]
    mlp = require_shape(params, f"Transformer/encoderblock_0/{layout['mlp']}/Dense_0/kernel", 2)
    class_token = "cls" in params
    pos_embed = require_shape(params, "Transformer/posembed_input/pos_embedding", 3)
    num_patches = pos_embed[1] - int(class_token)
    grid = square_side(num_patches)
    if grid is None:
        raise CheckpointError(
            f"Transformer/posembed_input/pos_embedding: {num_patches} patch positions do not form "
            "a square grid"
        )
    representation_size = None
    if "pre_logits/kernel" in params:
        representation_size = require_shape(params, "pre_logits/kernel", 2)[1]
    return ViTConfig(
        **hybrid,
        img_size=grid * stride,
        patch_size=patch_h,
        in_chans=in_chans,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp[1],
        qkv_bias=f"{block0}/query/bias" in params,
        num_classes=require_shape(params, "head/kernel", 2)[1],
        classifier="token" if class_token else "gap",
        class_token=class_token,
        representation_size=representation_size,
        gelu="tanh",
        layer_norm_eps=1e-6,
    )


def _check_shapes(
    shapes: Mapping[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> None:
    for key, shape in expected.items():
        if key not in shapes:
            raise CheckpointError(f"missing key {key!r} (expected shape {shape})")
        if shapes[key] != shape:
            raise CheckpointError(f"{key}: expected shape {shape}, found {shapes[key]}")
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"unexpected keys the architecture has no place for: {', '.join(unexpected[:5])}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )


def _checked_layout(params: Mapping[str, Shaped]) -> tuple[ViTConfig, list[Entry]]:
    """The config of a Google checkpoint and its filled-in key map, every key and shape checked
    against the map (GroupNorm parameters may be stored (1, 1, 1, C) for (C,))."""
    config = config_from_google(params)
    entries = _entries(config, _block_layout(params))
    shapes = {key: tuple(int(size) for size in value.shape) for key, value in params.items()}
    if config.is_hybrid:
        shapes = {key: _group_norm_shape(key, shape) for key, shape in shapes.items()}
    _check_shapes(shapes, {entry.foreign: entry.shape for entry in entries})
    return config, entries


def _group_norm_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A hybrid's GroupNorm parameter (C,) as some files store it, (1, 1, 1, C), read as (C,)."""
    if _GROUP_NORM_KEY.search(key) and len(shape) == 4 and shape[:3] == (1, 1, 1):
        return shape[3:]
    return shape


def read_google_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a Google .npz file, under the prefix-free keys of `GOOGLE_KEYS`, read by
    the bounded .npz reader: all keys and shapes (from the members' headers) are checked against
    Google's layout before any data is inflated, so that a junk key or a wrong shape fails
    naming the file and the key without allocating what the file claims."""
    return read_npz(path, check=_checked_layout, prefixes=_PREFIXES)


def google_to_vitkit(
    params: Mapping[str, np.ndarray],
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a Google checkpoint's arrays to (config, state dict in vitkit's naming)."""
    config, entries = _checked_layout(params)

    def tensor(entry: Entry) -> torch.Tensor:  # in the checked shape: GroupNorm's as (C,)
        array = np.asarray(params[entry.foreign], dtype=np.float32).reshape(entry.shape)
        return torch.from_numpy(array)

    return config, read_entries(entries, tensor)


# ---------------------------------------------------------------------------------------------
# Writing: vitkit -> Google, the inverse of `google_to_vitkit`, in the original ("pre-linen")
# naming of the released files, which Google's vit_jax `checkpoint.load` and vitkit read.


# What an .npz can hold (weights/capabilities.py); the reasons for the narrow ones are
# `google_refusal`'s.
GOOGLE_HOLDS: Holds = {
    **PAPER_FIELDS,
    "qkv_bias": (True,),
    "classifier": ("token", "gap"),
    "class_token": ANY,
    "representation_size": ANY,
    "gelu": ("tanh",),
    "layer_norm_eps": (1e-6,),
    "resnet_layers": ANY,
    "resnet_width": ANY,
    "resnet_numerics": ("google",),
}


def google_refusal(config: ViTConfig) -> str | None:
    """Why a Google .npz cannot hold a model of `config`, or None when it can.

    What "can hold" means: an .npz file holds parameters only; everything else is fixed by the
    code that runs them, Google's vit_jax (`models_vit`, `models_resnet`), whose computation
    vitkit's reader reproduces. A model can be written as .npz when that code, reading the file,
    computes the model's function: learned 1-D position embeddings, tanh-GELU (flax's
    `nn.gelu`), LayerNorm eps 1e-6, Google's ResNet numerics, a [class] token only when it is
    read, query/key/value biases, a head and a square patch grid. An exact-GELU model's weights
    would fit in the file, but every reader of the format would compute tanh-GELU from them, so
    its outputs would silently change: that is refused, not written. The one reason returned is
    the first of these that fails, naming only the field that differs.
    """
    if problem := no_place(config, GOOGLE_HOLDS, holder="Google's .npz"):
        return problem
    if config.is_hybrid and config.resnet_numerics != "google":
        return (
            f"Google's ResNet computes {NUMERICS['google'].describe()}, and the file cannot "
            f"record other numerics, but this hybrid has resnet_numerics="
            f"{config.resnet_numerics!r}; read back, its outputs would change"
        )
    if config.gelu != "tanh":
        return (
            "Google's code computes tanh-GELU from any .npz (flax's nn.gelu), and the file cannot "
            f"record another activation, but this model has gelu={config.gelu!r}; read back, its "
            "outputs would change"
        )
    if config.layer_norm_eps != 1e-6:
        return (
            "Google's code computes LayerNorm with eps 1e-6, and the file cannot record another, "
            f"but this model has layer_norm_eps={config.layer_norm_eps:g}; read back, its outputs "
            "would change"
        )
    if config.classifier == "gap" and config.class_token:
        return (
            "Google's code adds a [class] token only when it reads it (classifier='token'); this "
            "model has one but averages the patch tokens (classifier='gap')"
        )
    if not config.qkv_bias:
        return "Google's attention always has query/key/value biases; this model has none"
    if config.num_classes == 0:
        return "Google's files always have a head; this model has none (num_classes=0)"
    if config.img_size[0] != config.img_size[1]:
        return (
            f"Google's files do not record the image size and are read as square patch grids; "
            f"this model's is {config.grid_size[0]}x{config.grid_size[1]}"
        )
    return unheld_value(config, GOOGLE_HOLDS, holder="Google's .npz")


def vitkit_to_google(config: ViTConfig, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A vitkit state dict as the arrays of a Google checkpoint (key names and shapes of the
    released files: Transformer/encoderblock_N/..., embedding, cls, pre_logits, head), by the
    same key map the reader checks files against."""
    if problem := google_refusal(config):
        raise CheckpointError(problem)
    entries = _entries(config, _BLOCK_LAYOUTS["pre-linen"])
    arrays = write_entries(entries, lambda key: state[key].detach().cpu().to(torch.float32))
    return {key: tensor.numpy() for key, tensor in arrays.items()}


def write_npz(model: torch.nn.Module, path: Path) -> Path:
    """Write `model` (a vitkit VisionTransformer) as a Google .npz checkpoint (np.savez, float32),
    atomically. Nothing is written when Google's model cannot express it."""
    path = Path(path)
    if path.suffix != ".npz":
        raise CheckpointError(f"{path}: a Google checkpoint needs a .npz name")
    params = vitkit_to_google(model.config, model.state_dict())
    atomic_write(path, lambda file: np.savez(file, **params))
    return path
