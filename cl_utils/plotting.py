"""Figures: score-matrix heatmaps and perplexity trajectories, saved as PNG under ``figures/<profile>/``."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .paths import figures_dir
from .stream import StreamResult

__all__ = ["plot_matrix", "plot_trajectories", "save_figure"]


def _row_labels(r: StreamResult) -> list[str]:
    return ["before"] + [f"after {t}" for t in r.tasks]


def plot_matrix(r: StreamResult, ax=None, *, perplexity: bool = True, vmin: float | None = None,
                vmax: float | None = None, title: str | None = None, cbar: bool = True):
    """Heatmap of the score matrix: a row before the stream and after each task, a column per task.

    The extra (pretraining) columns sit right of a white line. With ``perplexity`` the cells show
    exp(NLL) (lower is better); otherwise the raw scores R (higher is better).
    """
    import seaborn as sns

    from matplotlib.colors import LogNorm

    values = np.exp(-r.scores) if perplexity else r.scores
    norm = LogNorm(vmin or np.nanmin(values), vmax or np.nanmax(values)) if perplexity else None
    ax = ax or plt.subplots(figsize=(1.4 * values.shape[1] + 2, 0.6 * values.shape[0] + 1.5))[1]
    sns.heatmap(values, ax=ax, annot=True, fmt=".1f" if perplexity else ".2f", cbar=cbar, norm=norm,
                vmin=None if perplexity else vmin, vmax=None if perplexity else vmax,
                cmap="rocket_r" if perplexity else "rocket", xticklabels=[*r.tasks, *r.extra],
                yticklabels=_row_labels(r), mask=np.isnan(values), linewidths=0.5, linecolor="white",
                cbar_kws={"label": "perplexity (log scale)" if perplexity else "score"} if cbar else None)
    if r.extra:
        ax.axvline(len(r.tasks), color="white", lw=4)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("")
    ax.set_title(title or r.method)
    return ax


def plot_trajectories(r: StreamResult, ax=None, *, title: str | None = None):
    """Perplexity of every column along the stream, one line per column; training spans shaded."""
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    x = np.arange(len(r.scores))
    for j, name in enumerate([*r.tasks, *r.extra]):
        style = "--" if j >= len(r.tasks) else "-"
        ax.plot(x, [math.exp(-s) for s in r.scores[:, j]], style, marker="o", label=name)
    for i in range(len(r.tasks)):
        ax.axvspan(i + 0.5, i + 1.5, color=f"C{i}", alpha=0.07)
    ax.set_xticks(x, _row_labels(r), rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("perplexity (log scale, lower is better)")
    ax.set_title(title or f"{r.method}: perplexity along the stream")
    ax.legend(title="evaluated on", fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return ax


def save_figure(fig, profile: str, name: str) -> Path:
    """Save ``fig`` as ``figures/<profile>/<name>.png`` and return the path."""
    path = figures_dir(profile) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
