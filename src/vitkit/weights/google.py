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

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from vitkit.io import atomic_write
from vitkit.models.config import RESNET_LAYOUTS, ViTConfig
from vitkit.errors import CheckpointError

# Some releases store the parameters under an optimizer or variables prefix.
_PREFIXES = ("opt/target/", "params/")
_BLOCK_LAYOUTS = {
    "pre-linen": {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_1",
                  "ln2": "LayerNorm_2", "mlp": "MlpBlock_3"},
    "linen": {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_0",
              "ln2": "LayerNorm_1", "mlp": "MlpBlock_0"},
}  # fmt: skip
_HYBRID_KEYS = ("conv_root/kernel", "gn_root/scale")
_UNIT_KEY = re.compile(r"block(\d+)/unit(\d+)/")
_GROUP_NORM_KEY = re.compile(r"(^|/)gn_?\w*/(scale|bias)$")
_BACKBONE = "patch_embed.backbone"


def _is_hybrid(params: dict[str, np.ndarray]) -> bool:
    return any(key in params for key in _HYBRID_KEYS) or any(map(_UNIT_KEY.match, params))


def _resnet_layers(params: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Units per stage, from the block{i}/unit{j} keys (both numbered from 1)."""
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
    for stage in range(1, max(units, default=0) + 1):
        ids = units.get(stage, set())
        if sorted(ids) != list(range(1, len(ids) + 1)) or not ids:
            raise CheckpointError(
                f"ResNet stage block{stage} has units {sorted(ids)}, not unit1..unitN"
            )
    layers = tuple(len(units[stage]) for stage in sorted(units))
    if layers not in RESNET_LAYOUTS:
        known = ", ".join(f"{layout} ({name})" for layout, name in RESNET_LAYOUTS.items())
        raise CheckpointError(
            f"unknown ResNet stage layout {layers} (units per block{{i}}): this matches no "
            f"hybrid preset; known layouts: {known}"
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


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read eagerly (pickles refused) so that a truncated or corrupt
    file fails here, naming the file and key, rather than halfway through a conversion."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not an .npz archive (not a zip file); it may be truncated or another format"
        )
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except Exception as error:  # zlib, EOF, bad header or pickled object arrays
                    raise CheckpointError(f"{path}: cannot read array {key!r}: {error}") from error
    except CheckpointError:
        raise
    except Exception as error:  # zipfile.BadZipFile, OSError, ...
        raise CheckpointError(f"{path}: cannot read the .npz archive: {error}") from error
    for prefix in _PREFIXES:
        if any(key.startswith(prefix) for key in arrays):
            arrays = {key[len(prefix) :]: value for key, value in arrays.items()
                      if key.startswith(prefix)}  # fmt: skip
    return arrays


def _require(params: dict[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    if key not in params:
        raise CheckpointError(f"missing key {key!r}")
    if params[key].ndim != ndim:
        raise CheckpointError(
            f"{key}: expected a {ndim}-d array, found shape {tuple(params[key].shape)}"
        )
    return params[key]


def _block_layout(params: dict[str, np.ndarray]) -> dict[str, str]:
    for layout in _BLOCK_LAYOUTS.values():
        if any(f"/{layout['attn']}/" in key for key in params):
            return layout
    raise CheckpointError(
        "no attention parameters found (expected keys like "
        "'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel')"
    )


def config_from_google(params: dict[str, np.ndarray]) -> ViTConfig:
    """Infer the architecture of a Google checkpoint from its keys and shapes."""
    hybrid: dict[str, object] = {}
    if _is_hybrid(params):
        layers = _resnet_layers(params)  # first: it names a missing root
        root = _require(params, "conv_root/kernel", 4)  # (7, 7, in, width)
        hybrid = dict(resnet_layers=layers, resnet_width=int(root.shape[3]),
                      resnet_numerics="google")  # fmt: skip
    if any(key.startswith("Transformer/encoderblock/") for key in params):
        raise CheckpointError(
            "this is a big_vision checkpoint with stacked (scanned) encoder blocks "
            "('Transformer/encoderblock/...'); vitkit reads vit_jax-style files only"
        )
    kernel = _require(params, "embedding/kernel", 4)  # (P, P, C, D)
    patch_h, patch_w, in_chans, width = kernel.shape
    stride = patch_h
    if hybrid:
        in_chans = params["conv_root/kernel"].shape[2]
        probe = ViTConfig(patch_size=int(patch_h), img_size=0, width=int(width), num_heads=1,
                          **hybrid)  # fmt: skip
        stride = probe.total_stride
        if kernel.shape[2] != probe.embed_in_chans:
            raise CheckpointError(
                f"embedding/kernel: reads {kernel.shape[2]} channels, but the ResNet "
                f"{hybrid['resnet_layers']} of width {hybrid['resnet_width']} gives "
                f"{probe.embed_in_chans}"
            )
    if patch_h != patch_w:
        raise CheckpointError(f"embedding/kernel: non-square patches {patch_h}x{patch_w}")
    layout = _block_layout(params)
    block_ids = {int(m.group(1)) for key in params
                 if (m := re.match(r"Transformer/encoderblock_(\d+)/", key))}  # fmt: skip
    depth = len(block_ids)
    if block_ids != set(range(depth)):
        missing = sorted(set(range(max(block_ids) + 1)) - block_ids)
        raise CheckpointError(f"missing encoder blocks: Transformer/encoderblock_{missing[0]}")
    block0 = f"Transformer/encoderblock_0/{layout['attn']}"
    num_heads = _require(params, f"{block0}/query/kernel", 3).shape[1]
    mlp_dim = _require(params, f"Transformer/encoderblock_0/{layout['mlp']}/Dense_0/kernel", 2)
    class_token = "cls" in params
    pos_embed = _require(params, "Transformer/posembed_input/pos_embedding", 3)
    num_patches = pos_embed.shape[1] - int(class_token)
    grid = round(num_patches**0.5)
    if grid * grid != num_patches:
        raise CheckpointError(
            f"Transformer/posembed_input/pos_embedding: {num_patches} patch positions do not form "
            "a square grid"
        )
    representation_size = None
    if "pre_logits/kernel" in params:
        representation_size = int(_require(params, "pre_logits/kernel", 2).shape[1])
    num_classes = int(_require(params, "head/kernel", 2).shape[1])
    return ViTConfig(
        **hybrid,
        img_size=grid * stride,
        patch_size=int(patch_h),
        in_chans=int(in_chans),
        width=int(width),
        depth=depth,
        num_heads=int(num_heads),
        mlp_dim=int(mlp_dim.shape[1]),
        qkv_bias=f"{block0}/query/bias" in params,
        num_classes=num_classes,
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


def _check_shapes(params: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> None:
    for key, shape in expected.items():
        if key not in params:
            raise CheckpointError(f"missing key {key!r} (expected shape {shape})")
        if tuple(params[key].shape) != shape:
            raise CheckpointError(
                f"{key}: expected shape {shape}, found {tuple(params[key].shape)}"
            )
    unexpected = sorted(set(params) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"unexpected keys the architecture has no place for: {', '.join(unexpected[:5])}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )


def google_to_vitkit(
    params: dict[str, np.ndarray],
) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Convert a Google checkpoint's arrays to (config, state dict in vitkit's naming)."""
    config = config_from_google(params)
    layout = _block_layout(params)
    if config.is_hybrid:  # GroupNorm parameters (1, 1, 1, C) -> (C,)
        params = {key: value.reshape(value.shape[-1]) if _GROUP_NORM_KEY.search(key)
                  and value.ndim == 4 and value.shape[:3] == (1, 1, 1) else value
                  for key, value in params.items()}  # fmt: skip
    _check_shapes(params, _expected_shapes(config, layout))

    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(params[key], dtype=np.float32))

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


def _google_refusal(config: ViTConfig) -> str | None:
    """Why Google's vit_jax model cannot express `config`, or None when it can. The file holds
    only parameters, so whatever vit_jax fixes must match: its numerics, its token/pooling
    pairs, its biases, its head."""
    if config.is_hybrid and config.resnet_numerics != "google":
        return (
            f"Google's ResNet computes its own numerics (weight standardisation with the eps "
            f"added to the std, GroupNorm eps 1e-6), but this hybrid uses "
            f"resnet_numerics={config.resnet_numerics!r}; its outputs would change"
        )
    if config.gelu != "tanh" or config.layer_norm_eps != 1e-6:
        return (
            "Google's code computes tanh-GELU and LayerNorm eps 1e-6, and its files cannot record "
            f"other numerics, but this model uses gelu={config.gelu!r} and "
            f"layer_norm_eps={config.layer_norm_eps:g} (as timm, torchvision or Hugging Face "
            "weights do); its outputs would change. Export to vitkit, timm or hf"
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
    return None


def vitkit_to_google(config: ViTConfig, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A vitkit state dict as the arrays of a Google checkpoint (key names and shapes of the
    released files: Transformer/encoderblock_N/..., embedding, cls, pre_logits, head)."""
    if problem := _google_refusal(config):
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
    _check_shapes(params, _expected_shapes(config, layout))  # the reader's own expectations
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
