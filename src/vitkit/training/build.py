"""The parts of a run, each built from a `TrainConfig`: device, data, model, training state,
augmentation, loader and step (torchtitan's "train spec" idea, without a registry)."""

from __future__ import annotations

import dataclasses
import sys

import torch

from vitkit import devices
from vitkit.data.arrays import ArrayDataset
from vitkit.data.augment import AugmentConfig, TrainAugment
from vitkit.data.loader import ArrayLoader
from vitkit.data.sources import open_dataset, open_train_test
from vitkit.errors import TrainingError
from vitkit.models.config import ViTConfig
from vitkit.models.vit import VisionTransformer, create_model
from vitkit.training import parallel
from vitkit.training.config import ARCHITECTURE_FIELDS, TrainConfig
from vitkit.training.distributed import Launch, World
from vitkit.training.optim import build_optimizer
from vitkit.training.state import TrainState
from vitkit.training.step import TrainStep
from vitkit.weights.load import load_model

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, launched: Launch | None = None) -> torch.device:
    """The training device (vitkit.devices); with several processes on GPUs, the GPU of this
    one's LOCAL_RANK."""
    device = devices.resolve_device(name)
    if device.type == "cuda" and launched is not None and launched.world_size > 1:
        if device.index is not None:
            raise TrainingError(
                f"device {name!r}: with several processes each uses the GPU of its LOCAL_RANK; "
                "give device=cuda or auto"
            )
        device = torch.device("cuda", launched.local_rank)
    return device


def open_data(config: TrainConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The training set and, when `test_split` is set, the test set."""
    if config.test_split:
        train_set, test_set = open_train_test(
            config.data,
            train_split=config.train_split,
            test_split=config.test_split,
            download=config.download,
        )
    else:
        train_set = open_dataset(config.data, split=config.train_split, download=config.download)
        test_set = None
    if not isinstance(train_set, ArrayDataset):
        raise TrainingError(f"{config.data}: training reads map-style datasets, not shards (yet)")
    if len(train_set) < config.batch_size:
        raise TrainingError(
            f"{config.data}: {len(train_set)} training images do not fill one batch of "
            f"{config.batch_size}; lower batch_size"
        )
    return train_set, test_set


def build_model(config: TrainConfig, num_classes: int) -> VisionTransformer:
    """A new model of `config.model`, or the `config.init` checkpoint at `config.resolution` with
    a new zero-initialised head and no pre-logits layer (the paper's fine-tuning)."""
    if not config.init:
        return create_model(
            config.model,
            img_size=config.resolution,
            num_classes=num_classes,
            representation_size=config.representation_size or None,
            classifier=config.classifier,
            class_token=config.classifier == "token",
            drop_path=config.drop_path,
            dropout=config.dropout,
        )
    loaded = load_model(config.init, img_size=config.resolution, num_classes=num_classes)
    model_config = dataclasses.replace(
        loaded.config, drop_path=config.drop_path, dropout=config.dropout
    )
    model = VisionTransformer(model_config)
    model.load_state_dict(loaded.state_dict())
    return model


def build_state(
    config: TrainConfig, *, num_classes: int, device: torch.device, world: World
) -> TrainState:
    """Model (initialised from `config.seed`, parallelised in place), EMA, optimizer and loss
    scaler at step 0."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_model(config, num_classes=num_classes).to(device)
    ema = None
    if config.ema_decay:  # copied before parallelize: a sharded model cannot be copied
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
    parallel.parallelize(model, config=config, world=world)
    if ema is not None and parallel.is_sharded(model):
        parallel.shard(ema.module, precision=config.precision)  # averaged shard by shard
    optimizer = build_optimizer(model, config)  # after sharding: it steps on this rank's shards
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    return TrainState(model, optimizer, ema, scaler)


def report_architecture(config: TrainConfig, model_config: ViTConfig) -> None:
    """A fine-tuning run's architecture is its init checkpoint's: say which fields are unused."""
    ignored = ", ".join(f"{name}={getattr(config, name)!r}" for name in ARCHITECTURE_FIELDS)
    print(
        f"the architecture is init's ({model_config.describe()}); not used: {ignored}",
        file=sys.stderr,
    )


def build_augment(
    config: TrainConfig, model_config: ViTConfig, *, num_classes: int
) -> TrainAugment:
    """The batched training augmentation `config` asks for, at the model's resolution and
    normalisation."""
    return TrainAugment(
        AugmentConfig(
            resolution=model_config.img_size,
            num_classes=num_classes,
            mean=model_config.mean,
            std=model_config.std,
            crop_scale=(config.crop_scale_min, 1.0) if config.crop_scale_min < 1 else None,
            hflip=config.hflip,
            randaugment=(
                (config.randaugment_ops, config.randaugment_magnitude)
                if config.randaugment_ops
                else None
            ),
            mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha,
            label_smoothing=config.label_smoothing,
        )
    )


def build_loader(config: TrainConfig, train_set: ArrayDataset, world: World) -> ArrayLoader:
    """This process's slices of the global batches, reshuffled each epoch from `config.seed`."""
    return ArrayLoader(
        train_set,
        batch_size=config.batch_size // world.size,
        shuffle=True,
        drop_last=True,
        seed=config.seed,
        rank=world.rank,
        world_size=world.size,
    )


def build_step(
    config: TrainConfig, augment: TrainAugment, *, device: torch.device, world: World, run_dir
) -> TrainStep:
    return TrainStep(
        augment=augment,
        device=device,
        world=world,
        seed=config.seed,
        micro_batches=config.micro_batches(processes=world.size),
        grad_clip=config.grad_clip,
        autocast_dtype=AUTOCAST_DTYPES.get(config.precision),
        checkpoint_folder=run_dir.checkpoints,
    )
