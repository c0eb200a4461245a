"""Scoring: per-token negative log-likelihood (and perplexity) over a whole split; classification accuracy."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from .distributed import all_sum

__all__ = ["lm_score", "perplexity", "predicted_tokens", "predicted_tokens_per_row", "accuracy"]


def predicted_tokens_per_row(labels: torch.Tensor) -> torch.Tensor:
    """``(B,)``: per row of ``labels`` ``(B, L)``, the tokens a causal LM is scored on (shifted labels that are not
    -100)."""
    return (labels[..., 1:] != -100).sum(-1)


def predicted_tokens(labels: torch.Tensor) -> int:
    """Tokens a causal LM is scored on: the shifted labels that are not -100."""
    return int(predicted_tokens_per_row(labels).sum())


@torch.no_grad()
def lm_score(forward: Callable[[dict[str, torch.Tensor]], Any], batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Minus the mean next-token NLL in nats, averaged per token over every batch (higher is better).

    Uses the model's own shifted-label loss: each batch's mean loss is weighted by its number of
    predicted tokens, so the result is the per-token mean over the split, not a mean of batch means.
    The caller's ``forward`` is responsible for ``model.eval()``.
    """
    total_nll, total_tokens = 0.0, 0
    for batch in batches:
        n = predicted_tokens(batch["labels"])
        if n == 0:
            continue
        loss = forward(batch).loss
        total_nll += float(loss.double()) * n
        total_tokens += n
    total_nll, total_tokens = all_sum(total_nll, total_tokens)  # over the ranks' batches (itself in one process)
    if total_tokens == 0:
        raise ValueError("no tokens to score: every label is -100 or the split is empty")
    return -total_nll / total_tokens


def perplexity(score: float) -> float:
    """Perplexity from an ``lm_score`` (exp of the mean NLL)."""
    return math.exp(-score)


@torch.no_grad()
def accuracy(forward: Callable[[dict[str, torch.Tensor]], Any], batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Share of correctly classified rows over every batch, in [0, 1] (higher is better).

    ``forward(batch).logits`` is ``(B, C)``; a row is correct when its argmax equals ``batch["labels"]`` ``(B,)``.
    Rows labelled -100 are not counted. The caller's ``forward`` is responsible for ``model.eval()``.
    """
    correct, total = 0, 0
    for batch in batches:
        labels = batch["labels"]
        scored = labels != -100
        if not bool(scored.any()):
            continue
        predicted = forward(batch).logits.argmax(-1).to(labels.device)
        correct += int((predicted == labels)[scored].sum())
        total += int(scored.sum())
    correct, total = all_sum(correct, total)  # over the ranks' batches (itself in one process)
    if total == 0:
        raise ValueError("no rows to score: every label is -100 or the split is empty")
    return correct / total
