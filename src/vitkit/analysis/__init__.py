"""Analysis: the paper's inspection figures (embedding filters, position-embedding similarity,
mean attention distance, attention rollout). Nothing here yet: it arrives with the evaluation
issue."""
