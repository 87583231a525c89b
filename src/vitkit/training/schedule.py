"""Learning-rate schedules as pure functions of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math
from typing import Literal

Decay = Literal["cosine", "linear"]


def learning_rate(
    step: int, *, base: float, total_steps: int, warmup_steps: int, decay: Decay
) -> float:
    """The rate of optimizer step `step` (0-based): linear warm-up from 0 over `warmup_steps`,
    then cosine or linear decay to 0 at `total_steps`, as in the paper's recipes (Appendix B.1)."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    if decay == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base * (1.0 - progress)
