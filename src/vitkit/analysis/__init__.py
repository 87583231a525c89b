"""Analysis: the paper's inspection figures. `attention` (rollout, mean attention distance),
`embeddings` (patch-embedding filter components, position-embedding similarity), `plots` (the
PNGs) and `report` (`write_figures`: all of them plus an index.html; `figures_for_dataset`: the
same for a class-balanced choice of a dataset's images)."""

from vitkit.analysis.report import figures_for_dataset, write_figures

__all__ = ["figures_for_dataset", "write_figures"]
