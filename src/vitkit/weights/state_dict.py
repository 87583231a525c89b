"""Loading a converted state dict into a model, with every key and shape checked first.

Converters produce a state dict in vitkit's naming; this is the single place that compares it with
the model and fails loudly (nanoGPT's habit), before `load_state_dict(strict=True)`.
"""

from __future__ import annotations

import torch
from torch import nn

from vitkit.weights.errors import CheckpointError


def load_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state_dict` into `model` strictly, naming each missing, unexpected or misshapen key."""
    expected = model.state_dict()
    problems = []
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    for key, tensor in state_dict.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            problems.append(
                f"{key}: expected shape {tuple(expected[key].shape)}, found {tuple(tensor.shape)}"
            )
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
