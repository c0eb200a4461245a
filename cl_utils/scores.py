"""How to read a benchmark's score: the one place that knows "lm" scores are -NLL and "classification" scores accuracy.

Every score in a result is "higher is better" (what the metrics need). For people, an LM score reads
better as perplexity (exp of the NLL, lower is better, log scale) and an accuracy as a percentage.

>>> round(float(view("lm").show(-2.0)), 3)
7.389
>>> float(view("classification").show(0.5))
50.0
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["ScoreView", "VIEWS", "view"]


@dataclass(frozen=True)
class ScoreView:
    name: str  # what a shown value is, e.g. "perplexity"
    show: Callable[[np.ndarray | float], np.ndarray | float]  # score -> shown value
    lower_is_better: bool  # of the shown value
    log_scale: bool  # plot the shown value on a log axis
    fmt: str  # format of one shown value in heatmaps and tables
    metric_unit: str  # unit of ACC/BWT/FWT/forgetting (differences of raw scores)

    @property
    def label(self) -> str:
        """Axis label, e.g. ``"perplexity (lower is better)"``."""
        return f"{self.name} ({'lower' if self.lower_is_better else 'higher'} is better)"

    def limits(self, scores: list[np.ndarray]) -> tuple[float, float]:
        """(min, max) of the shown values over several score matrices, NaN ignored: one colour scale for all."""
        shown = [np.asarray(self.show(np.asarray(s, dtype=float))) for s in scores]
        return float(min(np.nanmin(v) for v in shown)), float(max(np.nanmax(v) for v in shown))


def _perplexity(score):
    return np.exp(-np.asarray(score, dtype=float))


def _percent(score):
    return 100 * np.asarray(score, dtype=float)


VIEWS: dict[str, ScoreView] = {
    "lm": ScoreView("perplexity", _perplexity, lower_is_better=True, log_scale=True, fmt=".1f",
                    metric_unit="nats/token"),
    "classification": ScoreView("accuracy %", _percent, lower_is_better=False, log_scale=False, fmt=".1f",
                                metric_unit="accuracy (fraction of 1)"),
}


def view(benchmark: str) -> ScoreView:
    """The :class:`ScoreView` of a benchmark name (``"lm"`` or ``"classification"``)."""
    if benchmark not in VIEWS:
        raise ValueError(f"no score view for benchmark {benchmark!r}; known: {sorted(VIEWS)}")
    return VIEWS[benchmark]
