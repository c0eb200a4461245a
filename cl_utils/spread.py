"""How precisely a test split measures a score: bootstrap over documents (LM), binomial error (accuracy).

A test column's perplexity is a mean over tokens, but tokens of one document are not independent draws: resampling
*documents* (with replacement, their token counts and NLL sums together) gives an honest standard error of the mean
NLL. With few documents that error is large whatever the token count, which is why test columns are sized by
documents as well as tokens.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import LMBlocks

__all__ = ["token_nll", "bootstrap_nll_se", "lm_spread", "accuracy_se", "precision_table"]


@torch.no_grad()
def token_nll(model: torch.nn.Module, blocks: LMBlocks, eos_id: int, *, batch_size: int = 32,
              device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per predicted token of ``blocks`` (shifted labels that are not -100): its NLL in nats and the index of the
    document it belongs to (documents end with ``eos_id`` in the packed stream; blocks are consecutive pieces of it).

    The mean of the NLLs is exactly what :func:`cl_utils.evaluation.lm_score` returns, negated (up to float sums).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    nlls, docs = [], []
    seen_eos = 0
    try:
        for start in range(0, len(blocks), batch_size):
            ids = blocks.input_ids[start:start + batch_size]
            mask = blocks.attention_mask[start:start + batch_size]
            labels = blocks.labels[start:start + batch_size]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(device),
                                  ignore_index=-100, reduction="none").view(ids.shape[0], -1).cpu()
            for b in range(ids.shape[0]):
                real = mask[b].bool()
                eos_before = seen_eos + torch.cumsum((ids[b] == eos_id) & real, 0)  # eos at or before each position
                scored = labels[b, 1:] != -100
                # label t + 1 belongs to the document open at position t + 1: eos strictly before it
                doc = eos_before[:-1]
                nlls.append(nll[b][scored].numpy())
                docs.append(doc[scored].numpy())
                seen_eos = int(eos_before[-1])
    finally:
        model.train(was_training)
    return np.concatenate(nlls), np.concatenate(docs)


def bootstrap_nll_se(nll: np.ndarray, doc: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> float:
    """Standard error of the mean per-token NLL, resampling whole documents (their sums and counts) ``n_boot``
    times."""
    if len(nll) == 0:
        raise ValueError("no tokens to resample")
    _, inverse = np.unique(doc, return_inverse=True)
    sums = np.bincount(inverse, weights=nll)
    counts = np.bincount(inverse).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    return float(np.std(sums[picks].sum(1) / counts[picks].sum(1), ddof=1))


def lm_spread(model: torch.nn.Module, blocks: LMBlocks, eos_id: int, *, batch_size: int = 32,
              n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Documents, tokens, mean NLL, its bootstrap standard error and the perplexity's 95 % interval of one split."""
    nll, doc = token_nll(model, blocks, eos_id, batch_size=batch_size)
    se = bootstrap_nll_se(nll, doc, n_boot=n_boot, seed=seed)
    mean = float(nll.mean())
    return {"documents": int(len(np.unique(doc))), "tokens": int(len(nll)), "NLL": mean, "NLL s.e.": se,
            "perplexity": math.exp(mean), "ppl 95% low": math.exp(mean - 1.96 * se),
            "ppl 95% high": math.exp(mean + 1.96 * se)}


def accuracy_se(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` independent texts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def precision_table(exp) -> "pd.DataFrame":
    """One row per test column of ``exp`` (an :class:`cl_utils.experiment.Experiment`), for its base model: ``lm``:
    documents, tokens, NLL with its bootstrap standard error and the perplexity's 95 % interval; ``classification``:
    texts and the binomial standard error of an accuracy of 50 % and of 90 % on that many texts."""
    import pandas as pd

    rows = {}
    if exp.benchmark.task_heads:
        for task in exp.benchmark.tasks:
            n = len(task.test)
            rows[task.name] = {"test texts": n, "per class": task.info["test_per_class"],
                               "s.e. at 50 % (points)": 100 * accuracy_se(0.5, n),
                               "s.e. at 90 % (points)": 100 * accuracy_se(0.9, n)}
        return pd.DataFrame(rows).T
    model = exp.fresh_model()
    eos = exp.base.tokenizer.eos_token_id
    for task in exp.benchmark.columns:
        rows[task.name] = lm_spread(model, task.test, eos, batch_size=exp.eval_batch_size)
    return pd.DataFrame(rows).T
