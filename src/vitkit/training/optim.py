"""The optimizers of the paper's two stages and gradient clipping, in PyTorch's multi-tensor form.

PyTorch picks its multi-tensor (`foreach`) kernels by default only for CUDA tensors; on a CPU it
falls back to one small kernel per parameter and operation. vitkit asks for `foreach` on every
device: the same update in a few grouped calls (the training rows of benchmarks/speed.py compare
it with timm, which keeps PyTorch's default), at the price of whole-model temporaries in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from vitkit.training.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on kernels only: not on biases, norms, position embeddings or [class] token."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or name in ("pos_embed", "cls_token")
        (no_decay if skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (pre-training: decoupled weight decay) or SGD with momentum (fine-tuning)."""
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=True)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale gradients so that their global L2 norm is at most `max_norm`; returns the norm
    before clipping (non-finite when a gradient is)."""
    return nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)
