"""Training: the paper's pre-training and fine-tuning recipes applied to a finished model, with
atomic checkpoints and exact resumption. `models/` stays free of training code."""

from vitkit.errors import TrainingError
from vitkit.training.checkpoint import load_latest_checkpoint, save_checkpoint
from vitkit.training.config import TrainConfig, parse_overrides
from vitkit.training.presets import PRESETS, get_preset
from vitkit.training.summary import TrainSummary
from vitkit.training.trainer import train

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainSummary",
    "TrainingError",
    "get_preset",
    "load_latest_checkpoint",
    "parse_overrides",
    "save_checkpoint",
    "train",
]
