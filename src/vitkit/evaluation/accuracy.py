"""Top-1 accuracy of a classifier on an `ArrayDataset`, with the paper's test-time resize."""

from __future__ import annotations

import torch
from torch import nn

from vitkit.data.arrays import ArrayDataset
from vitkit.data.loader import ArrayLoader
from vitkit.data.transforms import eval_batch


@torch.no_grad()
def top1_accuracy(
    model: nn.Module,
    dataset: ArrayDataset,
    *,
    resolution: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 256,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Fraction of `dataset` whose highest logit is the label; images resized to `resolution`
    (no crop, as the paper's test-time pipeline) and normalised with the model's mean and std."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    loader = ArrayLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False)
    for images, labels in loader:
        inputs = eval_batch(images.to(device), resolution, mean, std)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(inputs)
        correct += (logits.argmax(dim=-1).cpu() == labels).sum().item()
    model.train(was_training)
    return correct / len(dataset)
