"""`load_model`: read any supported checkpoint, build the model it describes, load it strictly.

Formats are detected from the path: a `.npz` file is Google's; a directory whose `config.json`
says `"format": "vitkit"` is vitkit's own (`save_pretrained`), any other directory with
`config.json` is Hugging Face transformers'; `.safetensors`, `.pth`, `.pt` and `.bin` files are
torchvision state dicts when their keys are torchvision's (conv_proj, encoder.pos_embedding), timm
state dicts otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
from pathlib import Path
from typing import Literal

import torch

from vitkit.models.config import as_pair
from vitkit.models.pos_embed import resize_pos_embed
from vitkit.models.vit import VisionTransformer
from vitkit.errors import CheckpointError
from vitkit.weights.google import google_to_vitkit, read_npz
from vitkit.weights.hf import hf_to_vitkit
from vitkit.weights.native import is_native_config, read_native
from vitkit.weights.registry import resolve_checkpoint
from vitkit.weights.state_dict import PartialLoadWarning, load_checked
from vitkit.weights.timm import timm_to_vitkit
from vitkit.weights.torchvision import looks_like_torchvision, torchvision_to_vitkit

Format = Literal["npz", "timm", "hf", "vitkit", "torchvision"]
_TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def detect_format(path: Path) -> Format:
    if path.is_dir():
        if (path / "config.json").is_file():
            return "vitkit" if is_native_config(_read_json(path / "config.json")) else "hf"
        raise CheckpointError(f"{path}: a directory without config.json is no known checkpoint")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix == ".npz":
        return "npz"
    if path.suffix in _TORCH_SUFFIXES:
        return "torchvision" if looks_like_torchvision(_state_dict_keys(path)) else "timm"
    raise CheckpointError(
        f"{path}: cannot tell the checkpoint format from the name; expected a Google .npz, a "
        f"vitkit or Hugging Face directory or a timm state dict ({', '.join(_TORCH_SUFFIXES)}); "
        "pass format="
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
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (pre-zip) pickles cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return []
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return list(state) if isinstance(state, dict) else []


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or of a torch pickle (read with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refuses what is not tensors
        refused = next((line for line in str(error).splitlines() if "GLOBAL" in line), "")
        raise CheckpointError(
            f"{path}: refused: this pickle would build objects other than tensors, which can run "
            f"arbitrary code ({refused.strip() or error}); vitkit loads tensors only. If the "
            "file is trusted, re-save its state dict as .safetensors"
        ) from None
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read the state dict: {error}") from error
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return state


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable: {error}") from error


def _read_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """config.json, the weights, and preprocessor_config.json where the directory has one."""
    hf_config = _read_json(path / "config.json")
    preprocessor_file = path / "preprocessor_config.json"
    preprocessor = _read_json(preprocessor_file) if preprocessor_file.is_file() else None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return hf_config, read_state_dict(path / name), preprocessor
    raise CheckpointError(f"{path}: has neither model.safetensors nor pytorch_model.bin")


def load_model(
    path: str | Path,
    *,
    img_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    format: Format | None = None,
    num_heads: int | None = None,
    strict: bool = True,
) -> VisionTransformer:
    """Build the model a checkpoint describes and load its weights (returned in eval mode).

    path: a file or directory; or the name of released weights ("ViT-B/16@i21k", see
        `vitkit pretrained`), downloaded into $VITKIT_HOME/weights on first use; or a Hugging
        Face hub id ("hf:google/vit-base-patch16-224", or plain "org/name"), fetched into the
        hub's cache. An existing local path always wins.

    img_size: build for this resolution instead of the checkpoint's; the position embeddings
        are resized on the patch grid (the paper's fine-tuning at higher resolution).
    num_classes: replace the head by a new zero-initialised one and drop the pre-logits layer,
        as the paper does for fine-tuning (even when the count equals the checkpoint's).
    format: "npz", "hf", "timm", "torchvision" or "vitkit", when the path does not tell.
    num_heads: for timm and torchvision state dicts whose width is no paper variant's (their
        files omit it).
    strict: True raises a `CheckpointError` listing every missing, unexpected and misshapen key;
        False loads the keys that fit, leaves the others at their initial values and lists them
        all in a `PartialLoadWarning` (for partial loads, e.g. a backbone without its head).
    """
    path = resolve_checkpoint(path)
    format = format or detect_format(path)
    try:
        if format == "npz":
            config, state = google_to_vitkit(read_npz(path))
        elif format == "hf":
            config, state = hf_to_vitkit(*_read_hf_dir(path))
        elif format == "timm":
            config, state = timm_to_vitkit(read_state_dict(path), num_heads=num_heads)
        elif format == "torchvision":
            config, state = torchvision_to_vitkit(read_state_dict(path), num_heads=num_heads)
        elif format == "vitkit":
            config, state = read_native(path)
        else:
            raise CheckpointError(
                f"unknown format {format!r}; expected 'npz', 'hf', 'timm', 'torchvision' or "
                "'vitkit'"
            )
    except CheckpointError as error:
        message = str(error)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None

    if img_size is not None and as_pair(img_size) != config.img_size and "pos_embed" in state:
        target = dataclasses.replace(config, img_size=as_pair(img_size))
        state["pos_embed"] = resize_pos_embed(
            state["pos_embed"],
            new_grid=target.grid_size,
            old_grid=config.grid_size,
            num_prefix_tokens=config.num_prefix_tokens,
            mode=config.pos_embed_interpolation,
        )
        config = target
    model = VisionTransformer(config)
    if report := load_checked(model, state, source=str(path), strict=strict):
        warnings.warn(PartialLoadWarning(f"{path}: loaded partially: {report}"), stacklevel=2)
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model.eval()
