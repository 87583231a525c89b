"""Analysis: the paper's inspection figures. `attention` (rollout, mean attention distance),
`embeddings` (patch-embedding filter components, position-embedding similarity), `plots` (the
PNGs) and `report` (`write_figures`: all of them plus an index.html)."""

from vitkit.analysis.report import write_figures

__all__ = ["write_figures"]
