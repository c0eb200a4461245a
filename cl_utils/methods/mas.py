"""Memory Aware Synapses (MAS; Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars 2018, ECCV, arXiv:1711.09601).

EWC's quadratic penalty (:mod:`cl_utils.methods.quadratic`) with another importance: how sensitive the model's
*output* is to each parameter, averaged over examples (eq. 2 and 4)::

    Ω_i = mean_x | d ||F(x)||_2^2 / d θ_i |        one gradient per example x, its absolute value, then the mean

``F(x)`` is the output before the softmax: for a language model the logits at each real token (the squared norm
averaged over those positions, so ``Ω`` does not grow with the block length), for classification the logits of
the task's own head. No label enters: MAS can measure importance on any unlabelled text of the task's kind (the
inputs a deployed model sees), which neither EWC's empirical Fisher nor SI can. The importances of the tasks add
up (online mode, γ = 1) with the latest weights as the anchor, as in the paper. The gradients are taken one example
at a time (a loop of batches of one), in eval mode (no dropout). Hooks: ``end_task``, ``penalty``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..benchmark import Benchmark, Task
from ..distributed import sharded_mean
from ..fisher import _restore_modes
from ..training import move
from .base import task_head
from .quadratic import QuadraticPenalty, Tensors

__all__ = ["MAS", "output_sensitivity"]


def _output_norm(model: torch.nn.Module, row: dict[str, torch.Tensor], task_id: int) -> torch.Tensor:
    """``||F(x)||^2`` of one row (a batch of one, without its labels)."""
    inputs = {k: v for k, v in row.items() if k != "labels"}
    out = model(**inputs)
    head = task_head(model, task_id)
    if head is not None:  # the task's own head on the pooled features
        return head(out.pooled).float().square().sum()
    logits = out.logits.float()[0]  # (L, V)
    real = inputs["attention_mask"][0].bool() if "attention_mask" in inputs else torch.ones(logits.shape[0], dtype=bool)
    return logits[real].square().sum(-1).mean()


def output_sensitivity(model: torch.nn.Module, batches, names: list[str], task_id: int, *,
                       max_examples: int) -> Tensors:
    """``mean_x |d ||F(x)||^2 / d θ|`` over at most ``max_examples`` rows of ``batches``, for the parameters
    ``names``, in eval mode (every module's mode is restored afterwards)."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    device = params[0].device
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    seen = 0
    try:
        for batch in batches:
            batch = move(batch, device)
            for i in range(batch["input_ids"].shape[0]):
                row = {k: v[i:i + 1] for k, v in batch.items()}
                grads = torch.autograd.grad(_output_norm(model, row, task_id), params, allow_unused=True)
                for a, g in zip(acc, grads):
                    if g is not None:
                        a.add_(g.float().abs())
                seen += 1
                if seen >= max_examples:
                    break
            if seen >= max_examples:
                break
    finally:
        _restore_modes(modes)
    if seen == 0:
        raise ValueError("MAS: no example to measure the importance on")
    return {n: (a / seen).to(p.dtype) for n, a, p in zip(names, acc, params)}


class MAS(QuadraticPenalty):
    """Memory Aware Synapses.

    Args:
        lam: penalty strength (``(λ / 2) Σ Ω (θ - θ*)^2``; the paper writes ``λ Σ Ω (θ - θ*)^2``).
        examples: rows of the task's train split per importance (their labels are not read).
        batch_size: rows per loader batch (does not change the value).
    """

    name = "mas"
    state_file = "mas_state.pt"

    def __init__(self, lam: float, *, examples: int = 256, batch_size: int = 16, mode: str = "online",
                 gamma: float = 1.0) -> None:
        super().__init__(lam, mode=mode, gamma=gamma)
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1 or batch_size < 1:
            raise ValueError(f"MAS: examples and batch_size must be ints >= 1, got {examples!r} and {batch_size!r}")
        self.examples, self.batch_size = examples, batch_size

    def importance(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark,
                   names: list[str]) -> Tensors:
        loader = benchmark.loader(task.train, self.batch_size, shuffle=True, seed=task_id)
        # with several processes: the same examples dealt out, sums and counts all-reduced, then divided
        return sharded_mean(lambda batches, n: output_sensitivity(model, batches, names, task_id,
                                                                  max_examples=n or self.examples),
                            loader, self.examples, scored_only=False)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "examples": self.examples}

    def _init_kwargs(self) -> dict[str, Any]:
        return {**super()._init_kwargs(), "examples": self.examples, "batch_size": self.batch_size}
