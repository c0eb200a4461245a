"""The diagonal Fisher (EWC's consolidation) on the ``embedded``-sized GPT-2, against the floor and a loop.

Targets on N blocks (64 of 128 tokens; ``--quick``: 16 of 32 on a tiny model):

* ``diagonal_fisher`` <= 1.5x one ordinary batched forward+backward over the same N (the floor);
* ``diagonal_fisher`` >= 2x faster than a per-example Python loop (batch of one, ``backward``, ``grad**2``).
"""
from __future__ import annotations

import torch

from cl_utils.fisher import diagonal_fisher

from .common import Row, Setup, compare


def loop_fisher(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference: one backward per example, squared, averaged."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    n_rows = batch["input_ids"].shape[0]
    for i in range(n_rows):
        model.zero_grad(set_to_none=True)
        model(**{k: v[i:i + 1] for k, v in batch.items()}).loss.backward()
        for n, p in params.items():
            acc[n] += p.grad.square()
    return {n: a / n_rows for n, a in acc.items()}


def rows(setup: Setup) -> list[Row]:
    n, block, chunk, repeats = (16, 32, 16, 3) if setup.quick else (64, 128, 16, 5)
    model = setup.model()
    model.eval()  # the Fisher runs without dropout; time the floor and the loop the same way
    data = setup.blocks(n, block, model.config.vocab_size)

    def floor():
        model.zero_grad(set_to_none=True)
        model(**data).loss.backward()

    def floor_chunked():
        model.zero_grad(set_to_none=True)
        for start in range(0, n, chunk):
            model(**{k: v[start:start + chunk] for k, v in data.items()}).loss.backward()

    labels = {"floor": f"batched forward+backward ({n} × {block})",
              "chunked": f"forward+backward in batches of {chunk} (info)",
              "fisher": f"Fisher: `diagonal_fisher` ({n} blocks × {block}, chunk {chunk})",
              "loop": "Fisher: per-example loop"}
    return compare({"floor": lambda: floor, "chunked": lambda: floor_chunked,
                    "fisher": lambda: lambda: diagonal_fisher(model, [data], chunk_size=chunk),
                    "loop": lambda: lambda: loop_fisher(model, data)},
                   {"chunked": "floor", "fisher": "floor", "loop": "fisher"}, labels,
                   {"floor": repeats, "chunked": repeats, "fisher": repeats, "loop": min(3, repeats)},
                   setup.device, modules=[model], targets={"fisher": ("<=", 1.5), "loop": (">=", 2.0)})
