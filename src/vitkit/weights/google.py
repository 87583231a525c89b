"""Google's official ViT checkpoints (.npz, as released by google-research/vision_transformer),
read and written (`write_npz`, in the original release's naming).

The files name parameters after the Flax modules that made them. Two block layouts exist: the
original release ("pre-linen": MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) and the
Linen one of later releases such as AugReg (MultiHeadDotProductAttention_0, LayerNorm_1,
MlpBlock_0). Both convert to the same vitkit state dict. The architecture is read from the
shapes, and the numerics are Google's: tanh-GELU, LayerNorm eps 1e-6, "gap" after the final norm.

ResNet + ViT hybrids add vit_jax's `models_resnet` parameters at the top level: conv_root and
gn_root, then block{i}/unit{j}/conv1..3, gn1..3 and, in each stage's first unit, conv_proj and
gn_proj. Kernels are stored unstandardised (HWIO); the model standardises them on every forward
pass, in Google's numerics (resnet_numerics="google"). GroupNorm parameters are (C,) or, in some
files, (1, 1, 1, C).
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

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
from vitkit.weights.files import check_inflation, one_line
from vitkit.weights.shapes import INDEX, Shaped, require_shape, square_side
from vitkit.weights.state_dict import check_float_dtypes

T = TypeVar("T")

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
_BACKBONE = "patch_embed.backbone"
# Bytes read at a time from an archive member into its array (a chunk is copied once).
_CHUNK_BYTES = 1 << 20


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


def _resnet_key_map(config: ViTConfig) -> list[tuple[str, str, str]]:
    """(Google key, vitkit key, "conv" or "norm") for every parameter of the ResNet stem."""
    mapping = [("conv_root/kernel", f"{_BACKBONE}.stem.conv.weight", "conv"),
               ("gn_root/scale", f"{_BACKBONE}.stem.norm.weight", "norm"),
               ("gn_root/bias", f"{_BACKBONE}.stem.norm.bias", "norm")]  # fmt: skip
    for i, num_units in enumerate(config.resnet_layers or ()):
        for j in range(num_units):
            src, dst = f"block{i + 1}/unit{j + 1}", f"{_BACKBONE}.stages.{i}.blocks.{j}"
            # A stage's first unit always projects: the first stage widens 64 -> 256 channels,
            # the later ones stride.
            names = [("1", "1"), ("2", "2"), ("3", "3")] + ([("_proj", "")] if j == 0 else [])
            for google, torch_name in names:
                conv = f"{dst}.conv{torch_name}" if torch_name else f"{dst}.downsample.conv"
                norm = f"{dst}.norm{torch_name}" if torch_name else f"{dst}.downsample.norm"
                mapping += [(f"{src}/conv{google}/kernel", f"{conv}.weight", "conv"),
                            (f"{src}/gn{google}/scale", f"{norm}.weight", "norm"),
                            (f"{src}/gn{google}/bias", f"{norm}.bias", "norm")]  # fmt: skip
    return mapping


def _resnet_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of the ResNet stem's parameters in a Google checkpoint for `config`."""
    shapes: dict[str, tuple[int, ...]] = {}
    root = config.resnet_width
    shapes["conv_root/kernel"] = (7, 7, config.in_chans, root)
    shapes["gn_root/scale"] = shapes["gn_root/bias"] = (root,)
    chans = root
    for i, num_units in enumerate(config.resnet_layers or ()):
        width = root * 2**i
        for j in range(num_units):
            unit = f"block{i + 1}/unit{j + 1}"
            convs = {"1": (1, chans, width), "2": (3, width, width), "3": (1, width, 4 * width)}
            if j == 0:
                convs["_proj"] = (1, chans, 4 * width)
            for name, (kernel, cin, cout) in convs.items():
                shapes[f"{unit}/conv{name}/kernel"] = (kernel, kernel, cin, cout)
                shapes[f"{unit}/gn{name}/scale"] = shapes[f"{unit}/gn{name}/bias"] = (cout,)
            chans = 4 * width
    return shapes


class NpyHeader(NamedTuple):
    """An .npy member's header, read without its data: all that the layout checks need."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # bytes of the member before the data

    @property
    def ndim(self) -> int:
        return len(self.shape)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a Google .npz file, each checked before a byte of it is inflated: the
    archive's declared sizes against its own (`check_inflation`), each member's .npy header (its
    dtype floating point, so no pickles; its shape) against the member's declared size, and all
    keys and shapes against Google's layout. Only then is each member read, into an array of
    exactly its declared size (numpy's reader allocates whatever a header claims), so that a
    junk key, a lying header or a corrupt member fails here, naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not an .npz archive (not a zip file); it may be truncated or another format"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            check_inflation(archive, path)
            members = _without_prefix(archive.infolist())
            headers = {
                key: _member(path, key, partial(_read_header, archive, info, path, key))
                for key, info in members.items()
            }
            _checked_layout(headers)
            return {
                key: _member(path, key, partial(_read_data, archive, info, headers[key]))
                for key, info in members.items()
            }
    except (CheckpointError, MemoryError):  # a MemoryError is never mistaken for a bad file
        raise
    except Exception as error:  # zipfile.BadZipFile, OSError, ...
        raise CheckpointError(f"{path}: cannot read the .npz archive: {one_line(error)}") from None


def _without_prefix(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """The members by key (np.savez adds ".npy" to each), without the optimizer or variables
    prefix some releases use (members outside it are left out)."""
    members = {info.filename.removesuffix(".npy"): info for info in infos}
    for prefix in _PREFIXES:
        if any(key.startswith(prefix) for key in members):
            return {key.removeprefix(prefix): info for key, info in members.items()
                    if key.startswith(prefix)}  # fmt: skip
    return members


def _member(path: Path, key: str, read: Callable[[], T]) -> T:
    """What `read` returns for member `key`, any failure a CheckpointError naming it."""
    try:
        return read()
    except (CheckpointError, MemoryError):
        raise
    except Exception as error:  # zlib, EOF, CRC, encryption, a malformed .npy header, ...
        raise CheckpointError(f"{path}: cannot read array {key!r}: {one_line(error)}") from None


def _read_header(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str
) -> NpyHeader:
    """A member's .npy header (inflating only its first bytes), held to the member's declared
    size: the data the header describes must be exactly what the archive declares."""
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise CheckpointError(f"{path}: {key}: unsupported .npy format version {version}")
        data_offset = stream.tell()
    check_float_dtypes({key: dtype}, source=str(path))
    if any(size < 0 for size in shape):
        raise CheckpointError(f"{path}: {key}: negative size in shape {shape}")
    data_bytes = math.prod(shape) * dtype.itemsize
    if data_offset + data_bytes != info.file_size:
        raise CheckpointError(
            f"{path}: {key}: its header declares shape {shape} of {dtype} ({data_bytes} bytes), "
            f"but the archive declares {info.file_size - data_offset} bytes of data"
        )
    return NpyHeader(tuple(shape), dtype, fortran_order, data_offset)


def _read_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: NpyHeader) -> np.ndarray:
    """A member's array, read into memory of exactly its checked size, a chunk at a time."""
    array = np.empty(math.prod(header.shape), dtype=header.dtype)
    buffer = array.view(np.uint8)
    with archive.open(info) as stream:
        stream.read(header.data_offset)
        filled = 0
        while filled < buffer.size:
            chunk = stream.read(min(_CHUNK_BYTES, buffer.size - filled))
            if not chunk:
                raise EOFError(f"the data ends after {filled} of {buffer.size} bytes")
            buffer[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
    if header.fortran_order:
        return array.reshape(header.shape[::-1]).T
    return array.reshape(header.shape)


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


def _expected_shapes(config: ViTConfig, layout: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """Every key of a Google checkpoint for `config`, with its shape."""
    width, heads, head_dim, mlp = config.width, config.num_heads, config.head_dim, config.mlp_dim
    patch = config.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        **(_resnet_shapes(config) if config.is_hybrid else {}),
        "embedding/kernel": (patch, patch, config.embed_in_chans, width),
        "embedding/bias": (width,),
        "Transformer/posembed_input/pos_embedding": (1, config.num_tokens, width),
        "Transformer/encoder_norm/scale": (width,),
        "Transformer/encoder_norm/bias": (width,),
    }
    if config.class_token:
        shapes["cls"] = (1, 1, width)
    for i in range(config.depth):
        block = f"Transformer/encoderblock_{i}"
        for norm in (layout["ln1"], layout["ln2"]):
            shapes[f"{block}/{norm}/scale"] = (width,)
            shapes[f"{block}/{norm}/bias"] = (width,)
        attn = f"{block}/{layout['attn']}"
        for name in ("query", "key", "value"):
            shapes[f"{attn}/{name}/kernel"] = (width, heads, head_dim)
            if config.qkv_bias:
                shapes[f"{attn}/{name}/bias"] = (heads, head_dim)
        shapes[f"{attn}/out/kernel"] = (heads, head_dim, width)
        shapes[f"{attn}/out/bias"] = (width,)
        mlp_block = f"{block}/{layout['mlp']}"
        shapes[f"{mlp_block}/Dense_0/kernel"] = (width, mlp)
        shapes[f"{mlp_block}/Dense_0/bias"] = (mlp,)
        shapes[f"{mlp_block}/Dense_1/kernel"] = (mlp, width)
        shapes[f"{mlp_block}/Dense_1/bias"] = (width,)
    features = width
    if config.representation_size:
        features = config.representation_size
        shapes["pre_logits/kernel"] = (width, features)
        shapes["pre_logits/bias"] = (features,)
    shapes["head/kernel"] = (features, config.num_classes)
    shapes["head/bias"] = (config.num_classes,)
    return shapes


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


def _checked_layout(
    params: Mapping[str, Shaped],
) -> tuple[ViTConfig, dict[str, str], dict[str, tuple[int, ...]]]:
    """The config, block layout and expected shapes of a Google checkpoint, every key and shape
    checked (GroupNorm parameters may be stored (1, 1, 1, C) for (C,))."""
    config = config_from_google(params)
    layout = _block_layout(params)
    shapes = {key: tuple(int(size) for size in value.shape) for key, value in params.items()}
    if config.is_hybrid:
        shapes = {key: _group_norm_shape(key, shape) for key, shape in shapes.items()}
    expected = _expected_shapes(config, layout)
    _check_shapes(shapes, expected)
    return config, layout, expected


def _group_norm_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A hybrid's GroupNorm parameter (C,) as some files store it, (1, 1, 1, C), read as (C,)."""
    if _GROUP_NORM_KEY.search(key) and len(shape) == 4 and shape[:3] == (1, 1, 1):
        return shape[3:]
    return shape


def google_to_vitkit(
    params: Mapping[str, np.ndarray],
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a Google checkpoint's arrays to (config, state dict in vitkit's naming)."""
    config, layout, expected = _checked_layout(params)

    def tensor(key: str) -> torch.Tensor:  # in the checked shape: GroupNorm's as (C,)
        return torch.from_numpy(np.asarray(params[key], dtype=np.float32).reshape(expected[key]))

    def dense(key: str) -> torch.Tensor:  # Flax (in, *out) -> torch (out, in)
        kernel = tensor(key)
        return kernel.reshape(kernel.shape[0], -1).T.contiguous()

    width = config.width
    state: dict[str, torch.Tensor] = {
        # (P, P, C, D) HWIO -> (D, C, P, P) OIHW
        "patch_embed.proj.weight": tensor("embedding/kernel").permute(3, 2, 0, 1).contiguous(),
        "patch_embed.proj.bias": tensor("embedding/bias"),
        "pos_embed": tensor("Transformer/posembed_input/pos_embedding"),
        "norm.weight": tensor("Transformer/encoder_norm/scale"),
        "norm.bias": tensor("Transformer/encoder_norm/bias"),
    }
    if config.class_token:
        state["cls_token"] = tensor("cls")
    if config.is_hybrid:
        for google, name, kind in _resnet_key_map(config):
            value = tensor(google)
            state[name] = value.permute(3, 2, 0, 1).contiguous() if kind == "conv" else value
    for i in range(config.depth):
        src, dst = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        attn = f"{src}/{layout['attn']}"
        mlp = f"{src}/{layout['mlp']}"
        for norm, name in ((layout["ln1"], "norm1"), (layout["ln2"], "norm2")):
            state[f"{dst}.{name}.weight"] = tensor(f"{src}/{norm}/scale")
            state[f"{dst}.{name}.bias"] = tensor(f"{src}/{norm}/bias")
        # query/key/value kernels (D, heads, head_dim) -> one fused (3D, D) projection.
        state[f"{dst}.attn.qkv.weight"] = torch.cat(
            [dense(f"{attn}/{name}/kernel") for name in ("query", "key", "value")]
        )
        if config.qkv_bias:
            state[f"{dst}.attn.qkv.bias"] = torch.cat(
                [tensor(f"{attn}/{name}/bias").reshape(width) for name in ("query", "key", "value")]
            )
        # out kernel (heads, head_dim, D) -> (D, D)
        out_kernel = tensor(f"{attn}/out/kernel").reshape(width, width)
        state[f"{dst}.attn.proj.weight"] = out_kernel.T.contiguous()
        state[f"{dst}.attn.proj.bias"] = tensor(f"{attn}/out/bias")
        state[f"{dst}.mlp.fc1.weight"] = dense(f"{mlp}/Dense_0/kernel")
        state[f"{dst}.mlp.fc1.bias"] = tensor(f"{mlp}/Dense_0/bias")
        state[f"{dst}.mlp.fc2.weight"] = dense(f"{mlp}/Dense_1/kernel")
        state[f"{dst}.mlp.fc2.bias"] = tensor(f"{mlp}/Dense_1/bias")
    if config.representation_size:
        state["pre_logits.0.weight"] = dense("pre_logits/kernel")
        state["pre_logits.0.bias"] = tensor("pre_logits/bias")
    state["head.weight"] = dense("head/kernel")
    state["head.bias"] = tensor("head/bias")
    return config, state


# ---------------------------------------------------------------------------------------------
# Writing: vitkit -> Google, the inverse of `google_to_vitkit`, in the original ("pre-linen")
# naming of the released files, which Google's vit_jax `checkpoint.load` and vitkit read.


def google_refusal(config: ViTConfig) -> str | None:
    """Why a Google .npz cannot hold a model of `config`, or None when it can.

    What "can hold" means: an .npz file holds parameters only; everything else is fixed by the
    code that runs them, Google's vit_jax (`models_vit`, `models_resnet`), whose computation
    vitkit's reader reproduces. A model can be written as .npz when that code, reading the file,
    computes the model's function: tanh-GELU (flax's `nn.gelu`), LayerNorm eps 1e-6, Google's
    ResNet numerics, a [class] token only when it is read, query/key/value biases, a head and a
    square patch grid. An exact-GELU model's weights would fit in the file, but every reader of
    the format would compute tanh-GELU from them, so its outputs would silently change: that is
    refused, not written. The one reason returned is the first of these that fails, naming only
    the field that differs.
    """
    if config.is_hybrid and config.resnet_numerics != "google":
        return (
            "Google's ResNet computes weight standardisation as (w - mean) / (std + 1e-5) and "
            "GroupNorm with eps 1e-6, and the file cannot record other numerics, but this hybrid "
            f"has resnet_numerics={config.resnet_numerics!r}; read back, its outputs would change"
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
    extras = {"reg_tokens": "register tokens", "no_embed_class": "position embeddings for the "
              "patches only", "fc_norm": "a LayerNorm after pooling"}  # fmt: skip
    for field, feature in extras.items():
        if value := getattr(config, field):
            return f"Google's ViT has no {feature}, but this model has {field}={value!r}"
    if not config.qkv_bias:
        return "Google's attention always has query/key/value biases; this model has none"
    if config.num_classes == 0:
        return "Google's files always have a head; this model has none (num_classes=0)"
    if config.img_size[0] != config.img_size[1]:
        return (
            f"Google's files do not record the image size and are read as square patch grids; "
            f"this model's is {config.grid_size[0]}x{config.grid_size[1]}"
        )
    return None


def vitkit_to_google(config: ViTConfig, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A vitkit state dict as the arrays of a Google checkpoint (key names and shapes of the
    released files: Transformer/encoderblock_N/..., embedding, cls, pre_logits, head)."""
    if problem := google_refusal(config):
        raise CheckpointError(problem)
    layout = _BLOCK_LAYOUTS["pre-linen"]
    heads, head_dim, width = config.num_heads, config.head_dim, config.width

    def array(key: str) -> np.ndarray:
        return state[key].detach().cpu().to(torch.float32).numpy()

    def kernel(key: str) -> np.ndarray:  # torch (out, in) -> Flax (in, out)
        return np.ascontiguousarray(array(key).T)

    params: dict[str, np.ndarray] = {
        # (D, C, P, P) OIHW -> (P, P, C, D) HWIO
        "embedding/kernel": np.ascontiguousarray(
            array("patch_embed.proj.weight").transpose(2, 3, 1, 0)
        ),
        "embedding/bias": array("patch_embed.proj.bias"),
        "Transformer/posembed_input/pos_embedding": array("pos_embed"),
        "Transformer/encoder_norm/scale": array("norm.weight"),
        "Transformer/encoder_norm/bias": array("norm.bias"),
    }
    if config.class_token:
        params["cls"] = array("cls_token")
    if config.is_hybrid:  # OIHW -> HWIO kernels, (C,) GroupNorm parameters
        for google, name, kind in _resnet_key_map(config):
            value = array(name)
            params[google] = np.ascontiguousarray(value.transpose(2, 3, 1, 0)) if kind == "conv" \
                else value  # fmt: skip
    for i in range(config.depth):
        src, dst = f"blocks.{i}", f"Transformer/encoderblock_{i}"
        attn, mlp = f"{dst}/{layout['attn']}", f"{dst}/{layout['mlp']}"
        for name, norm in (("norm1", layout["ln1"]), ("norm2", layout["ln2"])):
            params[f"{dst}/{norm}/scale"] = array(f"{src}.{name}.weight")
            params[f"{dst}/{norm}/bias"] = array(f"{src}.{name}.bias")
        # one fused (3D, D) projection -> query/key/value kernels (D, heads, head_dim)
        qkv_weight = np.split(array(f"{src}.attn.qkv.weight"), 3)
        qkv_bias = np.split(array(f"{src}.attn.qkv.bias"), 3)
        for name, weight, bias in zip(("query", "key", "value"), qkv_weight, qkv_bias):
            params[f"{attn}/{name}/kernel"] = np.ascontiguousarray(weight.T).reshape(
                width, heads, head_dim
            )
            params[f"{attn}/{name}/bias"] = bias.reshape(heads, head_dim)
        # (D, D) -> out kernel (heads, head_dim, D)
        params[f"{attn}/out/kernel"] = kernel(f"{src}.attn.proj.weight").reshape(
            heads, head_dim, width
        )
        params[f"{attn}/out/bias"] = array(f"{src}.attn.proj.bias")
        params[f"{mlp}/Dense_0/kernel"] = kernel(f"{src}.mlp.fc1.weight")
        params[f"{mlp}/Dense_0/bias"] = array(f"{src}.mlp.fc1.bias")
        params[f"{mlp}/Dense_1/kernel"] = kernel(f"{src}.mlp.fc2.weight")
        params[f"{mlp}/Dense_1/bias"] = array(f"{src}.mlp.fc2.bias")
    if config.representation_size:
        params["pre_logits/kernel"] = kernel("pre_logits.0.weight")
        params["pre_logits/bias"] = array("pre_logits.0.bias")
    params["head/kernel"] = kernel("head.weight")
    params["head/bias"] = array("head.bias")
    shapes = {key: value.shape for key, value in params.items()}
    _check_shapes(shapes, _expected_shapes(config, layout))  # the reader's own expectations
    return params


def write_npz(model: torch.nn.Module, path: Path) -> Path:
    """Write `model` (a vitkit VisionTransformer) as a Google .npz checkpoint (np.savez, float32),
    atomically. Nothing is written when Google's model cannot express it."""
    path = Path(path)
    if path.suffix != ".npz":
        raise CheckpointError(f"{path}: a Google checkpoint needs a .npz name")
    params = vitkit_to_google(model.config, model.state_dict())
    atomic_write(path, lambda file: np.savez(file, **params))
    return path
