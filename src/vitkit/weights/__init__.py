"""Reading checkpoints of Google, timm and Hugging Face into vitkit models."""

from vitkit.weights.errors import CheckpointError
from vitkit.weights.load import load_model
from vitkit.weights.native import save_pretrained

__all__ = ["CheckpointError", "load_model", "save_pretrained"]
