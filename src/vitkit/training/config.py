"""`TrainConfig` and the named recipes (presets) of the paper's two training stages.

Every field carries its help text and, for numbers, the range it must lie in; `vitkit train
--help` prints both. `TrainConfig` itself checks every field's type, range and choice, so the
Python API and `vitkit train --preset NAME field=value ...` refuse the same values with the same
one-line `ConfigError`. The resolved config is saved in the run directory, and a resumed run must
match it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vitkit.errors import ConfigError
from vitkit.models.config import get_config


@dataclass(frozen=True)
class Range:
    """The values a number field admits: from `low` to `high` (None: unbounded), each end
    included unless marked open. Every float field must also be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)  # rates and decays: 1 would mean "everything"


def _help(text: str, default: Any, allowed: Range | None = None) -> Any:
    return field(default=default, metadata={"help": text, "range": allowed})


# What a run that has started may resume with. Fields that say how to run, not what to compute,
# may differ freely (e.g. sharded on 8 GPUs what one GPU started).
EXECUTION_FIELDS = frozenset({"parallel", "activation_checkpointing", "dist_timeout_seconds"})
# Fields `--force` may change: the checkpoints hold nothing that depends on them (the run's
# length and schedule, optimiser hyperparameters, regularisation, augmentation, cadence, device).
# The others define the model, the data order or the shapes of the saved optimiser/EMA/scaler
# state, so no checkpoint of the run fits another value: that is a new run in another folder.
FORCEABLE_FIELDS = frozenset({
    "steps", "epochs", "budget_seconds", "warmup_steps", "warmup_fraction", "decay", "lr",
    "weight_decay", "beta1", "beta2", "momentum", "grad_clip", "micro_batch_size",
    "label_smoothing", "dropout", "drop_path", "crop_scale_min", "hflip", "randaugment_ops",
    "randaugment_magnitude", "mixup_alpha", "cutmix_alpha", "test_split", "download", "device",
    "compile", "checkpoint_every", "log_every", "eval_every",
})  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training stage: pre-training from scratch, or fine-tuning from `init`."""

    # What to train
    model: str = _help("architecture preset (vitkit models), used when init is empty", "ViT-Ti/16")
    init: str = _help(
        "checkpoint to start from: a vitkit run or weights directory, Google .npz, timm or Hugging "
        "Face weights; its head is replaced by a zero-initialised one (the paper's fine-tuning)",
        "",
    )
    resolution: int = _help("training and evaluation image size in pixels", 224, AT_LEAST_ONE)
    representation_size: int = _help(
        "width of the pre-logits tanh layer (paper's pre-training head); 0 for none",
        0,
        NON_NEGATIVE,
    )
    classifier: Literal["token", "gap"] = _help(
        "read the [class] token or average patches", "token"
    )
    drop_path: float = _help("stochastic depth rate of the last block", 0.0, FRACTION)
    dropout: float = _help("dropout after attention/MLP and on the embeddings", 0.0, FRACTION)

    # Data
    data: str = _help("dataset path or name (see vitkit.data.open_dataset)", "cifar10")
    train_split: str = _help("split to train on", "train")
    test_split: str = _help("split to evaluate top-1 on ('' to skip)", "test")
    download: bool = _help("download a named dataset when it is not in the cache", False)

    # Optimisation
    optimizer: Literal["adamw", "sgd"] = _help("adamw (pre-training) or sgd (fine-tuning)", "adamw")
    # Bounded so that every rate stays a float32 (the optimisers' arithmetic) with room to spare;
    # the largest in use (LARS at batch 32k) are around 10.
    lr: float = _help("peak learning rate", 1e-3, Range(0, 100, low_open=True))
    weight_decay: float = _help(
        "decoupled weight decay as PyTorch's AdamW applies it (param -= lr * wd * param), which "
        "is the paper's 0.1 with Flax's Adam; big_vision/optax's decoupled 'wd' equals lr * this",
        0.1,
        Range(0, 100),
    )
    beta1: float = _help("Adam beta1", 0.9, FRACTION)
    beta2: float = _help("Adam beta2", 0.999, FRACTION)
    momentum: float = _help("SGD momentum", 0.9, FRACTION)
    grad_clip: float = _help("clip the global gradient norm to this (0: off)", 1.0, NON_NEGATIVE)
    batch_size: int = _help("global batch size (images per optimizer step)", 512, AT_LEAST_ONE)
    micro_batch_size: int = _help(
        "images per forward/backward pass on each process: each of N processes takes batch_size "
        "/ N images per step and accumulates them in passes of this many (0, or a share no "
        "larger than this: one pass)",
        0,
        NON_NEGATIVE,
    )
    steps: int = _help(
        "optimizer steps (0: derived from epochs or budget_seconds)", 0, NON_NEGATIVE
    )
    epochs: float = _help("passes over the training set, when steps is 0", 0.0, NON_NEGATIVE)
    budget_seconds: float = _help(
        "when steps and epochs are 0: train for about this long; the step count is fixed from a "
        "short throughput measurement at the start and saved, so resuming is exact",
        0.0,
        NON_NEGATIVE,
    )
    warmup_steps: int = _help("linear warm-up steps", 0, NON_NEGATIVE)
    warmup_fraction: float = _help(
        "linear warm-up as a fraction of all steps, when warmup_steps is 0 (for budgeted runs)",
        0.0,
        FRACTION,
    )
    decay: Literal["cosine", "linear"] = _help("learning-rate decay after warm-up", "cosine")
    label_smoothing: float = _help("label smoothing", 0.0, FRACTION)
    ema_decay: float = _help("exponential moving average of the weights (0: off)", 0.0, FRACTION)

    # Augmentation (batched, on the training device)
    crop_scale_min: float = _help(
        "Inception crop: smallest area fraction (1: no crop)", 0.08, Range(0, 1, low_open=True)
    )
    hflip: bool = _help("random horizontal flips", True)
    randaugment_ops: int = _help("RandAugment: operations per image (0: off)", 0, NON_NEGATIVE)
    # torchvision's RandAugment has 31 magnitude bins, 0 to 30.
    randaugment_magnitude: int = _help("RandAugment: magnitude", 10, Range(0, 30))
    mixup_alpha: float = _help("Mixup alpha (0: off)", 0.0, NON_NEGATIVE)
    cutmix_alpha: float = _help("CutMix alpha (0: off)", 0.0, NON_NEGATIVE)

    # Execution
    seed: int = _help("seed of initialisation, data order and augmentation", 0, NON_NEGATIVE)
    device: str = _help("auto, cpu, cuda or cuda:N", "auto")
    precision: Literal["fp32", "bf16", "fp16"] = _help("autocast precision", "fp32")
    compile: bool = _help("torch.compile the model", False)
    checkpoint_every: int = _help(
        "steps between checkpoints (the last two are kept)", 500, AT_LEAST_ONE
    )
    log_every: int = _help("steps between metric lines and progress-bar updates", 10, AT_LEAST_ONE)
    eval_every: int = _help("steps between evaluations (0: only at the end)", 0, NON_NEGATIVE)

    # Several processes (torchrun); a run may resume with other values of these
    parallel: Literal["ddp", "fsdp"] = _help(
        "with several processes: ddp replicates the model in each; fsdp (FSDP2) shards its "
        "parameters, gradients and optimizer state across them, for models whose training state "
        "does not fit one GPU (ViT-H)",
        "ddp",
    )
    activation_checkpointing: bool = _help(
        "recompute each block's activations in the backward pass instead of keeping them: much "
        "less memory for about a third more compute",
        False,
    )
    dist_timeout_seconds: float = _help(
        "with several processes: how long one waits for the others in a collective before the "
        "run stops with an error (a process that died or hangs)",
        600.0,
        Range(0, 1e7, low_open=True),  # months would be no timeout; 1e300 s overflows timedelta
    )

    def __post_init__(self) -> None:
        problems = [problem for item in dataclasses.fields(self) if (problem := self._check(item))]
        if not problems:  # the combinations, once every field has its type
            problems = self._combination_problems()
        if problems:
            raise ConfigError("Invalid TrainConfig: " + "; ".join(problems))

    def _check(self, item: dataclasses.Field) -> str | None:
        """What is wrong with one field's value (type, choice, range), or None. An int given for
        a float field is stored as a float, so that the saved config compares equal."""
        value, kind = getattr(self, item.name), _FIELD_TYPES[item.name]
        if typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            if value not in choices:
                return f"{item.name} must be one of {', '.join(choices)}, got {value!r}"
            return None
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float and is_number:
            object.__setattr__(self, item.name, value := float(value))
            if not math.isfinite(value):
                return f"{item.name} must be a finite number, got {value}"
        elif kind is int and not (is_number and isinstance(value, int)):
            return f"{item.name} must be an integer, got {value!r}"
        elif kind is float:
            return f"{item.name} must be a number, got {value!r}"
        elif kind is not int and not isinstance(value, kind):
            return f"{item.name} must be a {kind.__name__}, got {value!r}"
        allowed: Range | None = item.metadata["range"]
        if allowed is not None and not allowed.admits(value):
            return f"{item.name} must be {allowed}, got {value!r}"
        return None

    def _combination_problems(self) -> list[str]:
        problems = []
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            problems.append(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        if not (self.steps or self.epochs or self.budget_seconds):
            problems.append("set one of steps, epochs or budget_seconds")
        if problem := _device_problem(self.device):
            problems.append(problem)
        if self.precision == "fp16" and self.device == "cpu":
            problems.append("fp16 autocast needs a GPU; use bf16 or fp32 on the CPU")
        if self.precision == "fp16" and self.parallel == "fsdp":
            problems.append(
                "fp16 with fsdp would need a gradient scaler that agrees across shards; use bf16"
            )
        if not self.init and (problem := self._model_problem()):
            problems.append(problem)
        return problems

    def _model_problem(self) -> str | None:
        """Whether `model` names a preset that can be built at `resolution` (a checkpoint given
        as `init` is checked when it is read)."""
        try:
            get_config(self.model, img_size=self.resolution)
        except KeyError as error:
            return f"model: {error.args[0]}"
        except ConfigError as error:
            reason = str(error).removeprefix("Invalid ViTConfig: ")
            return f"model {self.model} at resolution {self.resolution}: {reason}"
        return None

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps of a run of `total_steps`."""
        return self.warmup_steps or round(self.warmup_fraction * total_steps)

    @property
    def accumulation(self) -> int:
        """Forward/backward passes per optimizer step of a single process."""
        return self.micro_batches(processes=1)

    def micro_batches(self, *, processes: int) -> int:
        """Forward/backward passes per optimizer step in each of `processes` processes. Each takes
        batch_size / processes images of the global batch, in passes of micro_batch_size (one
        pass when its share is no larger), so the optimizer steps on the same global batch for
        any number of processes; ConfigError when the batch does not split evenly."""
        share, rest = divmod(self.batch_size, processes)
        if rest:
            raise ConfigError(
                f"the global batch_size {self.batch_size} does not split evenly over {processes} "
                "processes"
            )
        if not self.micro_batch_size or share <= self.micro_batch_size:
            return 1
        if share % self.micro_batch_size:
            raise ConfigError(
                f"each of {processes} processes takes {share} images per step, which do not "
                f"split into micro-batches of {self.micro_batch_size}"
            )
        return share // self.micro_batch_size


# Fields that choose the architecture of a model built from scratch; with `init`, the checkpoint
# decides them (the run says so, and records the architecture it trained).
ARCHITECTURE_FIELDS = ("model", "representation_size", "classifier")
# The declared type of every field (resolved once: the annotations are strings under
# `from __future__ import annotations`).
_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


def parse_overrides(base: TrainConfig, assignments: list[str]) -> TrainConfig:
    """`base` with "field=value" assignments applied, each value parsed by the field's type."""
    fields = {item.name for item in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        if not separator:
            raise ConfigError(f"expected field=value, got {assignment!r}")
        if name not in fields:
            raise ConfigError(f"unknown field {name!r}; fields: {', '.join(sorted(fields))}")
        changes[name] = _parse(text, _FIELD_TYPES[name])
    return dataclasses.replace(base, **changes)


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _parse(text: str, kind: Any) -> Any:
    """The value `text` stands for under a field's type. Text that is no such value is passed on
    as it is, so that `TrainConfig` refuses it with the message the Python API gives too."""
    if kind is bool:
        return _BOOLEANS.get(text.lower(), text)
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            return text
    return text


def _device_problem(name: str) -> str | None:
    """Whether `name` is a device training can run on: auto, cpu, cuda or cuda:N."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        return f"device must be auto, cpu, cuda or cuda:N, got {name!r}"
    return None


def describe_fields() -> str:
    """One line per field with its type, default and help: the `vitkit train --help` epilog."""
    lines = []
    for item in dataclasses.fields(TrainConfig):
        kind = _FIELD_TYPES[item.name]
        type_name = (
            "|".join(typing.get_args(kind)) if typing.get_origin(kind) is Literal else kind.__name__
        )
        allowed = f", {item.metadata['range']}" if item.metadata["range"] else ""
        lines.append(
            f"  {item.name}={item.default!r} ({type_name}{allowed}): {item.metadata['help']}"
        )
    return "\n".join(lines)


# The main job's first stage (vitkit demo): pre-train R+ViT-CIFAR/4 (the paper's hybrid with the
# ResNet root only; it learns faster than the plain ViT-CIFAR/4 at this budget) from scratch on
# CIFAR-10 at 16 px for a time budget. Command: vitkit demo (or vitkit train --preset
# demo-pretrain --data ../shared/data/cifar10-jpg.tar.gz --out runs/pre).
# Hardware: 2 CPU cores. Expected: see benchmarks/RESULTS.md (demo).
_DEMO_PRETRAIN = TrainConfig(
    model="R+ViT-CIFAR/4",
    classifier="gap",
    resolution=16,
    optimizer="adamw",
    lr=1e-3,
    weight_decay=0.05,
    batch_size=128,
    budget_seconds=470.0,
    warmup_fraction=0.05,
    decay="cosine",
    label_smoothing=0.1,
    # No Inception crop (whole image, flips only): at a budget of a few epochs it gave 52.0% vs
    # 48.9% with crops of >= 35% of the area (800 steps, benchmarks/demo_recipes.py).
    crop_scale_min=1.0,
    checkpoint_every=100,
)
# The main job's second stage: fine-tune the demo-pretrain run at 32 px (init=its directory).
_DEMO_FINETUNE = dataclasses.replace(
    _DEMO_PRETRAIN, model="ViT-Ti/16", classifier="token", resolution=32, budget_seconds=155.0,
    checkpoint_every=50,
)  # fmt: skip
# What the GPU recipe changes in both stages.
_GPU_CHANGES: dict[str, Any] = dict(
    batch_size=512, mixup_alpha=0.8, cutmix_alpha=1.0, drop_path=0.1, precision="bf16"
)


PRESETS: dict[str, TrainConfig] = {
    # The paper's pre-training (Appendix B.1): Adam(0.9, 0.999), weight decay 0.1, batch 4096,
    # linear warm-up of 10k steps then linear decay, dropout 0.1 on ImageNet-21k.
    # Command: vitkit train --preset pretrain --data IMAGENET --out runs/pretrain
    # Hardware: many accelerators (ViT-B/16 on ImageNet-21k is ~30 TPUv3-core-days per 90 epochs).
    "pretrain": TrainConfig(
        model="ViT-B/16",
        resolution=224,
        representation_size=768,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.1,
        batch_size=4096,
        micro_batch_size=256,
        epochs=90,
        warmup_steps=10_000,
        decay="linear",
        dropout=0.1,
        test_split="",
    ),
    # The paper's fine-tuning (Appendix B.1.1): SGD momentum 0.9, no weight decay, gradient clipping
    # at norm 1, cosine decay, batch 512, at 384 px, the head replaced by a zero-initialised one.
    # Command: vitkit train --preset finetune --init ViT-B_16.npz --data cifar10 --out runs/ft
    # Hardware: one GPU; expected: ~98-99% top-1 on CIFAR-10 from ImageNet-21k weights (Table 2).
    "finetune": TrainConfig(
        resolution=384,
        optimizer="sgd",
        lr=0.01,
        weight_decay=0.0,
        momentum=0.9,
        grad_clip=1.0,
        batch_size=512,
        micro_batch_size=64,
        steps=10_000,
        warmup_steps=500,
        decay="cosine",
        crop_scale_min=0.08,
    ),
    "demo-pretrain": _DEMO_PRETRAIN,
    "demo-finetune": _DEMO_FINETUNE,
    # The main job on a GPU (vitkit demo --hardware gpu, chosen automatically when CUDA is
    # there): the CPU recipe with a 4.8M-parameter model, batch 512, bf16 autocast, Mixup/CutMix
    # and stochastic depth, for the hundreds of epochs a GPU fits in the budget. Expected: 90%+
    # top-1 after fine-tuning; NOT measured yet (no GPU was available to the session that wrote it).
    "demo-gpu-pretrain": dataclasses.replace(
        _DEMO_PRETRAIN, model="ViT-CIFAR-L/4", checkpoint_every=1000, **_GPU_CHANGES
    ),
    "demo-gpu-finetune": dataclasses.replace(
        _DEMO_FINETUNE, lr=5e-4, checkpoint_every=500, **_GPU_CHANGES
    ),
    # Seconds on a CPU, for tests: a 2-block model of width 64 on 16 px images.
    "tiny": TrainConfig(
        model="ViT-Test/8",
        resolution=16,
        batch_size=32,
        steps=6,
        warmup_steps=2,
        lr=1e-3,
        checkpoint_every=2,
        log_every=1,
        crop_scale_min=0.5,
    ),
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
