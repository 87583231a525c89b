"""vitkit: Vision Transformers as in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021).

import vitkit
model = vitkit.create_model("ViT-B/16", num_classes=1000, img_size=224)
model = vitkit.load_model("ViT-B_16.npz", img_size=384, num_classes=10)
model = vitkit.load_model("ViT-B/16@i21k", num_classes=10)  # downloaded on first use
model = vitkit.load_model("ViT-B/16@i21k", patch_size=8)  # kernel resampled (FlexiViT)
logits = model(images)  # images (N, C, H, W) -> (N, num_classes)
"""

from vitkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DownloadError,
    TrainingError,
    VitkitError,
)
from vitkit.models import (
    Preprocessing,
    VisionTransformer,
    ViTConfig,
    create_model,
    get_config,
    list_models,
    resample_patch_embed,
    resize_pos_embed,
)
from vitkit.weights import list_pretrained, load_model, save_pretrained

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "Preprocessing",
    "TrainingError",
    "VitkitError",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "get_config",
    "list_models",
    "list_pretrained",
    "load_model",
    "resample_patch_embed",
    "resize_pos_embed",
    "save_pretrained",
]
