"""How long a run trains: its step count and warm-up, from steps, epochs or a time budget.

A run given a time budget (`budget_seconds`) cannot be reproduced bit for bit, since its length
depends on the machine's speed: its step count is planned from a few timed steps of throw-away
state (`calibrate`), then re-planned at each checkpoint (up to REPLAN_UNTIL of the run) from the
measured pace, so that it ends on time even when the machine slows down or speeds up. The warm-up
length stays as first planned; the cosine or linear decay stretches to the new end. Evaluation
time is not training time (`Stopwatch.paused`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace

import torch

from vitkit.errors import TrainingError
from vitkit.training.config import LENGTH_FIELDS, TrainConfig
from vitkit.training.distributed import World
from vitkit.training.schedule import learning_rate

CALIBRATION_STEPS = 3  # timed optimizer steps that turn budget_seconds into a first step count
REPLAN_UNTIL = 0.9  # budgeted runs re-plan their step count at checkpoints until this fraction
# With LENGTH_FIELDS, the fields of the learning-rate plan.
WARMUP_FIELDS = frozenset({"warmup_steps", "warmup_fraction"})


@dataclass(frozen=True)
class Plan:
    """The run's length and warm-up, which fix its learning-rate schedule."""

    total_steps: int
    warmup_steps: int

    def learning_rate(self, step: int, config: TrainConfig) -> float:
        return learning_rate(
            step,
            base=config.lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            decay=config.decay,
        )


class Stopwatch:
    """Training seconds: those of earlier processes of the run plus this one's wall time, less
    the blocks run `paused` (evaluation), as big_vision's chrono pauses for evaluation."""

    def __init__(self, before: float) -> None:
        self._before = before
        self._started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self._before + time.perf_counter() - self._started

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._started += time.perf_counter() - start


def every(interval: int, step: int) -> bool:
    """Whether `step` ends one of the run's intervals of `interval` steps (0: never): the cadence
    of logging, evaluation and checkpoints."""
    return interval > 0 and step % interval == 0


def steps_from_length(config: TrainConfig, steps_per_epoch: int) -> int | None:
    """The step count `steps` or `epochs` asks for; None for a run given a time budget."""
    if config.steps:
        return config.steps
    if config.epochs:
        return max(1, math.ceil(config.epochs * steps_per_epoch))
    return None


def first_plan(
    config: TrainConfig,
    steps_per_epoch: int,
    *,
    seconds_per_step: Callable[[], float],
    world: World,
) -> Plan:
    """The plan of a new run; a budget is divided by `seconds_per_step()` (rank 0's, so that all
    processes stop together)."""
    total = steps_from_length(config, steps_per_epoch)
    if total is None:
        total = world.broadcast(max(1, int(config.budget_seconds / seconds_per_step())))
    return Plan(total, config.warmup_for(total))


def calibrate(
    train_step: Callable[[], object], *, device: torch.device, steps: int = CALIBRATION_STEPS
) -> float:
    """Seconds per optimizer step of `train_step()`, which steps throw-away state (its own model,
    optimizer, loss scaler and batches), after one untimed step (allocation, compilation). The
    CPU and GPU random streams are forked, so the real run starts as it would without this."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        train_step()
        start = time.perf_counter()
        for _ in range(steps):
            train_step()
        return (time.perf_counter() - start) / steps


def resumed_plan(
    saved: Plan,
    config: TrainConfig,
    changed: Collection[str],
    *,
    step: int,
    elapsed: float,
    steps_per_epoch: int,
) -> Plan:
    """The saved plan with the length or warm-up fields `changed` (by --force, or all of them
    when the folder lost its train_config.json) applied. A time budget is turned into steps at
    the pace the run has had so far."""
    plan = saved
    if LENGTH_FIELDS & set(changed):
        total = steps_from_length(config, steps_per_epoch)
        if total is None:
            total = max(step, int(config.budget_seconds / (elapsed / max(step, 1))))
        if total < step:
            raise TrainingError(
                f"the run is at step {step} already; the forced length asks for {total} steps "
                "in all"
            )
        plan = replace(plan, total_steps=total)
    if (LENGTH_FIELDS | WARMUP_FIELDS) & set(changed):
        plan = replace(plan, warmup_steps=config.warmup_for(plan.total_steps))
    return plan


def replanned(plan: Plan, config: TrainConfig, *, step: int, seconds: float, world: World) -> Plan:
    """For a budgeted run past its warm-up: the step count that ends the run on budget at the
    pace measured so far (rank 0's, so that all processes stop together)."""
    budgeted = config.budget_seconds and not (config.steps or config.epochs)
    if not budgeted or step < plan.warmup_steps or step >= REPLAN_UNTIL * plan.total_steps:
        return plan
    remaining = max(0.0, config.budget_seconds - seconds)
    total = world.broadcast(max(step + 1, step + int(remaining / (seconds / step))))
    return replace(plan, total_steps=total)
