"""`TrainConfig`: one training stage, every field typed, ranged and explained (presets.py names
the recipes).

Every field carries its help text and, for numbers, the range it must lie in; `vitkit train
--help` prints both. `TrainConfig` itself checks every field's type, range and choice, so the
Python API and `vitkit train --preset NAME field=value ...` refuse the same values with the same
one-line `ConfigError`. The resolved config is saved in the run directory, and a resumed run must
match it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args

from vitkit.data.token_budget import MOST_TOKENS
from vitkit.devices import device_problem
from vitkit.errors import ConfigError
from vitkit.models.checks import shown
from vitkit.models.complexity import check_buildable
from vitkit.models.config import Classifier, Gelu, ViTConfig, get_config
from vitkit.training.fields import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    Range,
    describe,
    described,
    field_problem,
    parse_assignments,
)
from vitkit.training.tensorboard_log import log_problem

# The largest data_size: 8192 x 8192 is about the pixel limit of one image (data/images.py).
MOST_DATA_SIZE = 8192
# What a run that has started may resume with. Fields that say how to run, not what to compute,
# may differ freely (e.g. sharded on 8 GPUs what one GPU started).
EXECUTION_FIELDS = frozenset(
    {"parallel", "activation_checkpointing", "dist_timeout_seconds", "log"}
)
# Fields `--force` may change: the checkpoints hold nothing that depends on them (the run's
# length and schedule, optimiser hyperparameters, regularisation, augmentation, cadence, device).
# The others define the model, the data order or the shapes of the saved optimiser/EMA/scaler
# state, so no checkpoint of the run fits another value: that is a new run in another folder.
FORCEABLE_FIELDS = frozenset({
    "steps", "epochs", "budget_seconds", "warmup_steps", "warmup_fraction", "decay", "lr",
    "weight_decay", "beta1", "beta2", "momentum", "grad_clip", "micro_batch_size",
    "label_smoothing", "dropout", "drop_path", "crop_scale_min", "hflip", "randaugment_ops",
    "randaugment_magnitude", "mixup_alpha", "cutmix_alpha", "test_split", "download", "device",
    "compile", "compile_time_limit", "checkpoint_every", "log_every", "eval_every", "eval_flip",
    "keep_best", "report",
    "token_keep",
})  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training stage: pre-training from scratch, or fine-tuning from `init`."""

    # What to train
    model: str = described(
        "architecture preset (vitkit models), used when init is empty", "ViT-Ti/16"
    )
    model_fields: str = described(
        "changes to the model preset's architecture as ViTConfig fields, NAME=VALUE[,NAME=VALUE"
        "...], e.g. depth=11,width=96,mlp_dim=192 (not img_size, num_classes or the fields "
        "named here)",
        "",
    )
    task: Literal["classify", "masked_patches"] = described(
        "classify: supervised, from the labels; masked_patches: the paper's self-supervised "
        "masked patch prediction (no labels; predict the 3-bit mean colour of the corrupted "
        "half of the patches; the run saves the encoder, to fine-tune with init=)",
        "classify",
    )
    init: str = described(
        "checkpoint to start from: a vitkit run or weights directory, Google .npz, timm or Hugging "
        "Face weights; its head is replaced by a zero-initialised one (the paper's fine-tuning)",
        "",
    )
    init_settings: str = described(
        "what the init checkpoint's file cannot say, as load_model takes it: num_heads=N "
        "(a timm or torchvision state dict of a width no paper variant has) and "
        "classifier=token|gap (a timm state dict with a [class] token and no fc_norm) and "
        "gelu=exact|quick (a timm CLIP tower's state dict), e.g. num_heads=3,classifier=gap",
        "",
    )
    resolution: int = described(
        "training and evaluation image size in pixels (0, with init: the checkpoint's own)",
        224,
        NON_NEGATIVE,
    )
    patch_sizes: str = described(
        "FlexiViT training: patch sizes, e.g. 2,4,8, one drawn uniformly per step (the kernel "
        "resampled and the position embeddings resized for it), so that one model serves each "
        "at its own cost; the model keeps its preset's patch size for evaluation and saving and "
        "runs at the others with patch_size= ('' for one patch size)",
        "",
    )
    max_tokens: int = described(
        "NaViT training: each crop keeps its aspect ratio and is resized to the largest size of "
        "at most this many patches, and the images of a pass are packed into shared sequences "
        "(0: the paper's square crops at `resolution`); one process, no mixup, cutmix, "
        "drop_path or compile. Top-1 during training stays the square test pipeline; "
        "`vitkit eval --max-tokens` evaluates packed",
        0,
        Range(0, MOST_TOKENS),
    )
    token_keep: float = described(
        "NaViT token dropping, with max_tokens: the share of each training image's patch tokens "
        "kept (1: all), drawn anew every step",
        1.0,
        Range(0, 1, low_open=True),
    )
    representation_size: int = described(
        "width of the pre-logits tanh layer (paper's pre-training head); 0 for none",
        0,
        NON_NEGATIVE,
    )
    classifier: Literal["token", "gap"] = described(
        "read the [class] token or average patches", "token"
    )
    drop_path: float = described("stochastic depth rate of the last block", 0.0, FRACTION)
    dropout: float = described("dropout after attention/MLP and on the embeddings", 0.0, FRACTION)

    # Data
    data: str = described("dataset path or name (see vitkit.data.open_dataset)", "cifar10")
    train_split: str = described("split to train on", "train")
    test_split: str = described("split to evaluate top-1 on ('' to skip)", "test")
    val_fraction: float = described(
        "share of each class's training images held out to validate on, drawn by seed (0: "
        "none; a folder of class folders with no train split holds out 0.1)",
        0.0,
        FRACTION,
    )
    train_fraction: float = described(
        "share of each class's training images to train on (1: all); a smaller share's images "
        "are among a larger one's (nested subsets, for data-size curves)",
        1.0,
        Range(0, 1, low_open=True),
    )
    data_size: int = described(
        "image folders and archives: the square size in pixels each training image is decoded "
        "to once (0: as stored when all are of one size, else each whole within resolution x "
        "resolution). With max_tokens, each image keeps its aspect ratio, shrunk to fit within "
        "data_size x data_size, so that the crops see the whole image; otherwise it is resized "
        "and centre-cropped to it (torchvision's Resize + CenterCrop). Held-out images are "
        "read as every command reads them, whole at the model's resolution. CIFAR stays 32 px",
        0,
        Range(0, MOST_DATA_SIZE),
    )
    skip_bad: bool = described(
        "image folders and archives: leave out images that cannot be decoded (a warning counts "
        "them and names the first five) instead of stopping at the first",
        False,
    )
    download: bool = described("download a named dataset when it is not in the cache", False)

    # Optimisation
    optimizer: Literal["adamw", "sgd", "muon"] = described(
        "adamw (pre-training), sgd (fine-tuning), or muon: Muon for the encoder blocks' weight "
        "matrices (update RMS matched to AdamW's, so the same lr and weight_decay) and AdamW for "
        "the rest",
        "adamw",
    )
    # Bounded so that every rate stays a float32 (the optimisers' arithmetic) with room to spare;
    # the largest in use (LARS at batch 32k) are around 10.
    lr: float = described("peak learning rate", 1e-3, Range(0, 100, low_open=True))
    weight_decay: float = described(
        "decoupled weight decay as PyTorch's AdamW applies it (param -= lr * wd * param), which "
        "is the paper's 0.1 with Flax's Adam; big_vision/optax's decoupled 'wd' equals lr * this",
        0.1,
        Range(0, 100),
    )
    beta1: float = described("Adam beta1", 0.9, FRACTION)
    beta2: float = described("Adam beta2", 0.999, FRACTION)
    momentum: float = described("SGD momentum", 0.9, FRACTION)
    grad_clip: float = described(
        "clip the global gradient norm to this (0: off)", 1.0, NON_NEGATIVE
    )
    batch_size: int = described("global batch size (images per optimizer step)", 512, AT_LEAST_ONE)
    micro_batch_size: int = described(
        "images per forward/backward pass on each process: each of N processes takes batch_size "
        "/ N images per step and accumulates them in passes of this many (0, or a share no "
        "larger than this: one pass)",
        0,
        NON_NEGATIVE,
    )
    steps: int = described(
        "optimizer steps (0: derived from epochs or budget_seconds)", 0, NON_NEGATIVE
    )
    epochs: float = described("passes over the training set, when steps is 0", 0.0, NON_NEGATIVE)
    budget_seconds: float = described(
        "when steps and epochs are 0: train for about this long; the step count is fixed from a "
        "short throughput measurement at the start and saved, so resuming is exact",
        0.0,
        NON_NEGATIVE,
    )
    warmup_steps: int = described("linear warm-up steps", 0, NON_NEGATIVE)
    warmup_fraction: float = described(
        "linear warm-up as a fraction of all steps, when warmup_steps is 0 (for budgeted runs)",
        0.0,
        FRACTION,
    )
    decay: Literal["cosine", "linear"] = described("learning-rate decay after warm-up", "cosine")
    label_smoothing: float = described("label smoothing", 0.0, FRACTION)
    ema_decay: float = described(
        "exponential moving average of the weights (0: off)", 0.0, FRACTION
    )

    # Augmentation (batched, on the training device)
    crop_scale_min: float = described(
        "Inception crop: smallest area fraction (1: no crop)", 0.08, Range(0, 1, low_open=True)
    )
    hflip: bool = described("random horizontal flips", True)
    randaugment_ops: int = described(
        "RandAugment: operations per image (0: off; timm's recipes use 2 to 4)", 0, Range(0, 16)
    )
    # torchvision's RandAugment has 31 magnitude bins, 0 to 30.
    randaugment_magnitude: int = described("RandAugment: magnitude", 10, Range(0, 30))
    mixup_alpha: float = described("Mixup alpha (0: off)", 0.0, NON_NEGATIVE)
    cutmix_alpha: float = described("CutMix alpha (0: off)", 0.0, NON_NEGATIVE)

    # Execution
    seed: int = described(
        "seed of initialisation, data order and augmentation (numpy's range)",
        0,
        Range(0, 2**32 - 1),
    )
    device: str = described("auto, cpu, cuda or cuda:N", "auto")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = described(
        "autocast precision; auto: bf16 where it is native and pays (a CUDA GPU; a CPU with "
        "AMX-BF16 or AVX512-BF16 for models of width 192 and up), else fp32; printed at the start",
        "auto",
    )
    compile: bool = described(
        "torch.compile the model (inductor's cache is kept in $VITKIT_HOME/inductor)", False
    )
    compile_time_limit: float = described(
        "seconds the first compiled step may take; past them the run gives up compiling and "
        "trains eagerly (0: no limit; single-process runs, in the main thread only)",
        300.0,
        NON_NEGATIVE,
    )
    checkpoint_every: int = described(
        "steps between checkpoints (the last two are kept)", 500, AT_LEAST_ONE
    )
    log_every: int = described(
        "steps between metric lines and progress-bar updates", 10, AT_LEAST_ONE
    )
    eval_every: int = described("steps between evaluations (0: only at the end)", 0, NON_NEGATIVE)
    log: Literal["jsonl", "tensorboard"] = described(
        "where metrics go: metrics.jsonl (always the record), or also TensorBoard event files "
        "in the run folder with the figures as images (tensorboard --logdir runs/)",
        "jsonl",
    )
    report: bool = described(
        "at the end, write curves.png, the inspection figures (figures/) and report.html "
        "(an experiment's runs leave them to its own report)",
        True,
    )
    keep_best: bool = described(
        "keep the weights of the best validation top-1 (checked every eval_every steps) in "
        "OUT/best; chosen on the validation split, never the test split",
        False,
    )
    eval_flip: bool = described(
        "evaluate each test image with its mirror image, their logits averaged (test-time "
        "augmentation; the summary's top1 counts these predictions)",
        False,
    )

    # Several processes (torchrun); a run may resume with other values of these
    parallel: Literal["ddp", "fsdp"] = described(
        "with several processes: ddp replicates the model in each; fsdp (FSDP2) shards its "
        "parameters, gradients and optimizer state across them, for models whose training state "
        "does not fit one GPU (ViT-H)",
        "ddp",
    )
    activation_checkpointing: bool = described(
        "recompute each block's activations in the backward pass instead of keeping them: much "
        "less memory for about a third more compute",
        False,
    )
    dist_timeout_seconds: float = described(
        "with several processes: how long one waits for the others in a collective before the "
        "run stops with an error (a process that died or hangs)",
        600.0,
        Range(0, 1e7, low_open=True),  # months would be no timeout; 1e300 s overflows timedelta
    )

    def __post_init__(self) -> None:
        problems = [
            problem
            for item in dataclasses.fields(self)
            if (problem := field_problem(self, item, _FIELD_TYPES[item.name]))
        ]
        if not problems:  # the combinations, once every field has its type
            problems = self._combination_problems()
        if problems:
            raise ConfigError("Invalid TrainConfig: " + "; ".join(problems))

    def _combination_problems(self) -> list[str]:
        problems = []
        if problem := log_problem(self.log):
            problems.append(problem)
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            problems.append(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        lengths = {name: getattr(self, name) for name in ("steps", "epochs", "budget_seconds")}
        if not any(lengths.values()):
            problems.append("set one of steps, epochs or budget_seconds")
        elif len(given := [f"{name}={value:g}" for name, value in lengths.items() if value]) > 1:
            problems.append(
                f"set one of steps, epochs or budget_seconds, not {' and '.join(given)} (only one "
                "would count); on the command line, the one given replaces the preset's"
            )
        try:
            init_settings(self.init_settings)
        except ConfigError as error:
            problems.append(str(error))
        if self.keep_best and not self.eval_every:
            problems.append("keep_best compares the validation top-1 every eval_every steps; "
                            "set eval_every")  # fmt: skip
        if self.warmup_steps and self.steps and self.warmup_steps >= self.steps:
            problems.append(_long_warmup(self.warmup_steps, self.steps))
        if problem := device_problem(self.device):
            problems.append(problem)
        if self.precision == "fp16" and self.device == "cpu":
            problems.append("fp16 autocast needs a GPU; use bf16 or fp32 on the CPU")
        if self.precision == "fp16" and self.parallel == "fsdp":
            problems.append(
                "fp16 with fsdp would need a gradient scaler that agrees across shards; use bf16"
            )
        if self.optimizer == "muon" and (self.parallel == "fsdp" or self.precision == "fp16"):
            problems.append("optimizer muon works with parallel=ddp and fp32 or bf16")
        if self.task == "masked_patches":
            problems.extend(self._masked_patches_problems())
        # resolution 0 is the init checkpoint's own: a preset may leave init to the command
        # line, and training refuses a run without one (`build.build_model`).
        model_problem = None if self.init or not self.resolution else self._model_problem()
        if model_problem:
            problems.append(model_problem)
        fit = not self.init and bool(self.resolution) and not model_problem
        if problem := self._patch_sizes_problem(fit=fit):
            problems.append(problem)
        problems.extend(self._packing_problems())
        return problems

    def _packing_problems(self) -> list[str]:
        """What packed training (max_tokens) cannot combine with: mixing needs two images of one
        size, stochastic depth would drop whole packed sequences, and compile and FlexiViT's
        patch sizes act on the model's forward, which packing bypasses."""
        if not self.max_tokens:
            if self.token_keep < 1:
                return ["token_keep < 1 drops tokens of packed images: set max_tokens"]
            return []
        clashes = {
            "mixup_alpha": self.mixup_alpha > 0,
            "cutmix_alpha": self.cutmix_alpha > 0,
            "drop_path": self.drop_path > 0,
            "compile": self.compile,
            "patch_sizes": bool(self.patch_sizes.strip()),
            "task=masked_patches": self.task == "masked_patches",
        }
        return [
            f"max_tokens (packed training) does not work with {name}"
            for name, clash in clashes.items()
            if clash
        ]

    @property
    def patch_size_choices(self) -> tuple[int, ...]:
        """`patch_sizes` as integers, in the order given (empty: the model's own only)."""
        parts = [part.strip() for part in self.patch_sizes.split(",") if part.strip()]
        return tuple(int(part) for part in parts)

    def _patch_sizes_problem(self, *, fit: bool) -> str | None:
        """`patch_sizes` must list distinct positive integers, for a classifier; with `fit`,
        each must cut the preset's images at `resolution` into whole patches (an `init`
        checkpoint's are checked when it is read)."""
        try:
            choices = self.patch_size_choices
        except ValueError:
            return f"patch_sizes: expected integers separated by commas, got {self.patch_sizes!r}"
        if any(size < 1 for size in choices) or len(set(choices)) != len(choices):
            return f"patch_sizes: expected distinct positive integers, got {self.patch_sizes!r}"
        if choices and self.task == "masked_patches":
            return "patch_sizes: masked patch prediction trains at one patch size"
        for size in choices if fit else ():
            try:
                changes = {**model_field_changes(self.model_fields), "patch_size": size}
                get_config(self.model, img_size=self.resolution, **changes)
            except ConfigError:
                return (
                    f"patch_sizes: {size} does not cut {self.resolution} px images of "
                    f"{self.model} into whole patches"
                )
        return None

    def _masked_patches_problems(self) -> list[str]:
        """Masked patch prediction pre-trains a new encoder, which has no classifier to evaluate
        or pre-logits layer to train."""
        problems = []
        if self.init:
            problems.append("task masked_patches pre-trains from scratch; leave init empty")
        if self.test_split:
            problems.append("task masked_patches has no classifier to evaluate; set test_split=''")
        if self.representation_size:
            problems.append("task masked_patches trains no pre-logits layer; representation_size=0")
        return problems

    def _model_problem(self) -> str | None:
        """Whether `model` names a preset that can be built at `resolution` (a checkpoint given
        as `init` is checked when it is read)."""
        try:
            changes = model_field_changes(self.model_fields)
        except ConfigError as error:
            return str(error)
        try:
            check_buildable(get_config(self.model, img_size=self.resolution, **changes))
        except KeyError as error:
            return f"model: {error.args[0]}"
        except ConfigError as error:
            reason = str(error).removeprefix("Invalid ViTConfig: ")
            changed = f" with model_fields {self.model_fields}" if changes else ""
            return f"model {self.model}{changed} at resolution {self.resolution}: {reason}"
        return None

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps of a run of `total_steps`; ConfigError when warmup_steps is not shorter
        than the run (known only once epochs or a budget became steps)."""
        if self.warmup_steps and self.warmup_steps >= total_steps:
            raise ConfigError(_long_warmup(self.warmup_steps, total_steps))
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
ARCHITECTURE_FIELDS = ("model", "model_fields", "representation_size", "classifier")
# ViTConfig fields that `model_fields` may not set: training sets them from its own fields.
_SET_BY_TRAINING = frozenset({
    "img_size", "num_classes", "classifier", "class_token", "representation_size", "drop_path",
    "dropout",
})  # fmt: skip
# The fields that set a run's length; one of them counts (`TrainConfig` refuses several).
LENGTH_FIELDS = frozenset({"steps", "epochs", "budget_seconds"})
# The declared type of every field (resolved once: the annotations are strings under
# `from __future__ import annotations`).
_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
FIELD_NAMES = frozenset(_FIELD_TYPES)


def parse_overrides(base: TrainConfig | None, assignments: list[str]) -> TrainConfig:
    """`base` with "field=value" assignments applied, each value parsed by the field's type
    (no `base`: the config of those fields and the defaults of the others). A run length given
    (steps, epochs or budget_seconds) replaces the one `base` (a preset) has: `--preset finetune
    budget_seconds=90` trains for 90 s, not the preset's steps."""
    values = parse_assignments(assignments, _FIELD_TYPES)
    if base is None:
        return TrainConfig(**values)
    if lengths := set(values) & LENGTH_FIELDS:
        values = {name: 0 for name in LENGTH_FIELDS - lengths} | values
    return dataclasses.replace(base, **values)


def _long_warmup(warmup_steps: int, total_steps: int) -> str:
    return (
        f"warmup_steps {warmup_steps} is not shorter than the run's {total_steps} steps: the "
        "learning rate would never decay; lower warmup_steps, or set warmup_steps=0 and "
        "warmup_fraction"
    )


def describe_fields() -> str:
    """One line per field with its type, default, range and help: `vitkit train --help`."""
    return describe(TrainConfig, _FIELD_TYPES)


def init_settings(text: str) -> dict[str, Any]:
    """`load_model`'s num_heads, classifier and gelu from an `init_settings` text; ConfigError
    naming a bad part."""
    settings: dict[str, Any] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, value = (piece.strip() for piece in part.partition("="))
        if name == "num_heads" and value.isascii() and value.isdigit() and int(value) > 0:
            settings[name] = int(value)
        elif name == "classifier" and value in get_args(Classifier):
            settings[name] = value
        elif name == "gelu" and value in get_args(Gelu):
            settings[name] = value
        else:
            raise ConfigError(
                "init_settings: expected num_heads=N, classifier=token|gap or "
                f"gelu=exact|tanh|quick, got {shown(part)}"
            )
    return settings


def model_field_changes(text: str) -> dict[str, Any]:
    """The ViTConfig fields that a `model_fields` text sets, each value read as an integer, a
    number or a boolean where it is one, or as a tuple of those in parentheses or brackets
    (`resnet_layers=(3,4,9)`); ViTConfig checks them. ConfigError naming a bad part."""
    changes: dict[str, Any] = {}
    known = {item.name for item in dataclasses.fields(ViTConfig)}
    for part in filter(None, (piece.strip() for piece in _top_level_parts(text))):
        name, separator, value = part.partition("=")
        name = name.strip()
        if not separator:
            raise ConfigError(f"model_fields: expected NAME=VALUE, got {shown(part)}")
        if name not in known:
            raise ConfigError(f"model_fields: {shown(name)} is not a ViTConfig field")
        if name in _SET_BY_TRAINING:
            raise ConfigError(f"model_fields: {name} is set by training; use its own field")
        changes[name] = _literal(value.strip())
    return changes


def _top_level_parts(text: str) -> list[str]:
    """`text` split at the commas outside parentheses and brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def _literal(text: str) -> Any:
    if len(text) >= 2 and (text[0], text[-1]) in (("(", ")"), ("[", "]")):
        inner = text[1:-1].strip()
        return tuple(_literal(item.strip()) for item in inner.split(",")) if inner else ()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
