"""`train(config, out_dir)`: one loop for pre-training and fine-tuning, that never loses work.

The run directory (`RunDir`, training/run_dir.py, which owns its files and the one-run lock)
holds everything: the resolved config (`train_config.json`), checkpoints (the last two),
`metrics.jsonl`, and at the end `model.safetensors` + `config.json` (loadable with
`vitkit.load_model(out_dir)`), `summary.json` and `curves.png`. Running the same command again
resumes from the newest readable checkpoint and ends with the same weights, bit for bit on a
CPU, as a run that was never interrupted: the checkpoint holds the model, optimizer, EMA, loss
scaler and RNG states, and the data position is a function of the step.

A run given a time budget (`budget_seconds`) instead of steps cannot be reproduced bit for bit,
since its length depends on the machine's speed: its step count is planned from a few timed steps
at the start, then re-planned at each checkpoint (up to REPLAN_UNTIL of the run) from the
measured pace, so that it ends on time even when the machine slows down or speeds up. The
warm-up length stays as first planned; the cosine or linear decay stretches to the new end.

Under torchrun every process runs `train` with the same arguments (see training.distributed and
training.parallel). `batch_size` stays the global batch: each of N processes takes its 1/N share
of the same global batches (so the learning-rate schedule and the step count do not depend on
N), and `micro_batch_size` splits a process's share into accumulated passes. Only rank 0 logs,
shows progress and writes the run directory; checkpoints hold the full, unsharded state, so a
run resumes on any number of processes. Random augmentation, dropout and stochastic depth draw,
in each process, from a generator seeded by (seed, step, rank) at every step: a resumed run draws
what the interrupted one would have, without saving a generator state per process. (One process
keeps its single checkpointed stream, as above.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vitkit.data.arrays import ArrayDataset
from vitkit.data.loader import ArrayLoader
from vitkit.data.sources import open_dataset, open_train_test
from vitkit.data.transforms import AugmentConfig, TrainAugment
from vitkit.errors import TrainingError
from vitkit.evaluation.accuracy import top1_counts
from vitkit.models.config import ViTConfig
from vitkit.models.vit import VisionTransformer, create_model
from vitkit.training import parallel
from vitkit.training.checkpoint import (
    NonFiniteStateError,
    load_latest_checkpoint,
    save_checkpoint,
    saved_steps,
)
from vitkit.training.config import (
    ARCHITECTURE_FIELDS,
    TrainConfig,
)
from vitkit.training.distributed import Launch, World, launch, lost_peer, process_group
from vitkit.training.optim import build_optimizer, clip_gradients
from vitkit.training.run_dir import RunDir
from vitkit.training.schedule import learning_rate
from vitkit.weights.load import load_model
from vitkit.weights.native import save_pretrained
from vitkit.weights.state_dict import compare_keys

CALIBRATION_STEPS = 3  # timed optimizer steps that turn budget_seconds into a first step count
REPLAN_UNTIL = 0.9  # budgeted runs re-plan their step count at checkpoints until this fraction
# The fields that set a run's length, and with the warm-up ones, its learning-rate plan.
LENGTH_FIELDS = frozenset({"steps", "epochs", "budget_seconds"})
WARMUP_FIELDS = frozenset({"warmup_steps", "warmup_fraction"})
# What a training checkpoint must hold to be resumed from.
STATE_KEYS = ("step", "elapsed", "model", "optimizer", "rng")


def resolve_device(name: str, launched: Launch | None = None) -> torch.device:
    """The training device; with several processes on GPUs, the GPU of this one's LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} asked for, but no CUDA GPU is available")
    if device.type == "cuda" and launched is not None and launched.world_size > 1:
        if device.index is not None:
            raise TrainingError(
                f"device {name!r}: with several processes each uses the GPU of its LOCAL_RANK; "
                "give device=cuda or auto"
            )
        device = torch.device("cuda", launched.local_rank)
    return device


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


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class probabilities (one-hot, smoothed or mixed)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def augmentation_seed(seed: int, step: int, rank: int) -> int:
    """The seed of process `rank`'s random draws (augmentation, dropout, stochastic depth) at
    `step` of a run on several processes: distinct per process and step, and reproducible on
    resuming, on any number of processes, without a saved generator state."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0])


class _StopRequest:
    """Turns the first Ctrl-C into a request the loop honours at the next step boundary (it saves
    a checkpoint and exits); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


@dataclasses.dataclass
class _Run:
    """What one training run needs at every step."""

    config: TrainConfig
    run_dir: RunDir
    device: torch.device
    model: VisionTransformer
    optimizer: torch.optim.Optimizer
    ema: torch.optim.swa_utils.AveragedModel | None
    scaler: torch.amp.GradScaler | None
    augment: TrainAugment
    loader: ArrayLoader
    test: ArrayDataset | None
    total_steps: int
    warmup_steps: int = 0
    step: int = 0
    elapsed: float = 0.0  # training seconds before this process, from the checkpoint
    micro_batches: int = 1  # forward/backward passes per step in this process
    world: World = World()

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)

    def state(self) -> dict[str, Any]:
        """The full training state as one process saves it; under FSDP every rank must call
        this (it gathers the shards), and only rank 0's result is complete."""
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "model": parallel.model_state(self.model),
            "optimizer": parallel.optimizer_state(self.model, self.optimizer),
            "ema": parallel.model_state(self.ema) if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def restore(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint's state; TrainingError when it is not a training state of
        this model (e.g. another run's checkpoints copied into the folder)."""
        if missing := [key for key in STATE_KEYS if key not in state]:
            raise TrainingError(f"{source}: not a training checkpoint (no {', '.join(missing)})")
        if report := compare_keys(self.model, state["model"]):
            first = (report.mismatched or report.missing or report.unexpected)[0]
            raise TrainingError(
                f"{source}: saved by another model than this run's ({len(report.missing)} "
                f"missing, {len(report.unexpected)} unexpected and {len(report.mismatched)} "
                f"misshapen keys, e.g. {first}); train in another --out, or delete the folder's "
                "checkpoints"
            )
        self.step, self.elapsed = state["step"], state["elapsed"]
        parallel.load_model_state(self.model, state["model"])
        parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        if self.ema is not None:
            parallel.load_model_state(self.ema, state["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Global batches from the current step on, across epochs."""
        per_epoch = len(self.loader)
        epoch, first = divmod(self.step, per_epoch)
        while True:
            self.loader.set_epoch(epoch)
            yield from self.loader.iter_from(first)
            epoch, first = epoch + 1, 0

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, forward: nn.Module) -> float:
        """One optimizer step on a global batch, of which this process holds its share; returns
        the mean loss of that share."""
        config = self.config
        lr = learning_rate(
            self.step,
            base=config.lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            decay=config.decay,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.world.distributed:
            torch.manual_seed(augmentation_seed(config.seed, self.step, self.world.rank))
        inputs, targets = self.augment(
            images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        )
        passes = self.micro_batches
        total_loss = 0.0
        for index, (chunk_inputs, chunk_targets) in enumerate(
            zip(inputs.chunk(passes), targets.chunk(passes))
        ):
            with parallel.gradient_sync(forward, enabled=index == passes - 1):
                with torch.autocast(
                    self.device.type,
                    dtype=self.autocast_dtype,
                    enabled=self.autocast_dtype is not None,
                ):
                    logits = forward(chunk_inputs)
                loss = soft_cross_entropy(logits, chunk_targets) / passes
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingError(
                        f"the loss became {value} at step {self.step}; stopping (learning rate "
                        f"{lr:.3g}). The checkpoints in {self.run_dir.path / 'checkpoints'} hold "
                        "the last finite state: lower lr or raise warmup_steps and run again"
                    )
                total_loss += value
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if config.grad_clip > 0:
            norm = clip_gradients(self.model.parameters(), config.grad_clip)
            if not torch.isfinite(norm) and self.scaler is None:
                raise TrainingError(f"the gradient norm became {norm.item()} at step {self.step}")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return total_loss


def _steps_per_epoch(train: ArrayDataset, config: TrainConfig) -> int:
    return len(train) // config.batch_size


def _plan_steps(
    run: _Run,
    new_model: Callable[[], tuple[VisionTransformer, nn.Module]],
    train_steps_per_epoch: int,
) -> int:
    """Total optimizer steps: given, from epochs, or from budget_seconds by timing a few steps of
    throw-away state: a model from `new_model()` = (model, forward) prepared like the real one,
    its own optimizer and loss scaler, and the CPU and GPU random streams forked, so that the
    real run starts exactly as it would without the measurement; with several processes, rank
    0's plan."""
    config = run.config
    if total := _steps_from_length(config, train_steps_per_epoch):
        return total
    gpus = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        model, forward = new_model()
        trial = dataclasses.replace(
            run,
            model=model,
            optimizer=build_optimizer(model, config),
            ema=None,
            scaler=torch.amp.GradScaler(run.device.type) if run.scaler is not None else None,
            total_steps=1,
            step=0,
        )
        batches = trial.batches()
        trial.train_step(*next(batches), forward)  # warm-up: allocation, compilation
        start = time.perf_counter()
        for _ in range(CALIBRATION_STEPS):
            trial.train_step(*next(batches), forward)
        seconds_per_step = (time.perf_counter() - start) / CALIBRATION_STEPS
    return run.world.broadcast(max(1, int(config.budget_seconds / seconds_per_step)))


def _steps_from_length(config: TrainConfig, train_steps_per_epoch: int) -> int | None:
    """The step count `steps` or `epochs` asks for; None for a run given a time budget."""
    if config.steps:
        return config.steps
    if config.epochs:
        return max(1, math.ceil(config.epochs * train_steps_per_epoch))
    return None


def _replan_resumed(run: _Run, changed: Collection[str], train_steps_per_epoch: int) -> None:
    """Re-plan a resumed run whose length or warm-up fields `changed` (by --force, or all of
    them when the folder lost its train_config.json). A time budget is turned into steps at the
    pace the run has had so far."""
    config = run.config
    if LENGTH_FIELDS & set(changed):
        total = _steps_from_length(config, train_steps_per_epoch)
        if total is None:
            seconds_per_step = run.elapsed / max(run.step, 1)
            total = max(run.step, int(config.budget_seconds / seconds_per_step))
        if total < run.step:
            raise TrainingError(
                f"{run.run_dir} is at step {run.step} already; the forced length asks for "
                f"{total} steps in all"
            )
        run.total_steps = total
    if (LENGTH_FIELDS | WARMUP_FIELDS) & set(changed):
        run.warmup_steps = config.warmup_for(run.total_steps)


def train(config: TrainConfig, out_dir: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Train (or resume training) in `out_dir`; returns the summary also written there. Under
    torchrun, every process calls this with the same arguments."""
    run_dir = RunDir(out_dir)
    launched = launch()
    device = resolve_device(config.device, launched)
    timeout = config.dist_timeout_seconds
    with process_group(launched, device=device, timeout_seconds=timeout) as world:
        try:
            with _held_by_this_job(run_dir, world):
                return _train(config, run_dir, force=force, device=device, world=world)
        except TrainingError:
            raise
        except Exception as error:
            if not (world.distributed and lost_peer(error)):
                raise
            # gloo starts with its source location and ends with advice: keep what happened.
            message = re.sub(r"^\[[^]]*\]\s*", "", str(error).strip())
            reason = message.splitlines()[0].split(". ")[0][:300]
            raise TrainingError(
                f"process {world.rank} of {world.size} lost contact with the others ({reason}). "
                f"Another process died or hangs: each waits at most dist_timeout_seconds="
                f"{timeout:g} s for the others; its own log says why it stopped. Running the same "
                f"command again resumes from the last checkpoint in {run_dir.path / 'checkpoints'}"
            ) from error


@contextlib.contextmanager
def _held_by_this_job(run_dir: RunDir, world: World) -> Iterator[None]:
    """Rank 0 holds the run lock for the whole job; every process learns whether it was had, so
    that all stop together when it was not."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if world.is_main:
            try:
                stack.enter_context(run_dir.locked())
            except TrainingError as error:
                refusal = str(error)
        if refusal := world.broadcast(refusal):
            raise TrainingError(refusal)
        with run_dir.writing():
            run_dir.path.mkdir(parents=True, exist_ok=True)
        yield


def _train(
    config: TrainConfig, run_dir: RunDir, *, force: bool, device: torch.device, world: World
) -> dict[str, Any]:
    out_dir = run_dir.path
    saved = run_dir.saved_config()
    changes = run_dir.config_changes(saved, config, force=force) if saved else {}

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
    micro_batches = config.micro_batches(processes=world.size)
    num_classes = len(train_set.classes)

    torch.manual_seed(config.seed)
    model = build_model(config, num_classes=num_classes).to(device)
    model_config = model.config
    if config.init and world.is_main:
        ignored = ", ".join(f"{name}={getattr(config, name)!r}" for name in ARCHITECTURE_FIELDS)
        print(
            f"the architecture is init's ({model_config.describe()}); not used: {ignored}",
            file=sys.stderr,
        )
    ema = None
    if config.ema_decay:  # copied before parallelize: a sharded model cannot be copied
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
    forward = parallel.parallelize(model, config=config, world=world)
    if ema is not None and parallel.is_sharded(model):
        parallel.shard(ema.module, precision=config.precision)  # averaged shard by shard
    optimizer = build_optimizer(model, config)  # after sharding: it steps on this rank's shards
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    augment = build_augment(config, model_config, num_classes=len(train_set.classes))
    loader = ArrayLoader(
        train_set,
        batch_size=config.batch_size // world.size,
        shuffle=True,
        drop_last=True,
        seed=config.seed,
        rank=world.rank,
        world_size=world.size,
    )
    run = _Run(
        config, run_dir, device, model, optimizer, ema, scaler, augment, loader, test_set,
        total_steps=0, micro_batches=micro_batches, world=world,
    )  # fmt: skip

    resumed = load_latest_checkpoint(out_dir)
    _check_same_checkpoint(world, out_dir, resumed[1].name if resumed else None)
    if resumed is not None:
        state, path = resumed
        run.restore(state, path)
        del state, resumed  # a copy of the full state in every process, no longer needed
        if saved:  # the plan is train_config.json's, with what --force changed re-planned
            run.total_steps = saved["total_steps"]
            run.warmup_steps = saved.get("warmup_steps", config.warmup_for(run.total_steps))
        replanned = changes.keys() if saved else LENGTH_FIELDS
        _replan_resumed(run, replanned, _steps_per_epoch(train_set, config))
        if run.step >= run.total_steps and (summary := run_dir.summary()) is not None:
            if world.is_main:
                print(f"{out_dir}: this run is complete ({run.step} steps)")
            return summary
        if world.is_main:
            print(f"resuming from {path} (step {run.step} of {run.total_steps})")
            if changes:
                described = ", ".join(f"{key} {a!r} -> {b!r}" for key, (a, b) in changes.items())
                print(f"with the changes --force allows: {described}")
                record = {"at_step": run.step, "changed": {k: list(v) for k, v in changes.items()}}
                _write_config(run, forced=[*saved.get("forced", []), record])
            run_dir.truncate_metrics(run.step)
    else:
        if world.is_main:
            run_dir.truncate_metrics(0)

        def new_model() -> tuple[VisionTransformer, nn.Module]:
            trial = build_model(config, num_classes=num_classes).to(device)
            return trial, parallel.parallelize(trial, config=config, world=world)

        run.total_steps = _plan_steps(run, new_model, _steps_per_epoch(train_set, config))
        run.warmup_steps = config.warmup_for(run.total_steps)
        if world.is_main:
            _write_config(run, forced=[])
        torch.manual_seed(config.seed + 1)  # the augmentation stream, apart from the init's
    return _loop(run, forward)


def _write_config(run: _Run, *, forced: list[dict[str, Any]]) -> None:
    """train_config.json for this run's config, architecture and plan (see RunDir)."""
    run.run_dir.write_config(
        run.config,
        run.model.config,
        total_steps=run.total_steps,
        warmup_steps=run.warmup_steps,
        forced=forced,
    )


def _check_same_checkpoint(world: World, out_dir: Path, name: str | None) -> None:
    """All processes must resume from the same checkpoint (or none); this also keeps rank 0
    from writing to the run directory before every process has read it."""
    names = world.gather(name)
    if len(set(names)) > 1:
        seen = ", ".join(f"rank {rank}: {name or 'none'}" for rank, name in enumerate(names))
        raise TrainingError(
            f"the processes find different checkpoints in {out_dir} ({seen}); the run directory "
            "must be on a file system that every node sees"
        )


def _checkpoint(run: _Run, started: float) -> None:
    """Rank 0 saves the full state (gathered from every rank under FSDP); the others wait."""
    run.elapsed += time.perf_counter() - started
    state = run.state()
    if run.world.is_main:
        try:
            with run.run_dir.writing():
                save_checkpoint(run.run_dir.path, run.step, state)
        except NonFiniteStateError as error:
            steps = saved_steps(run.run_dir.path)
            last = f"step {steps[-1]}" if steps else "none yet"
            raise TrainingError(
                f"stopped at step {run.step}: the weights or optimizer state became NaN or inf "
                f"({error.keys}). The checkpoints in {run.run_dir.path / 'checkpoints'} hold the "
                f"last finite state ({last}): lower lr, set grad_clip or raise warmup_steps and "
                "run again"
            ) from None
    run.world.barrier()


def _replan(run: _Run, started: float) -> bool:
    """For a budgeted run past its warm-up: set the step count that ends the run on budget at the
    pace measured so far (rank 0's, so that all processes stop together); returns whether it
    changed."""
    config = run.config
    budgeted = config.budget_seconds and not (config.steps or config.epochs)
    if not budgeted or run.step < run.warmup_steps or run.step >= REPLAN_UNTIL * run.total_steps:
        return False
    elapsed = run.elapsed + time.perf_counter() - started
    seconds_per_step = elapsed / run.step
    remaining = max(0.0, config.budget_seconds - elapsed)
    total = run.world.broadcast(max(run.step + 1, run.step + int(remaining / seconds_per_step)))
    changed = total != run.total_steps
    run.total_steps = total
    return changed


def _loop(run: _Run, forward: nn.Module) -> dict[str, Any]:
    config, world = run.config, run.world
    stop = _StopRequest()
    # Under torchrun, Ctrl-C reaches every process and torchrun ends the job: the same command
    # then resumes from the last checkpoint. Only a single process turns it into a clean stop.
    stop_on_ctrl_c = contextlib.nullcontext() if world.distributed else stop.installed()
    metrics = run.run_dir.metrics(enabled=world.is_main)
    started = time.perf_counter()
    window_start, window_images = time.perf_counter(), 0
    batches = run.batches()
    progress = tqdm(
        total=run.total_steps,
        initial=run.step,
        desc="train",
        unit="step",
        disable=not world.is_main,
    )
    try:
        with stop_on_ctrl_c:
            while run.step < run.total_steps:
                images, labels = next(batches)
                loss = run.train_step(images, labels, forward)
                window_images += config.batch_size
                if run.step % config.log_every == 0 or run.step == run.total_steps:
                    loss = world.mean(loss)
                    rate = window_images / (time.perf_counter() - window_start)
                    lr = run.optimizer.param_groups[0]["lr"]
                    metrics.write({"step": run.step, "loss": loss, "lr": lr, "images_per_s": rate})
                    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                progress.update(1)
                if config.eval_every and run.step % config.eval_every == 0 and run.test is not None:
                    paused = time.perf_counter()
                    metrics.write({"step": run.step, "top1": _evaluate(run, run.model)})
                    # Evaluation is not training time: neither the budget nor img/s count it.
                    paused = time.perf_counter() - paused
                    started, window_start = started + paused, window_start + paused
                if run.step % config.checkpoint_every == 0 or stop.requested:
                    if _replan(run, started):
                        progress.total = run.total_steps
                        progress.refresh()
                        if world.is_main:
                            run.run_dir.record_plan(run.total_steps)
                    _checkpoint(run, started)
                    started = time.perf_counter()
                if stop.requested:
                    progress.close()
                    print(f"stopped at step {run.step}; the same command resumes the run")
                    return {"stopped_at_step": run.step}
            if run.step % config.checkpoint_every:
                _checkpoint(run, started)
                started = time.perf_counter()
    finally:
        progress.close()
        metrics.close()
    return _finish(run)


def _evaluate(run: _Run, model: VisionTransformer) -> float:
    """Top-1 on the test set: each process counts its own contiguous slice, without padding,
    and the counts are summed, so that every test image counts exactly once."""
    assert run.test is not None
    correct, total = top1_counts(
        parallel.unsharded(model),
        run.test,
        resolution=run.model.config.img_size,
        mean=run.model.config.mean,
        std=run.model.config.std,
        device=run.device,
        autocast_dtype=run.autocast_dtype,
        rank=run.world.rank,
        world_size=run.world.size,
    )
    correct, total = run.world.sum([correct, total])
    return correct / total


def _finish(run: _Run) -> dict[str, Any]:
    """Final weights, evaluation, summary and curves (written by rank 0)."""
    final = parallel.unsharded(run.ema.module if run.ema is not None else run.model)
    summary: dict[str, Any] = {
        "steps": run.step,
        "images_seen": run.step * run.config.batch_size,
        "resolution": run.model.config.img_size[0],
        "seconds": round(run.elapsed, 3),
    }
    if run.test is not None:
        start = time.perf_counter()
        summary["top1"] = _evaluate(run, final)
        if run.ema is not None:
            summary["top1_without_ema"] = _evaluate(run, run.model)
        summary["eval_seconds"] = round(time.perf_counter() - start, 1)
    if not run.world.is_main:
        return summary
    if run.test is not None:
        metrics = run.run_dir.metrics(enabled=True)
        metrics.write({"step": run.step, "top1": summary["top1"]})
        metrics.close()
    with run.run_dir.writing():
        save_pretrained(final.cpu(), run.run_dir.path, class_names=run.loader.dataset.classes)
        _plot_curves(run.run_dir.path)
    run.run_dir.write_summary(summary)
    return summary


def _plot_curves(out_dir: Path) -> None:
    """curves.png: training loss and, where evaluated, top-1 against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    accuracies = [(r["step"], r["top1"]) for r in records if "top1" in r]
    figure, axis = plt.subplots(figsize=(6, 4))
    if losses:
        axis.plot(*zip(*losses), label="training loss", color="tab:blue")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    if accuracies:
        other = axis.twinx()
        other.plot(*zip(*accuracies), "o-", label="top-1", color="tab:orange")
        other.set_ylabel("top-1")
    figure.tight_layout()
    figure.savefig(out_dir / "curves.png", dpi=100)
    plt.close(figure)
