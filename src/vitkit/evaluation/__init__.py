"""Evaluation: top-1/top-5 accuracy, the paper's few-shot linear evaluation and linear probes.
Nothing here yet: it arrives with the evaluation issue."""
