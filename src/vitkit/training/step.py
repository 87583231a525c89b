"""One optimizer step: augment this process's share of the global batch, forward and backward per
micro-batch, then clip, step the optimizer (through the loss scaler under fp16) and the EMA.

`batch_size` is the global batch: each of N processes holds its 1/N slice of the same global
batches (so the learning-rate schedule and the step count do not depend on N), and
`micro_batch_size` splits a process's slice into accumulated passes, whose gradients are averaged
across processes only in the last one's backward pass.

Randomness: the augmentation's draws are a function of (seed, step) and each image's index in the
global batch (data/augment.py), so 1 and N processes see the same crops, flips and mixes; dropout
and stochastic depth draw from the global generator, seeded at every step by (seed, step, rank);
FlexiViT's patch size is drawn by (seed, step), the same in every process; NaViT's dropped tokens
come from the global generator, seeded as dropout's. None needs a saved generator state to resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.data.augment import TrainAugment
from vitkit.errors import TrainingError
from vitkit.evaluation.input_forms import InputForm
from vitkit.training import parallel
from vitkit.training.compiling import FirstCompileLimit
from vitkit.training.distributed import World
from vitkit.training.optim import clip_gradients
from vitkit.training.state import TrainState


def _chunks(
    inputs: torch.Tensor | list[torch.Tensor], passes: int
) -> list[torch.Tensor] | list[list[torch.Tensor]]:
    """The micro-batches of a batch tensor, or of a list of packed images, split as
    `torch.chunk` splits (equal parts of ceil(n / passes), the last smaller)."""
    if isinstance(inputs, torch.Tensor):
        return list(inputs.chunk(passes))
    size = -(-len(inputs) // passes)
    return [inputs[start : start + size] for start in range(0, len(inputs), size)]


def model_seed(seed: int, step: int, rank: int) -> int:
    """The seed of process `rank`'s draws inside the model (dropout, stochastic depth) at
    `step`: distinct per process and step, and the same again on resuming."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0])


@dataclass(frozen=True, kw_only=True)
class TrainStep:
    """Runs one optimizer step of a `TrainState` on a global batch (see the module docstring)."""

    augment: TrainAugment
    # The model's output and the (augmented, soft) targets -> the mean loss of the micro-batch
    # (the task's: training/tasks.py).
    loss: Callable[[Any, torch.Tensor], torch.Tensor]
    device: torch.device
    world: World
    seed: int
    # How the augmented images reach the model: square batches, or (NaViT) lists of images of
    # their own sizes, packed; the augmentation gives the batches of the same form.
    form: InputForm
    patch_sizes: tuple[int, ...] = ()  # FlexiViT: one drawn per step; empty: the model's own
    micro_batches: int  # forward/backward passes per step in this process
    grad_clip: float
    autocast_dtype: torch.dtype | None
    checkpoint_folder: Path  # named when the loss becomes NaN
    first_compile: FirstCompileLimit  # the time limit on a compiled model's first step

    def __call__(
        self,
        state: TrainState,
        images: torch.Tensor,
        labels: torch.Tensor,
        sizes: torch.Tensor | None = None,
        *,
        lr: float,
    ) -> float:
        """Step `state` on this process's slice of a global batch (`sizes`: each image's (h, w)
        on its canvas, when the images keep their aspect ratios); returns the slice's mean
        loss."""
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = self.augment(
            images.to(self.device, non_blocking=True),
            labels.to(self.device, non_blocking=True),
            key=(self.seed, state.step),
            first=self.world.rank * len(images),
            total=self.world.size * len(images),
            sizes=sizes,
        )
        total_loss = self.first_compile.run(
            state.model, lambda: self._forward_backward(state, inputs, targets, lr=lr)
        )
        self._optimizer_step(state)
        return total_loss

    def _forward_backward(
        self,
        state: TrainState,
        inputs: torch.Tensor | list[torch.Tensor],
        targets: torch.Tensor,
        *,
        lr: float,
    ) -> float:
        """The gradients of the mean loss, summed over the micro-batches; safe to run again from
        the start (as after an abandoned compile): it clears the gradients and re-seeds."""
        state.optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(model_seed(self.seed, state.step, self.world.rank))
        patch_size = self.patch_size_at(state.step)
        total_loss = 0.0
        passes = self.micro_batches
        for index, (chunk, chunk_targets) in enumerate(
            zip(_chunks(inputs, passes), targets.chunk(passes))
        ):
            parallel.set_gradient_sync(state.model, enabled=index == passes - 1)
            with torch.autocast(
                self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
            ):
                outputs = self.form.forward(state.model, chunk, patch_size=patch_size)
            loss = self.loss(outputs, chunk_targets) / passes
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingError(
                    f"the loss became {value} at step {state.step}; stopping (learning rate "
                    f"{lr:.3g}). The checkpoints in {self.checkpoint_folder} hold the last "
                    "finite state: lower lr or raise warmup_steps and run again"
                )
            total_loss += value
            (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
        return total_loss

    def patch_size_at(self, step: int) -> int | None:
        """FlexiViT: the patch size of `step`, uniform over `patch_sizes` (None without them)."""
        if not self.patch_sizes:
            return None
        draw = np.random.default_rng([self.seed, step]).integers(len(self.patch_sizes))
        return self.patch_sizes[int(draw)]

    def _optimizer_step(self, state: TrainState) -> None:
        if state.scaler is not None:
            state.scaler.unscale_(state.optimizer)
        if self.grad_clip > 0:
            norm = clip_gradients(state.model.parameters(), self.grad_clip)
            if not torch.isfinite(norm) and state.scaler is None:
                raise TrainingError(f"the gradient norm became {norm.item()} at step {state.step}")
        if state.scaler is not None:
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        state.step += 1
