"""Reading checkpoint files from strangers within bounds: JSON configs, zip directories and state
dict files, each refused with a CheckpointError naming the file rather than read at any cost.

A config.json is parsed whole, so its size is capped before it is read. An archive (.npz, or a
torch .pth, which is a zip) declares each member's inflated size in its directory, and its readers
allocate that much: a few megabytes of deflated zeros can declare gigabytes, so the directory is
checked against the archive's own size before any member is inflated. A state dict file is read
without running code (safetensors, or torch.load(weights_only=True)) and must hold names mapped to
dense tensors (whose dtypes are checked where they load: `state_dict.check_float_dtypes`). What
training code wraps around a state dict (a checkpoint's "model" entry, DDP's "module." prefix) is
taken off here too.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from vitkit.errors import CheckpointError
from vitkit.io import read_capped, regular_file

# The largest config.json read: a Hugging Face config with the 21,843 labels of ImageNet-21k in
# id2label and label2id is about 1.5 MB; parsing costs up to ~20x the text in memory.
MAX_JSON_BYTES = 16 << 20
# Weights are random-looking floats that deflate barely at all, so an archive whose members
# declare a hundred times its size is mostly zeros or a decompression bomb. Below the allowance,
# any ratio is accepted: small files of zeros (a fresh head, a test model) are legitimate.
MAX_INFLATION = 100
INFLATION_ALLOWANCE_BYTES = 64 << 20
# Error texts of other libraries quoted in a vitkit error: the first line, at most this long.
MAX_QUOTED_CHARS = 300
# Prefixes that wrappers add to every key of a model's state dict (see `unwrap_key`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def one_line(error: BaseException) -> str:
    """The first line of another library's error message, cut short, to quote in a one-line
    vitkit error (torch and numpy errors can run over many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 3] + "..."


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; a CheckpointError naming the file when it is too large, is no
    JSON (or nests past Python's recursion limit, or has a number of over 4,300 digits), or holds
    something other than an object."""
    text = read_capped(path, MAX_JSON_BYTES, what="config file", error=CheckpointError)
    try:
        content = json.loads(text)
    except (ValueError, RecursionError) as error:  # ValueError: JSON, UTF-8, digits
        raise CheckpointError(f"{path}: unreadable: {one_line(error)}") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a {type(content).__name__}")
    return content


def check_inflation(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse an archive whose members declare far more bytes than the archive holds, before any
    member is inflated (zipfile itself stops each member at its declared size)."""
    declared = sum(info.file_size for info in archive.infolist())
    stored = path.stat().st_size
    if declared > MAX_INFLATION * stored + INFLATION_ALLOWANCE_BYTES:
        raise CheckpointError(
            f"{path}: its members would inflate to {declared} bytes, {declared // stored}x the "
            f"archive's {stored}; refused as a decompression bomb (weights barely compress)"
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or of a torch pickle, which may nest them under
    "state_dict" or "model" (training checkpoints do)."""
    regular_file(path, error=CheckpointError)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch_load(path, mmap=False)
    except (CheckpointError, MemoryError):  # a MemoryError is never mistaken for a bad file
        raise
    except pickle.UnpicklingError as error:  # weights_only refuses what is not tensors
        raise CheckpointError(f"{path}: refused: {_pickle_refusal(error)}") from None
    except Exception as error:  # safetensors' SafetensorError, torch's RuntimeError, EOF, ...
        raise CheckpointError(f"{path}: corrupt or truncated: {one_line(error)}") from None
    return _checked_tensors(unwrap_state_dict(state), path)


def torch_load(path: Path, *, mmap: bool) -> object:
    """`torch.load(weights_only=True)`: tensors and plain containers only, so no code in the file
    runs. A zip-format file is first held to `check_inflation`, as torch inflates its records to
    their declared sizes; `mmap` applies to those (the legacy format cannot be mapped)."""
    if not zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    with zipfile.ZipFile(path) as archive:
        check_inflation(archive, path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def unwrap_state_dict(state: object) -> object:
    """The state dict inside a training checkpoint's "state_dict" or "model" entry, if any."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


def unwrap_key(key: str) -> str:
    """A parameter's name without the prefixes that wrappers add to it when a wrapped model's
    state dict is saved: DistributedDataParallel's "module." and torch.compile's "_orig_mod."
    (in that order, as a compiled model wrapped in DDP names them). The formats whose files are
    saved from training code (timm's, torchvision's) read their keys through it."""
    for prefix in WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def _pickle_refusal(error: pickle.UnpicklingError) -> str:
    """Why torch's weights-only unpickler refused a file, in one line."""
    refused = next((line for line in str(error).splitlines() if "GLOBAL" in line), "")
    if refused:
        return (
            f"this pickle would build objects other than tensors, which can run arbitrary code "
            f"({refused.strip()}); vitkit loads tensors only. If the file is trusted, re-save "
            "its state dict as .safetensors"
        )
    return f"not a torch checkpoint vitkit can read without running code: {one_line(error)}"


def _checked_tensors(state: object, path: Path) -> dict[str, torch.Tensor]:
    """`state` if it maps names to dense floating-point tensors."""
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(f"{path}: does not hold a state dict (names mapped to tensors)")
    for key, tensor in state.items():
        if tensor.layout != torch.strided:
            raise CheckpointError(f"{path}: {key} is a {tensor.layout} tensor, not a dense one")
    return state
