"""The Vision Transformer, its configuration and the registry of named architectures."""

from vitkit.models.config import PRESETS, ViTConfig, get_config, list_models
from vitkit.models.patch_resample import resample_patch_embed
from vitkit.models.pos_embed import resize_pos_embed
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer, create_model

__all__ = [
    "PRESETS",
    "Preprocessing",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "get_config",
    "list_models",
    "resample_patch_embed",
    "resize_pos_embed",
]
