"""Google's official ViT checkpoints (.npz, as released by google-research/vision_transformer),
read and written (`write_npz`, in the original release's naming).

The files name parameters after the Flax modules that made them. Two block layouts exist: the
original release ("pre-linen": MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) and the
Linen one of later releases such as AugReg (MultiHeadDotProductAttention_0, LayerNorm_1,
MlpBlock_0). Both convert to the same vitkit state dict. The architecture is read from the
shapes, and the numerics are Google's: tanh-GELU, LayerNorm eps 1e-6, "gap" after the final norm.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from vitkit.io import atomic_write
from vitkit.models.config import ViTConfig
from vitkit.weights.errors import CheckpointError

# Some releases store the parameters under an optimizer or variables prefix.
_PREFIXES = ("opt/target/", "params/")
_BLOCK_LAYOUTS = {
    "pre-linen": {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_1",
                  "ln2": "LayerNorm_2", "mlp": "MlpBlock_3"},
    "linen": {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_0",
              "ln2": "LayerNorm_1", "mlp": "MlpBlock_0"},
}  # fmt: skip
_HYBRID_KEYS = ("conv_root/kernel", "gn_root/scale")


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
    if any(key in params for key in _HYBRID_KEYS):
        raise CheckpointError(
            "this is a ResNet+ViT hybrid checkpoint (it has 'conv_root'); hybrids are not "
            "supported by vitkit yet"
        )
    if any(key.startswith("Transformer/encoderblock/") for key in params):
        raise CheckpointError(
            "this is a big_vision checkpoint with stacked (scanned) encoder blocks "
            "('Transformer/encoderblock/...'); vitkit reads vit_jax-style files only"
        )
    kernel = _require(params, "embedding/kernel", 4)  # (P, P, C, D)
    patch_h, patch_w, in_chans, width = kernel.shape
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
        img_size=grid * patch_h,
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
        "embedding/kernel": (patch, patch, config.in_chans, width),
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
