"""Continual-learning metrics over the accuracy matrix R (higher is better).

``R[i, j]`` is the score on task ``j`` after training task ``i`` (T x T); ``b[j]`` is the score on task
``j`` of the model before the stream. For the LM benchmark a score is minus the mean token NLL in nats,
so a positive backward transfer means old tasks got *better*.

References: GEM (Lopez-Paz & Ranzato, 2017) for ACC, BWT and FWT; Chaudhry et al. (2018) for forgetting.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "summary"]


def _square(R: ArrayLike) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square T x T matrix (row i: after task i, column j: task j); "
                         f"got shape {R.shape}")
    return R


def average_accuracy(R: ArrayLike) -> float:
    """ACC = mean over j of R[T-1, j]: the final score averaged over all tasks."""
    R = _square(R)
    return float(R[-1].mean())


def backward_transfer(R: ArrayLike) -> float:
    """BWT = mean over j < T-1 of (R[T-1, j] - R[j, j]) (GEM, T-1 denominator). 0.0 when T = 1."""
    R = _square(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R: ArrayLike, b: ArrayLike) -> float:
    """FWT = mean over j >= 1 of (R[j-1, j] - b[j]) (GEM, T-1 denominator). 0.0 when T = 1."""
    R = _square(R)
    b = np.asarray(b, dtype=float)
    T = R.shape[0]
    if b.shape != (T,):
        raise ValueError(f"b must have one score per task, length {T}; got shape {b.shape}")
    if T == 1:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting(R: ArrayLike) -> float:
    """Mean over j < T-1 of (max over l in [j, T-2] of R[l, j] - R[T-1, j]) (Chaudhry et al. 2018). 0.0 when T = 1."""
    R = _square(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([R[j:T - 1, j].max() - R[-1, j] for j in range(T - 1)]))


def summary(R: ArrayLike, b: ArrayLike) -> dict[str, float]:
    """All four metrics, keyed ACC, BWT, FWT, forgetting."""
    return {"ACC": average_accuracy(R), "BWT": backward_transfer(R), "FWT": forward_transfer(R, b),
            "forgetting": forgetting(R)}
