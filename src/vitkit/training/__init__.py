"""Training: the paper's pre-training and fine-tuning recipes applied to a finished model, with
atomic checkpoints and exact resumption. `models/` stays free of training code."""

from vitkit.training.checkpoint import load_latest_checkpoint, save_checkpoint
from vitkit.training.config import PRESETS, TrainConfig, get_preset, parse_overrides
from vitkit.training.loop import TrainingError, train

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainingError",
    "get_preset",
    "load_latest_checkpoint",
    "parse_overrides",
    "save_checkpoint",
    "train",
]
