"""Images in, model-ready tensors out: sources, the decode-once cache, loaders, augmentation."""

from vitkit.data.arrays import ArrayDataset
from vitkit.data.augment import AugmentConfig, TrainAugment
from vitkit.data.cifar import load_cifar
from vitkit.data.fewshot import holdout_split, k_shot_indices
from vitkit.data.folder import cached_image_folder, check_same_classes
from vitkit.data.images import IMAGE_EXTENSIONS, DataError, find_images, list_images, load_rgb
from vitkit.data.loader import ArrayLoader
from vitkit.data.model_input import eval_batch, eval_transform
from vitkit.data.shards import ShardDataset, write_shards
from vitkit.data.sources import open_dataset, open_for_model, open_image_by_image, open_train_test
from vitkit.models.preprocessing import Preprocessing

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "ArrayLoader",
    "AugmentConfig",
    "DataError",
    "Preprocessing",
    "ShardDataset",
    "TrainAugment",
    "cached_image_folder",
    "check_same_classes",
    "eval_batch",
    "eval_transform",
    "find_images",
    "holdout_split",
    "k_shot_indices",
    "list_images",
    "load_cifar",
    "load_rgb",
    "open_dataset",
    "open_for_model",
    "open_image_by_image",
    "open_train_test",
    "write_shards",
]
