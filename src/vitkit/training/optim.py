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

from vitkit import devices
from vitkit.errors import ConfigError
from vitkit.training.config import TrainConfig
from vitkit.training.muon import Muon


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on kernels only: not on biases and norms (1-D), nor on what the model names
    in `no_weight_decay()` (position embeddings, tokens, relative biases: timm's convention)."""
    declared = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name in declared else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer | MuonAdamW:
    """AdamW (pre-training: decoupled weight decay), SGD with momentum (fine-tuning), or Muon for
    the encoder's weight matrices with AdamW for the rest."""
    if config.optimizer == "muon":
        return MuonAdamW(model, config)
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=True)


class MuonAdamW:
    """Muon (training/muon.py: momentum orthogonalised by Newton-Schulz iterations, in bf16 where
    it is native, else fp32) on the 2-D weights of the encoder blocks, AdamW on everything else
    (embeddings, the ResNet stem, norms, biases, the head), as current speed-run practice does;
    one optimizer to the loop. Muon's update is scaled to AdamW's RMS, so both take the same lr
    and weight decay and the schedule sets both through `param_groups`."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        matrices = {
            id(param)
            for param in model.blocks.parameters()
            if param.requires_grad and param.ndim == 2
        }
        if not matrices:
            raise ConfigError(
                "optimizer muon orthogonalises the encoder blocks' weight matrices and this model "
                "has none (depth 0); use optimizer adamw or sgd"
            )
        adamw_groups = [
            {**group, "params": [p for p in group["params"] if id(p) not in matrices]}
            for group in param_groups(model, config.weight_decay)
        ]
        device = next(model.parameters()).device
        self.muon = Muon(
            [p for p in model.parameters() if id(p) in matrices],
            lr=config.lr,
            weight_decay=config.weight_decay,
            ns_dtype=torch.bfloat16 if devices.native_bf16(device) else torch.float32,
        )
        self.adamw = torch.optim.AdamW(
            adamw_groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=True
        )

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale gradients so that their global L2 norm is at most `max_norm`; returns the norm
    before clipping (non-finite when a gradient is)."""
    return nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)
