"""Evaluation: top-1 accuracy (more — top-5, few-shot linear evaluation, linear probes — arrives
with the evaluation issue)."""

from vitkit.evaluation.accuracy import top1_accuracy

__all__ = ["top1_accuracy"]
