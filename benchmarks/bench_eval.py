"""Evaluation throughput: ``cl_utils.evaluation.lm_score`` over N blocks against a plain ``model(**batch)``
loop over the same batches under ``torch.no_grad`` (the floor), on the ``embedded``-sized GPT-2 in eval mode:
64 blocks of 128 tokens in batches of 16. Target: lm_score <= 1.05x the floor's time."""
from __future__ import annotations

import torch

from cl_utils.evaluation import lm_score

from .common import Row, Setup, compare


def rows(setup: Setup) -> list[Row]:
    n, block, batch, repeats = (16, 32, 4, 5) if setup.quick else (64, 128, 16, 11)
    model = setup.model().eval()
    data = setup.blocks(n, block, model.config.vocab_size)
    batches = [{k: v[i:i + batch] for k, v in data.items()} for i in range(0, n, batch)]

    @torch.no_grad()
    def plain():
        for b in batches:
            model(**b)

    labels = {"plain": "plain no_grad `model(**batch)` loop",
              "score": f"evaluation: `lm_score` ({n} blocks × {block}, batch {batch})"}
    return compare({"plain": lambda: plain, "score": lambda: lambda: lm_score(lambda b: model(**b), batches)},
                   {"score": "plain"}, labels, repeats, setup.device, modules=[model],
                   targets={"score": ("<=", 1.05)}, tokens=n * block)
