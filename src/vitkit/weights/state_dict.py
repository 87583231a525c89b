"""Loading a converted state dict into a model, with every key and shape checked first.

Converters produce a state dict in vitkit's naming; this is the single place that compares it with
the model and fails loudly (nanoGPT's habit), before `load_state_dict(strict=True)`. A partial
load (strict=False: a backbone into a model with another head, a pruned file) loads what fits
and returns the same full list of what did not, so nothing is skipped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitkit.errors import CheckpointError


class PartialLoadWarning(UserWarning):
    """`load_model(..., strict=False)` left parameters at their initial values; the message lists
    the missing, unexpected and misshapen keys."""


Shape = tuple[int, ...]


@dataclass(frozen=True)
class KeyReport:
    """How a state dict differs from a model's: keys the model has and the file lacks, keys the
    model lacks, and keys both have with different shapes, as (key, model's shape, file's shape).
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, Shape, Shape], ...] = ()

    def __bool__(self) -> bool:
        """True when there is anything to report."""
        return bool(self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        """Every difference, in full: a partial list hides the key that explains the rest."""
        parts = []
        if self.missing:
            parts.append(f"{_count(self.missing, 'missing key')}: {', '.join(self.missing)}")
        if self.unexpected:
            keys = ", ".join(self.unexpected)
            parts.append(f"{_count(self.unexpected, 'unexpected key')}: {keys}")
        if self.mismatched:
            shapes = "; ".join(
                f"{key}: expected shape {expected}, found {found}"
                for key, expected, found in self.mismatched
            )
            parts.append(f"{_count(self.mismatched, 'shape mismatch')}: {shapes}")
        return "; ".join(parts)


def _count(items: tuple, noun: str) -> str:
    plural = "" if len(items) == 1 else ("es" if noun.endswith("ch") else "s")
    return f"{len(items)} {noun}{plural}"


def compare_keys(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> KeyReport:
    """Every difference between `state_dict` and `model.state_dict()` in keys and shapes."""
    expected = model.state_dict()
    return KeyReport(
        missing=tuple(key for key in expected if key not in state_dict),
        unexpected=tuple(key for key in state_dict if key not in expected),
        mismatched=tuple(
            (key, tuple(expected[key].shape), tuple(tensor.shape))
            for key, tensor in state_dict.items()
            if key in expected and tuple(tensor.shape) != tuple(expected[key].shape)
        ),
    )


def load_checked(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, strict: bool = True
) -> KeyReport:
    """Load `state_dict` into `model`, naming each missing, unexpected or misshapen key.

    strict=True: any difference raises a `CheckpointError` that lists them all. strict=False:
    the keys that fit are loaded, the others left as they are, and the differences returned.
    """
    report = compare_keys(model, state_dict)
    if report and strict:
        raise CheckpointError(f"{source} does not fit the model: {report}")
    skipped = set(report.unexpected) | {key for key, _, _ in report.mismatched}
    fitting = {key: tensor for key, tensor in state_dict.items() if key not in skipped}
    model.load_state_dict(fitting, strict=not report)
    return report
