"""Evaluation: accuracy with the paper's test-time pipeline (`accuracy`), frozen representations
(`features`), the paper's few-shot least-squares evaluation (`fewshot`) and a full linear probe
(`linear_probe`)."""

from vitkit.evaluation.accuracy import ClassificationReport, classification_report, top1_accuracy

__all__ = ["ClassificationReport", "classification_report", "top1_accuracy"]
