"""Checkpoints on the Hugging Face hub, fetched with `huggingface_hub.snapshot_download`.

The hub client keeps its own cache ($HF_HOME, shared with transformers and timm, so a model that
one of them downloaded is not fetched again) and honours $HF_ENDPOINT and $HF_TOKEN. Only the
files `load_model` reads are fetched: the configs and one weights file, safetensors preferred.
Offline mode ($HF_HUB_OFFLINE or $VITKIT_OFFLINE) reads the cache and never the network; both are
read at call time, where the hub client reads its own variable once at import. A malformed id, or
any failure of the client (a missing repository, a malformed reply from $HF_ENDPOINT), is a
one-line CheckpointError naming the id.
"""

from __future__ import annotations

import os
from pathlib import Path

from vitkit.download import is_offline
from vitkit.errors import CheckpointError
from vitkit.weights.files import read_json_object

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
    name = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision is not None else "")
    _check_id(name, repo_id, revision)
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
    # The client raises OSErrors and ValueErrors, and a malformed reply from $HF_ENDPOINT can make
    # it raise anything (a KeyError for a missing field): all are about the request, not vitkit.
    except Exception as error:  # noqa: BLE001
        if offline:
            raise CheckpointError(
                f"{name}: not in the Hugging Face cache and offline mode is set (HF_HUB_OFFLINE or "
                f"VITKIT_OFFLINE), so it is not downloaded; fetch it on a machine with network "
                f"(`hf download {repo_id}`) and copy the cache ($HF_HOME, default "
                f"~/.cache/huggingface) here, or pass the path of a local copy"
            ) from None
        raise CheckpointError(
            f"{name}: cannot fetch it from the hub: {type(error).__name__}: {_one_line(error)}"
        ) from None
    return _checkpoint_in(directory)


def _check_id(name: str, repo_id: str, revision: str | None) -> None:
    """Refuse a malformed id before the client sees it: offline, its error would otherwise read
    as "not in the cache", and online it would cost a request."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise CheckpointError(
            f"{name}: not a Hugging Face hub id: {_one_line(error)} Expected hf:ORG/NAME or "
            "hf:ORG/NAME@REVISION"
        ) from None
    if revision is not None and not revision.strip():
        raise CheckpointError(
            f"{name}: no revision after '@'; expected hf:ORG/NAME@REVISION (a branch, tag or "
            "commit)"
        )


def _one_line(error: BaseException) -> str:
    """The hub client's message, which spans several lines, as one."""
    return " ".join(str(error).split())


def _checkpoint_in(directory: Path) -> Path:
    """What `load_model` should read in a downloaded repository: the directory for transformers,
    the weights file for timm (whose config.json names an "architecture", not a "model_type").

    config.json is read as a local one is, within its size cap: a repository's is a stranger's
    file, and one of gigabytes read whole would exhaust memory."""
    config_file = directory / "config.json"
    try:
        config = read_json_object(config_file) if config_file.is_file() else {}
    except CheckpointError:  # too large, not JSON, or no object
        return directory  # load_model reports the broken file
    if "architecture" in config and "model_type" not in config:
        for weights in _WEIGHTS:
            if (directory / weights).is_file():
                return directory / weights
    return directory
