"""Frozen representations: what the few-shot evaluation and the linear probe fit on."""

from __future__ import annotations

import numpy as np
import torch

from vitkit.data.arrays import ArrayDataset
from vitkit.evaluation.input_forms import SQUARE
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer


def representation(model: VisionTransformer, inputs: torch.Tensor) -> torch.Tensor:
    """The paper's representation for linear evaluation: the pre-logits (tanh) layer's output
    where the model has one, else the pooled feature the head reads ([class] token or mean)."""
    return model.forward_head(model.forward_features(inputs), pre_logits=True)


def extract_features(
    model: VisionTransformer,
    dataset: ArrayDataset,
    *,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 256,
    progress: str | None = "features",
) -> tuple[torch.Tensor, np.ndarray]:
    """(features (N, D) float32 on the CPU, labels (N,)) of every image of `dataset`, in order,
    on the model's device; images as every command feeds them (square), prepared as
    `preprocessing` says (default: the model's own record)."""
    preprocessing = preprocessing or model.preprocessing
    model.eval()
    outputs = SQUARE.outputs(
        model, dataset, preprocessing=preprocessing, batch_size=batch_size, progress=progress,
        function=lambda inputs: representation(model, inputs),
    )  # fmt: skip
    chunks = [features for features, _ in outputs]
    return torch.cat(chunks), np.asarray(dataset.labels)
