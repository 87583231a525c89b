"""Images in, model-ready tensors out: finding and decoding image files, and preprocessing."""

from vitkit.data.images import IMAGE_EXTENSIONS, DataError, find_images, list_images, load_rgb
from vitkit.data.preprocessing import Preprocessing

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "Preprocessing",
    "find_images",
    "list_images",
    "load_rgb",
]
