"""Figures of notebook 07: cost against sequence length on log-log axes, FLOPs and the measured attention share,
and perplexity against context length for each RoPE setting."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from .attention_flops import ModelShape, crossover_length, fit_exponent, layer_flops

__all__ = ["plot_scaling", "plot_crossover", "plot_context", "plot_position_nll"]


def _length_axis(ax, lengths) -> None:
    """A log x axis labelled at the measured lengths only (1,024 rather than 10^3)."""
    ax.set_xscale("log")
    ax.set_xticks(list(lengths), [f"{int(x):,}" for x in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())

_PANELS = {"seconds": ("forward time (s)", "forward"), "seconds_fwd_bwd": ("forward+backward time (s)", "fwd+bwd"),
           "peak_memory": ("forward peak memory (MiB)", "forward"),
           "peak_memory_fwd_bwd": ("forward+backward peak memory (MiB)", "fwd+bwd")}


def plot_scaling(sweep: dict, title: str, *, min_length: int | None = None):
    """A 2 x 2 grid (time and peak memory, forward and forward+backward) of every variant against n, log-log,
    each line labelled with its fitted exponent (:func:`fit_exponent`); a dotted n^1 and n^2 for reference."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    n = np.asarray(sweep["lengths"], dtype=float)
    for ax, (key, (ylabel, _)) in zip(axes.flat, _PANELS.items()):
        scale = 2 ** 20 if "memory" in key else 1
        for name, values in sweep[key].items():
            pts = [(x, v / scale) for x, v in zip(n, values) if v is not None and v > 0]
            if not pts:
                continue
            k = fit_exponent(sweep["lengths"], values, min_length=min_length)
            ax.plot(*zip(*pts), "o-", ms=4, label=f"{name}: n^{k:.2f}" if k is not None else name)
        top = max((v / scale for vs in sweep[key].values() for v in vs if v), default=1)
        for p, ls in ((1, ":"), (2, "--")):
            ax.plot(n, top * (n / n[-1]) ** p, color="grey", ls=ls, lw=0.8, label=f"n^{p} (reference)")
        ax.set(yscale="log", xlabel="sequence length n (tokens)", ylabel=ylabel)
        _length_axis(ax, sweep["lengths"])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_crossover(shape: ModelShape, lengths: list[int], breakdown: dict[str, dict[str, list[float]]]):
    """Left: one layer's forward FLOPs (attention 4 n^2 d against projections + MLP), crossover marked. Right:
    measured forward time of the attention itself against projections + MLP, per implementation."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    n = np.geomspace(min(lengths), max(lengths), 100)
    flops = layer_flops(shape, n)
    left.plot(n, flops["attention"], label="attention: 4 n² d")
    left.plot(n, flops["projections"] + flops["mlp"], label="projections + MLP: 24 n d²")
    cross = crossover_length(shape)
    left.axvline(cross, color="k", ls="--", lw=0.8)
    left.annotate(f"n = {cross:,.0f}", (cross, flops["attention"].min()), rotation=90, va="bottom", ha="right")
    left.set(title=f"FLOPs of one layer (d = {shape.hidden})", ylabel="forward FLOPs")
    for name, parts in breakdown.items():
        line = right.plot(lengths, parts["attention"], "o-", ms=4, label=f"attention ({name})")
        right.plot(lengths, np.add(parts["projections"], parts["mlp"]), "s:", ms=3, color=line[0].get_color(),
                   label=f"projections + MLP ({name} run)")
    right.set(title="measured forward time of one layer's parts", ylabel="seconds")
    for ax in (left, right):
        ax.set(yscale="log", xlabel="sequence length n (tokens)")
        _length_axis(ax, lengths)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_context(lengths: list[int], ppl: dict[str, list[float]], finetuned: dict[str, list[float]],
                 train_context: int, target: int, *, title: str = ""):
    """Held-out perplexity against evaluation length: one line per setting (fine-tuned ones dashed), the training
    context L (dotted) and the extension target (dashed) marked."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in ppl.items():
        ax.plot(lengths, values, "o-", label=name)
    for name, values in finetuned.items():
        ax.plot(lengths, values, "s--", label=f"{name}, fine-tuned")
    ax.axvline(train_context, color="k", lw=0.8, ls=":")
    ax.axvline(target, color="k", lw=0.8, ls="--")
    ax.set(xlabel="evaluation length n (tokens)", ylabel="held-out perplexity (lower is better)",
           title=title or f"Perplexity against context length (trained at L = {train_context}, target {target})")
    _length_axis(ax, lengths)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_position_nll(nll: dict[str, np.ndarray], train_context: int, *, reference: str = "none", bins: int = 32):
    """Mean NLL at each position of the longest windows minus the ``reference`` setting's at the same position
    (averaged in ``bins`` equal bins), one line per setting. Every setting scores the same text, so subtracting
    the reference removes what the text itself makes easy or hard: above 0 is worse than plain RoPE there."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ref = np.asarray(nll[reference])
    for name, values in nll.items():
        if name == reference:
            continue
        parts = np.array_split(np.arange(len(ref)), bins)
        diff = np.asarray(values) - ref
        ax.plot([p.mean() + 1 for p in parts], [diff[p].mean() for p in parts], label=name)
    ax.axhline(0, color="k", lw=0.8, label=f"{reference} (reference)")
    ax.axvline(train_context, color="k", lw=0.8, ls=":", label=f"L = {train_context}")
    ax.set(xlabel="position in the window (tokens)", ylabel=f"NLL minus {reference}'s (nats)",
           title="Where each setting gains or loses against plain RoPE (windows of the longest length)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
