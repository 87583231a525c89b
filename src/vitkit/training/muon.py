"""Muon (Jordan et al. 2024): SGD momentum whose update matrix is orthogonalised by a quintic
Newton-Schulz iteration, for the 2-D weights of the encoder (training/optim.py pairs it with
AdamW for the rest).

PyTorch ships Muon (`torch.optim.Muon`), but runs the iteration in bf16 always: on a CPU without
native bf16 (AVX2 alone) those matmuls are emulated, and with the demo's model a training step
took 5x as long (benchmarks/RESULTS.md). This one computes the same update, step for step, in
a dtype of the caller's choosing: bf16 where it is native (then it equals PyTorch's to the bit,
tested), fp32 elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

# The quintic's coefficients (a, b, c) and step count of Muon's reference implementation, also
# torch.optim.Muon's defaults: chosen for the largest slope at zero, not for exact convergence.
COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(update: torch.Tensor, *, dtype: torch.dtype, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with `update`'s singular vectors (singular values
    roughly in [0.5, 1.5]), computed in `dtype`: X / |X|_F, then NS_STEPS times
    X <- a X + (b G + c G^2) X with G = X X^T, on the wide orientation of the matrix."""
    a, b, c = COEFFICIENTS
    tall = update.size(0) > update.size(1)
    x = update.to(dtype)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, with decoupled weight decay; the step of a (fan-out
    A, fan-in B) matrix is lr * 0.2 * sqrt(max(A, B)), which matches AdamW's update RMS, so
    AdamW's learning rate and weight decay carry over ("match_rms_adamw" in PyTorch's)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))
        self.ns_dtype = ns_dtype  # how this machine computes, not part of the saved state
        for group in self.param_groups:
            if bad := [tuple(p.shape) for p in group["params"] if p.ndim != 2]:
                raise ValueError(f"Muon steps 2-D weights only, got shapes {bad}")

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - momentum)
                update = orthogonalize(param.grad.lerp(buffer, momentum), dtype=self.ns_dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-lr * 0.2 * math.sqrt(max(param.shape)))
