"""The parts of a run, each built from a `TrainConfig`: device, data, model, training state,
augmentation, loader and step (torchtitan's "train spec" idea, without a registry)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vitkit import devices
from vitkit.data.arrays import ArrayDataset
from vitkit.data.augment import AugmentConfig, TrainAugment
from vitkit.data.fewshot import nested_fraction
from vitkit.data.fitting import COVER, WITHIN, Fit
from vitkit.data.folder import WHOLE_TREE, MixedSizes, check_same_classes, is_class_tree
from vitkit.data.loader import ArrayLoader
from vitkit.data.sources import open_dataset, open_for_model
from vitkit.errors import ConfigError, TrainingError
from vitkit.evaluation.input_forms import SQUARE, PackedImages
from vitkit.models.config import ViTConfig, get_config
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer
from vitkit.training import parallel
from vitkit.training.compiling import FirstCompileLimit
from vitkit.training.config import (
    ARCHITECTURE_FIELDS,
    TrainConfig,
    init_settings,
    model_field_changes,
)
from vitkit.training.distributed import Launch, World
from vitkit.training.optim import build_optimizer
from vitkit.training.run_dir import RunDir
from vitkit.training.state import TrainState
from vitkit.training.step import TrainStep
from vitkit.training.tasks import TASKS, TrainedModel
from vitkit.training.validation import Validation
from vitkit.weights.load import load_model

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# precision=auto on a CPU with native bf16: bf16 from this width (ViT-Ti) up, fp32 below it:
# measured 1.47x (ViT-Ti/16) and 1.62x (ViT-S/16) faster at 224 px, but 0.71x for the demo's
# width-128 model at 16 px (benchmarks/RESULTS.md, 2026-12-01).
AUTO_BF16_MIN_WIDTH = 192
# The share of each class held out to validate on when a folder has no splits and val_fraction
# says none: timm's and Keras' usual 10 to 20%, at the low end for the small folders it is for.
VALIDATION_FRACTION = 0.1


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


def open_split(config: TrainConfig, split: str) -> ArrayDataset:
    """The training images of `split`: each decoded at `data_size` when set (resized and
    centre-cropped, or with max_tokens shrunk whole within it), else as stored; a folder whose
    images differ in size is then decoded with each image whole within `resolution` px on a
    canvas (never enlarged: the crops of small images see every pixel they have), said in one
    line."""
    size = (config.data_size, config.data_size) if config.data_size else None
    fit = WITHIN if config.max_tokens and size is not None else COVER
    try:
        dataset = _open_map_style(config, split, size, fit)
    except MixedSizes:
        if size is not None:
            raise
        side = config.resolution or _init_resolution(config)
        size = (side, side)
        print(
            f"{config.data} ({split}): the images differ in size; each is decoded whole within "
            f"{size[0]}x{size[1]} px (data_size=N sets the size)",
            file=sys.stderr,
        )
        dataset = _open_map_style(config, split, size, WITHIN)
    return dataset


def _init_resolution(config: TrainConfig) -> int:
    """The side of the init checkpoint's images (resolution 0 means it)."""
    return load_model(config.init, **init_settings(config.init_settings)).config.img_size[0]


def _open_map_style(
    config: TrainConfig, split: str, size: tuple[int, int] | None, fit: Fit
) -> ArrayDataset:
    dataset = open_dataset(config.data, split=split, image_size=size, fit=fit,
                           download=config.download, skip_bad=config.skip_bad)  # fmt: skip
    if not isinstance(dataset, ArrayDataset):
        raise TrainingError(f"{config.data}: training reads map-style datasets, not shards")
    return dataset


@dataclass(frozen=True)
class Splits:
    """Which images a run trains on, validates on and is tested on."""

    train: str  # the split trained on: a folder name, or WHOLE_TREE
    test: str  # '' for none
    validation_fraction: float  # of each class's training images held out (0: none)


def check_resolution(config: TrainConfig) -> None:
    """Refuse resolution 0 (the init checkpoint's own, as the transfer preset says) without an
    init, before any image is read."""
    if not config.resolution and not config.init:
        raise ConfigError(
            "resolution=0 means the init checkpoint's own: set init=CHECKPOINT (the model to "
            "fine-tune), or a resolution"
        )


def resolve_splits(config: TrainConfig) -> Splits:
    """The run's splits: the config's, or for a folder of class folders with no train split, the
    whole tree trained on with `val_fraction` (else VALIDATION_FRACTION) of each class held out
    to validate on (`describe_splits` says so)."""
    data = Path(config.data)
    if data.is_dir() and not (data / config.train_split).is_dir() and is_class_tree(data):
        test = config.test_split if (data / config.test_split).is_dir() else ""
        return Splits(WHOLE_TREE, test, config.val_fraction or VALIDATION_FRACTION)
    if config.keep_best and not config.val_fraction:
        raise TrainingError(
            "keep_best chooses the best weights on a validation split: set val_fraction (the "
            "test split is never used to choose)"
        )
    return Splits(config.train_split, config.test_split, config.val_fraction)


def describe_splits(config: TrainConfig, splits: Splits) -> str | None:
    """One line on splits the config does not name itself (a tree without splits)."""
    if splits.train != WHOLE_TREE:
        return None
    return (
        f"{config.data}: class folders without a {config.train_split}/ folder: training on them, "
        f"{splits.validation_fraction:.0%} of each class held out (seed {config.seed}) to "
        "validate on (val_fraction sets the share)"
    )


@dataclass(frozen=True)
class HeldOut:
    """The images a run is evaluated on, read as every command reads them for its model
    (`open_for_model`), so that the run's accuracies are the ones `vitkit eval` and `classify`
    give."""

    validation: ArrayDataset | None
    test: ArrayDataset | None
    validation_record: dict[str, object] | None  # for train_config.json


def open_data(config: TrainConfig, splits: Splits) -> tuple[ArrayDataset, Validation | None]:
    """The training set (`open_split` of `splits.train`, less the validation images, cut to
    `train_fraction` of each class) and which of the split's images are held out."""
    pool = open_split(config, splits.train)
    train_set, validation = pool, None
    if splits.validation_fraction:
        validation = Validation(splits.train, splits.validation_fraction, config.seed)
        train_set = pool.subset(validation.indices(pool.labels, train=True))
    if config.train_fraction < 1:
        chosen = nested_fraction(
            train_set.labels, config.train_fraction, num_classes=len(train_set.classes)
        )
        train_set = train_set.subset(chosen)
    if len(train_set) < config.batch_size:
        raise TrainingError(
            f"{config.data}: {len(train_set)} training images do not fill one batch of "
            f"{config.batch_size}; lower batch_size"
        )
    return train_set, validation


def open_held_out(
    config: TrainConfig,
    splits: Splits,
    classes: Sequence[str],
    validation: Validation | None,
    preprocessing: Preprocessing,
) -> HeldOut:
    """The validation images and the test split, read for a model with `preprocessing`; their
    classes must be the training set's `classes`."""
    options = dict(skip_bad=config.skip_bad, download=config.download)
    test_set = validation_set = record = None
    if splits.test:
        test_set = open_for_model(config.data, splits.test, preprocessing, **options)
        check_same_classes(classes, test_set.classes, where=config.data)
    if validation is not None:
        whole_split = open_for_model(config.data, validation.split, preprocessing, **options)
        validation_set = validation.held_out(whole_split)
        record = validation.record(validation_set)
    return HeldOut(validation_set, test_set, record)


def build_model(config: TrainConfig, num_classes: int) -> TrainedModel:
    """A new model of `config.model` for `config.task` (training/tasks.py), or the `config.init`
    checkpoint at `config.resolution` (0: its own) with a new zero-initialised head and no
    pre-logits layer (the paper's fine-tuning)."""
    # FlexiViT training runs the model at other patch sizes, and NaViT's at every image's own
    # size; a model that already does keeps it.
    flexible = {"dynamic_patch_size": True} if config.patch_size_choices else {}
    if config.max_tokens:
        flexible["dynamic_img_size"] = True
    if not config.init:
        task = TASKS[config.task]
        architecture = get_config(
            config.model,
            **model_field_changes(config.model_fields),
            img_size=config.resolution,
            num_classes=num_classes if task.classifies else 0,
            representation_size=config.representation_size or None,
            classifier=config.classifier,
            class_token=config.classifier == "token",
            drop_path=config.drop_path,
            dropout=config.dropout,
            **flexible,
        )
        return task.model(architecture)
    loaded = load_model(config.init, img_size=config.resolution or None, num_classes=num_classes,
                        **init_settings(config.init_settings))  # fmt: skip
    model_config = dataclasses.replace(
        loaded.config, drop_path=config.drop_path, dropout=config.dropout, **flexible
    )
    model = VisionTransformer(model_config, preprocessing=loaded.preprocessing)
    model.load_state_dict(loaded.state_dict())
    return model


def new_model(config: TrainConfig, *, num_classes: int, device: torch.device) -> TrainedModel:
    """`build_model` initialised from `config.seed`, on `device`; the global random streams are
    left as they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return build_model(config, num_classes=num_classes).to(device)


def resolve_precision(
    requested: str, device: torch.device, architecture: ViTConfig
) -> tuple[str, str]:
    """(precision, why): `requested` itself, or for "auto" bf16 where it is native and pays,
    fp32 elsewhere. On a CPU, bf16 autocast pays only for wide models: its casts cost more than
    the small matmuls of a narrow one save (benchmarks/RESULTS.md, precision)."""
    if requested != "auto":
        return requested, "asked for"
    native = devices.native_bf16(device)
    if native is None:
        return "fp32", f"auto: bf16 is not native on this {device.type}"
    if device.type == "cuda":
        return "bf16", f"auto: {native}"
    if architecture.width >= AUTO_BF16_MIN_WIDTH:
        return "bf16", f"auto: {native}, width {architecture.width} >= {AUTO_BF16_MIN_WIDTH}"
    return "fp32", (
        f"auto: {native}, but width {architecture.width} < {AUTO_BF16_MIN_WIDTH}, where the "
        "casts cost more than bf16 saves"
    )


def build_state(
    config: TrainConfig,
    model: TrainedModel,
    *,
    precision: str,
    device: torch.device,
    world: World,
) -> TrainState:
    """`model` parallelised in place, its EMA, optimizer and loss scaler, at step 0."""
    ema = None
    if config.ema_decay:  # copied before parallelize: a sharded model cannot be copied
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
    parallel.parallelize(model, config=config, world=world, precision=precision)
    if ema is not None and parallel.is_sharded(model):
        parallel.shard(ema.module, precision=precision)  # averaged shard by shard
    optimizer = build_optimizer(model, config)  # after sharding: it steps on this rank's shards
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return TrainState(model, optimizer, ema, scaler)


def report_architecture(config: TrainConfig, model_config: ViTConfig) -> None:
    """A fine-tuning run's architecture is its init checkpoint's: say which fields are unused."""
    ignored = ", ".join(f"{name}={getattr(config, name)!r}" for name in ARCHITECTURE_FIELDS)
    print(
        f"the architecture is init's ({model_config.describe()}); not used: {ignored}",
        file=sys.stderr,
    )


def build_augment(config: TrainConfig, model: TrainedModel, *, num_classes: int) -> TrainAugment:
    """The batched training augmentation `config` asks for, at the resolution and normalisation
    of the model's preprocessing record (its weights' own with init=, else Google's), or at
    `max_tokens` of the model's patches."""
    preprocessing = model.preprocessing
    return TrainAugment(
        AugmentConfig(
            resolution=preprocessing.resolution,
            num_classes=num_classes,
            mean=preprocessing.mean,
            std=preprocessing.std,
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
            token_budget=(
                (model.config.total_stride, config.max_tokens) if config.max_tokens else None
            ),
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
    config: TrainConfig,
    augment: TrainAugment,
    *,
    precision: str,
    device: torch.device,
    world: World,
    run_dir: RunDir,
) -> TrainStep:
    """The optimizer step of `config` at `precision` (resolved: not "auto")."""
    if config.max_tokens and world.distributed:
        raise ConfigError(
            "max_tokens: packed training runs in one process (DDP and FSDP wrap the model's "
            "forward, which packing bypasses)"
        )
    return TrainStep(
        augment=augment,
        loss=TASKS[config.task].loss,
        device=device,
        world=world,
        seed=config.seed,
        form=PackedImages(config.max_tokens, keep=config.token_keep)
        if config.max_tokens
        else SQUARE,
        patch_sizes=config.patch_size_choices,
        micro_batches=config.micro_batches(processes=world.size),
        grad_clip=config.grad_clip,
        autocast_dtype=AUTOCAST_DTYPES.get(precision),
        checkpoint_folder=run_dir.checkpoints,
        # All processes must agree on compiling, and only the alarm of one process is reliable.
        first_compile=FirstCompileLimit(0 if world.distributed else config.compile_time_limit),
    )
