"""Checkpoints on the Hugging Face hub, fetched with `huggingface_hub.snapshot_download`.

The hub client keeps its own cache ($HF_HOME, shared with transformers and timm, so a model that
one of them downloaded is not fetched again) and honours $HF_ENDPOINT and $HF_TOKEN. Only the
files `load_model` reads are fetched: the configs and one weights file, safetensors preferred.
Offline mode ($HF_HUB_OFFLINE or $VITKIT_OFFLINE) reads the cache and never the network; both are
read at call time, where the hub client reads its own variable once at import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vitkit.download import is_offline
from vitkit.errors import CheckpointError

HUB_PREFIX = "hf:"
_TRUE = ("1", "true", "yes", "on")  # the values huggingface_hub reads as set
_CONFIGS = ["config.json", "preprocessor_config.json"]
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference


def hub_offline() -> bool:
    """Whether the hub must not be contacted: $HF_HUB_OFFLINE or $VITKIT_OFFLINE set."""
    return is_offline() or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def fetch_hub(repo_id: str, *, revision: str | None = None) -> Path:
    """The local copy of hub repository `repo_id` ("google/vit-base-patch16-224"): a transformers
    directory, or the weights file of a timm repository (whose config.json is not transformers').
    """
    from huggingface_hub import snapshot_download  # imported here: `import vitkit` stays fast

    offline = hub_offline()
    name = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    try:
        for weights in _WEIGHTS:
            directory = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=[*_CONFIGS, weights],
                    local_files_only=offline,
                )
            )
            if (directory / weights).is_file():
                break
    except (OSError, ValueError) as error:  # hub errors are OSErrors; a bad id a ValueError
        if offline:
            raise CheckpointError(
                f"{name}: not in the Hugging Face cache and offline mode is set (HF_HUB_OFFLINE or "
                f"VITKIT_OFFLINE), so it is not downloaded; fetch it on a machine with network "
                f"(`hf download {repo_id}`) and copy the cache ($HF_HOME, default "
                f"~/.cache/huggingface) here, or pass the path of a local copy"
            ) from None
        raise CheckpointError(f"{name}: cannot fetch it from the hub: {error}") from None
    return _checkpoint_in(directory)


def _checkpoint_in(directory: Path) -> Path:
    """What `load_model` should read in a downloaded repository: the directory for transformers,
    the weights file for timm (whose config.json names an "architecture", not a "model_type")."""
    config_file = directory / "config.json"
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return directory  # load_model reports the broken file
    if isinstance(config, dict) and "architecture" in config and "model_type" not in config:
        for weights in _WEIGHTS:
            if (directory / weights).is_file():
                return directory / weights
    return directory
