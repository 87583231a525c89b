"""Reading checkpoints of Google, timm and Hugging Face into vitkit models, by path or by name."""

from vitkit.errors import CheckpointError
from vitkit.weights.load import load_model
from vitkit.weights.native import save_pretrained
from vitkit.weights.registry import (
    PretrainedWeights,
    get_pretrained,
    list_pretrained,
    register_pretrained,
    resolve_checkpoint,
)
from vitkit.weights.state_dict import (
    NonFiniteWeightsWarning,
    PartialLoadWarning,
    UnrecordedPoolingWarning,
)

__all__ = [
    "CheckpointError",
    "NonFiniteWeightsWarning",
    "PartialLoadWarning",
    "PretrainedWeights",
    "get_pretrained",
    "list_pretrained",
    "load_model",
    "register_pretrained",
    "resolve_checkpoint",
    "save_pretrained",
    "UnrecordedPoolingWarning",
]
