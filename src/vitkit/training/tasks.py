"""What a run trains a Vision Transformer for (`TrainConfig.task`), chosen once from `TASKS`: the
module the optimizer steps, the loss of its output, and what of it the run saves.

- classify: the Vision Transformer itself, with a head for the data's classes, against the
  augmentation's soft targets (one-hot, smoothed or mixed); the run saves it whole.
- masked_patches: the paper's self-supervised pre-training (models/masked_patches.py), a head
  around a Vision Transformer without a classifier, against the corrupted patches' colours; the
  run saves the encoder alone, which `vitkit.load_model` reads as a plain model and fine-tuning
  (init=) gives a new head.

Training checkpoints hold the whole trained module, so a masked-patch run resumes with its [mask]
embedding and colour head (under their own names beside the encoder's `encoder.` keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.models.config import ViTConfig
from vitkit.models.masked_patches import MaskedPatchModel, masked_patch_loss
from vitkit.models.vit import VisionTransformer

# The modules a run trains, one per task. Each is built from (config, preprocessing=) and answers
# `config`, `preprocessing`, `blocks` and `no_weight_decay()`, which training reads.
TrainedModel = VisionTransformer | MaskedPatchModel


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class probabilities (one-hot, smoothed or mixed)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


@dataclass(frozen=True, kw_only=True)
class Task:
    """One task: its model, its loss and the weights a run of it saves."""

    classifies: bool  # the model's head classifies the data's classes (else it has none)
    model: Callable[[ViTConfig], TrainedModel]  # a new model of an architecture
    loss: Callable[[Any, torch.Tensor], torch.Tensor]  # (model output, targets) -> mean loss
    saved: Callable[[Any], VisionTransformer]  # the trained model -> the weights the run saves


TASKS: dict[str, Task] = {
    "classify": Task(
        classifies=True,
        model=VisionTransformer,
        loss=soft_cross_entropy,
        saved=lambda model: model,
    ),
    "masked_patches": Task(
        classifies=False,
        model=MaskedPatchModel,
        loss=masked_patch_loss,
        saved=lambda model: model.encoder,
    ),
}
