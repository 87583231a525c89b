"""Images in, model-ready tensors out: sources, the decode-once cache, loaders, augmentation."""

from vitkit.data.arrays import ArrayDataset
from vitkit.data.cifar import load_cifar
from vitkit.data.download import default_cache_dir, download
from vitkit.data.images import IMAGE_EXTENSIONS, DataError, find_images, list_images, load_rgb
from vitkit.data.loader import ArrayLoader
from vitkit.data.preprocessing import Preprocessing
from vitkit.data.shards import ShardDataset, write_shards
from vitkit.data.transforms import AugmentConfig, TrainAugment, eval_batch

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "ArrayLoader",
    "AugmentConfig",
    "DataError",
    "Preprocessing",
    "ShardDataset",
    "TrainAugment",
    "default_cache_dir",
    "download",
    "eval_batch",
    "find_images",
    "list_images",
    "load_cifar",
    "load_rgb",
    "write_shards",
]
