"""Figures: score-matrix heatmaps, score trajectories and transfer bars, saved as PNG under ``figures/<profile>/``."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .paths import figures_dir
from .scores import view
from .stream import StreamResult

__all__ = ["plot_matrix", "plot_trajectories", "plot_matrices", "plot_method_trajectories", "plot_transfer",
           "save_figure"]


def _row_labels(r: StreamResult) -> list[str]:
    return ["before"] + [f"after {t}" for t in r.tasks]


def plot_matrix(r: StreamResult, ax=None, *, vmin: float | None = None, vmax: float | None = None,
                title: str | None = None, cbar: bool = True):
    """Heatmap of the score matrix: a row before the stream and after each task, a column per task.

    Cells show the benchmark's readable value (:mod:`cl_utils.scores`): perplexity on a log colour
    scale for "lm", accuracy in % for "classification". Worse is darker. The extra (pretraining)
    columns sit right of a white line. Pass the same ``vmin``/``vmax`` to compare several heatmaps.
    """
    import seaborn as sns

    from matplotlib.colors import LogNorm, Normalize

    v = view(r.benchmark)
    values = v.show(r.scores)
    lo = np.nanmin(values) if vmin is None else vmin  # 0 % accuracy is a valid shared minimum
    hi = np.nanmax(values) if vmax is None else vmax
    norm = LogNorm(lo, hi) if v.log_scale else Normalize(lo, hi)
    ax = ax or plt.subplots(figsize=(1.4 * values.shape[1] + 2, 0.6 * values.shape[0] + 1.5))[1]
    sns.heatmap(values, ax=ax, annot=True, fmt=v.fmt, cbar=cbar, norm=norm,
                cmap="rocket_r" if v.lower_is_better else "rocket", xticklabels=[*r.tasks, *r.extra],
                yticklabels=_row_labels(r), mask=np.isnan(values), linewidths=0.5, linecolor="white",
                cbar_kws={"label": v.name + (" (log scale)" if v.log_scale else "")} if cbar else None)
    if cbar and v.log_scale:
        _plain_log_axis(ax.collections[0].colorbar.ax.yaxis)
    if r.extra:
        ax.axvline(len(r.tasks), color="white", lw=4)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelrotation=0)  # seaborn turns row labels vertical when it thinks they overlap
    ax.set_title(title or (f"{r.method} (task id)" if r.task_identity and not r.task_heads else r.method))
    return ax


def plot_trajectories(r: StreamResult, ax=None, *, title: str | None = None):
    """The readable score of every column along the stream, one line per column; training spans shaded."""
    v = view(r.benchmark)
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    x = np.arange(len(r.scores))
    for j, name in enumerate([*r.tasks, *r.extra]):
        style = "--" if j >= len(r.tasks) else "-"
        ax.plot(x, v.show(r.scores[:, j]), style, marker="o", label=name)
    _shade_tasks(ax, r.tasks)
    ax.set_xticks(x, _row_labels(r), rotation=20)
    if v.log_scale:
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
    ax.set_ylabel(v.label)
    ax.set_title(title or f"{r.method}: {v.name} along the stream")
    ax.legend(title="evaluated on", fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return ax


def _plain_log_axis(axis) -> None:
    """Log-scale ticks as plain numbers (250, 300) instead of 2.5x10^2."""
    from matplotlib.ticker import FormatStrFormatter

    axis.set_major_formatter(FormatStrFormatter("%.0f"))
    axis.set_minor_formatter(FormatStrFormatter("%.0f"))


def _shade_tasks(ax, tasks: list[str]) -> None:
    for i in range(len(tasks)):
        ax.axvspan(i + 0.5, i + 1.5, color=f"C{i}", alpha=0.07)


# Widest figure, in inches, that a notebook shows unscaled: inline figures are drawn at 100 dpi, and JupyterLab's
# output area is about 850 px wide beside the file browser on a 1280 px screen. Wider figures are scaled down,
# and their 10-point cell numbers with them (a 2,000 px figure shown at 850 px has ~6 px tall numbers).
NOTEBOOK_WIDTH = 8.6


def plot_matrices(results: list[StreamResult], *, width: float | None = None, ncols: int | None = None,
                  max_width: float = NOTEBOOK_WIDTH):
    """The heatmaps of several methods on one shared colour scale, ``ncols`` to a row, one colour bar at the right.

    ``width`` is one panel's width in inches (default: from the number of columns evaluated); ``ncols`` defaults
    to as many panels as fit in ``max_width`` inches, so the figure is readable at notebook width.
    """
    if not results:
        raise ValueError("plot_matrices needs at least one result")
    if ncols is not None and ncols < 1:
        raise ValueError(f"plot_matrices: ncols must be >= 1, got {ncols}")
    v = view(results[0].benchmark)
    lo, hi = v.limits([r.scores for r in results])
    n_rows, n_cols = results[0].scores.shape
    width = width or max(2.2, 0.75 * n_cols + 0.5)  # room for 5-digit numbers and a title like "lora_per_task"
    if ncols is None:
        ncols = max(1, int((max_width - 1.5) // width))  # 1.5 in: the row labels and the colour bar
    cols = min(ncols, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.5, (0.36 * n_rows + 1.1) * rows + 0.5),
                             squeeze=False, layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= len(results):
            ax.set_axis_off()
            continue
        plot_matrix(results[k], ax, vmin=lo, vmax=hi, cbar=False)
        if k % cols:
            ax.set_yticklabels([])
        if k < len(results) - cols:  # the panel below shows the same column names
            ax.set_xticklabels([])
            ax.tick_params(axis="x", bottom=False)
            ax.set_xlabel("")
    bar = fig.colorbar(axes.flat[0].collections[0], ax=axes.ravel().tolist(), shrink=0.9,
                       label=v.name + (" (log scale)" if v.log_scale else ""))
    if v.log_scale:
        _plain_log_axis(bar.ax.yaxis)
    told = ("one head per task: every method is told the task" if results[0].task_heads
            else "(task id): told the task at test time")
    fig.suptitle(f"{v.name} after each task, every method on one colour scale; {told}")
    return fig


def plot_method_trajectories(groups: dict[str, list[StreamResult]], *, width: float = 3.9, ncols: int | None = None,
                             max_width: float = NOTEBOOK_WIDTH):
    """One panel per column (task or extra), one line per method: the readable score along the stream,
    the mean over seeds with ± one standard deviation as error bars when there are several.

    Panels are ``width`` inches wide, ``ncols`` to a row (default: as many as fit in ``max_width``); the legend
    sits below them."""
    first = next(iter(groups.values()))[0]
    v = view(first.benchmark)
    names = [*first.tasks, *first.extra]
    x = np.arange(len(first.scores))
    cols = min(len(names), ncols or max(1, int(max_width // width)))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 2.9 * rows + 0.4 * (1 + len(groups) // 4)),
                             squeeze=False, sharex=True, layout="constrained")
    for j, ax in enumerate(axes.flat):
        if j >= len(names):
            ax.set_axis_off()
            continue
        for k, (method, runs) in enumerate(groups.items()):
            shown = np.stack([v.show(r.scores[:, j]) for r in runs])
            mean = shown.mean(axis=0)  # NaN stays NaN: every seed skips the same rows
            err = shown.std(axis=0, ddof=1) if len(runs) > 1 else None
            ok = ~np.isnan(mean)  # joint training has no intermediate rows
            ax.errorbar(x[ok], mean[ok], yerr=None if err is None else err[ok], marker="o", capsize=3,
                        ls="--" if ok.sum() < len(x) else "-", label=method, color=f"C{k}")
        _shade_tasks(ax, first.tasks)
        ax.set_xticks(x, _row_labels(first), rotation=25)
        ax.tick_params(axis="x", labelbottom=j + cols >= len(names))  # names under the lowest panel of a column
        if v.log_scale:
            ax.set_yscale("log")
            _plain_log_axis(ax.yaxis)
        role = " (pretraining)" if j >= len(first.tasks) else ""
        ax.set_title(f"{names[j]}{role}")
        ax.grid(alpha=0.3, which="both")
        if j % cols == 0:
            ax.set_ylabel(v.label)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small")
    return fig


def plot_transfer(mean, std, *, ax=None, unit: str = ""):
    """Grouped bars of BWT and FWT per method (``mean``/``std``: tables indexed by method), std as error bars.
    A metric undefined for every method (FWT with one head per task) is left out rather than drawn as 0."""
    ax = ax or plt.subplots(figsize=(1.1 * len(mean) + 3, 3.8))[1]
    x = np.arange(len(mean))
    metrics = [m for m in ("BWT", "FWT") if mean[m].astype(float).notna().any()]
    for k, metric in enumerate(metrics):
        values = mean[metric].astype(float).to_numpy()
        errors = std[metric].astype(float)
        errors = None if errors.isna().all() else errors.fillna(0).to_numpy()  # one seed: no error bars at all
        bars = ax.bar(x + (k - 0.5) * 0.38, np.nan_to_num(values), 0.38, yerr=errors, capsize=3, label=metric,
                      color=f"C{k}", alpha=0.85)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)  # a bar of exactly 0 is otherwise invisible
    ax.axhline(0, color="k", lw=0.8)
    ax.margins(y=0.15)  # room for the value labels above and below the bars
    ax.set_xticks(x, mean.index, rotation=20)
    ax.set_ylabel(f"transfer ({unit}; higher is better)" if unit else "transfer (higher is better)")
    ax.set_title("Backward and forward transfer" if len(metrics) == 2 else f"{' and '.join(metrics)} (FWT undefined)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return ax


def save_figure(fig, profile: str, name: str) -> Path:
    """Save ``fig`` as ``figures/<profile>/<name>.png`` and return the path."""
    path = figures_dir(profile) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
