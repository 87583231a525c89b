"""Reading checkpoints of Google, timm, Hugging Face and torchvision into vitkit models, by path or
by name, and writing them back; the warnings a reader gives where a file cannot say something."""

from vitkit.errors import CheckpointError
from vitkit.weights.hf_clip import ImageTowerOnlyWarning
from vitkit.weights.hf_siglip import UnpooledTowerWarning
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
    UnrecordedActivationWarning,
    UnrecordedPoolingWarning,
    UnrecordedSettingWarning,
)

__all__ = [
    "CheckpointError",
    "ImageTowerOnlyWarning",
    "NonFiniteWeightsWarning",
    "PartialLoadWarning",
    "PretrainedWeights",
    "get_pretrained",
    "list_pretrained",
    "load_model",
    "register_pretrained",
    "resolve_checkpoint",
    "save_pretrained",
    "UnpooledTowerWarning",
    "UnrecordedActivationWarning",
    "UnrecordedPoolingWarning",
    "UnrecordedSettingWarning",
]
