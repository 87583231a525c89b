"""`TrainState`, everything a resumed run needs, and `Checkpoints`, which decides when it is saved
and finds it again.

A checkpoint holds the model, optimizer, EMA and loss-scaler states, the step and the training
seconds so far; nothing else is needed to continue bit for bit on a CPU, because the data order
and every random draw are functions of (seed, step) (data/loader.py, data/augment.py,
training/step.py). Checkpoints hold the full, unsharded state (training/parallel.py), so a run
resumes on any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.errors import TrainingError
from vitkit.training import parallel
from vitkit.training.checkpoint import (
    NonFiniteStateError,
    load_latest_checkpoint,
    save_checkpoint,
    saved_steps,
)
from vitkit.training.distributed import World
from vitkit.training.planner import every
from vitkit.training.run_dir import RunDir
from vitkit.training.tasks import TrainedModel
from vitkit.weights.state_dict import compare_keys

# What a training checkpoint must hold to be resumed from.
STATE_KEYS = ("step", "elapsed", "model", "optimizer")


@dataclass
class TrainState:
    """The model (parallelised in place), its optimizer, EMA and loss scaler, and how far the run
    has come."""

    model: TrainedModel
    optimizer: torch.optim.Optimizer
    ema: torch.optim.swa_utils.AveragedModel | None
    scaler: torch.amp.GradScaler | None
    step: int = 0
    elapsed: float = 0.0  # training seconds, over every process that ran this run

    @property
    def final_model(self) -> TrainedModel:
        """The weights a run hands out (of which its task saves what it saves): the EMA's when
        there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        """The full state as one process saves it; under FSDP every rank must call this (it
        gathers the shards), and only rank 0's result is complete."""
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "model": parallel.model_state(self.model),
            "optimizer": parallel.optimizer_state(self.model, self.optimizer),
            "ema": parallel.model_state(self.ema) if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
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


class Checkpoints:
    """The run's checkpoints: every `every` steps, written atomically with a digest by rank 0
    (training/checkpoint.py), and on resuming the newest intact one, the same on every rank."""

    def __init__(self, run_dir: RunDir, *, every: int, world: World) -> None:
        self.run_dir = run_dir
        self.every = every
        self.world = world

    @property
    def folder(self) -> Path:
        return self.run_dir.checkpoints

    def due(self, step: int) -> bool:
        return every(self.every, step)

    def save(self, state: TrainState) -> None:
        """Rank 0 saves the full state (gathered from every rank under FSDP); the others wait.
        A diverged state is refused, naming the last finite checkpoint."""
        full = state.state_dict()
        if self.world.is_main:
            try:
                with self.run_dir.writing():
                    save_checkpoint(self.run_dir.path, state.step, full)
            except NonFiniteStateError as error:
                steps = saved_steps(self.run_dir.path)
                last = f"step {steps[-1]}" if steps else "none yet"
                raise TrainingError(
                    f"stopped at step {state.step}: the weights or optimizer state became NaN or "
                    f"inf ({error.keys}). The checkpoints in {self.folder} hold the last finite "
                    f"state ({last}): lower lr, set grad_clip or raise warmup_steps and run again"
                ) from None
        self.world.barrier()

    def resume(self, state: TrainState) -> Path | None:
        """Load the newest intact checkpoint into `state` and return its path; None (state
        untouched) when the run has none. All processes must find the same one."""
        found = load_latest_checkpoint(self.run_dir.path)
        names = self.world.gather(found[1].name if found else None)
        if len(set(names)) > 1:
            seen = ", ".join(f"rank {rank}: {name or 'none'}" for rank, name in enumerate(names))
            raise TrainingError(
                f"the processes find different checkpoints in {self.run_dir} ({seen}); the run "
                "directory must be on a file system that every node sees"
            )
        if found is None:
            return None
        saved, path = found
        state.load_state_dict(saved, path)
        return path
