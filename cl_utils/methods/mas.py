"""Memory Aware Synapses (MAS; Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars 2018, ECCV, arXiv:1711.09601).

EWC's quadratic penalty (:mod:`cl_utils.methods.quadratic`) with another importance: how sensitive the model's
*output* is to each parameter, averaged over examples (eq. 2 and 4)::

    Ω_i = mean_x | d ||F(x)||_2^2 / d θ_i |        one gradient per example x, its absolute value, then the mean

``F(x)`` is the output before the softmax: for a language model the logits at each real token (the squared norm
averaged over those positions, so ``Ω`` does not grow with the block length), for classification the logits of
the task's own head. No label enters: MAS can measure importance on any unlabelled text of the task's kind (the
inputs a deployed model sees), which neither EWC's empirical Fisher nor SI can. The importances of the tasks add
up (online mode, γ = 1) with the latest weights as the anchor, as in the paper. Each example's gradient is taken
layer by layer inside one batched backward (:mod:`cl_utils.grad_squares`, as EWC's Fisher; a loop of batches of one
for a model with a layer it has no rule for), in eval mode (no dropout). Hooks: ``end_task``, ``penalty``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..benchmark import Benchmark, Task
from ..distributed import sharded_mean
from ..fisher import _restore_modes
from ..grad_squares import GradSquares, supported
from ..training import move
from .base import task_head
from .quadratic import QuadraticPenalty, Tensors

__all__ = ["MAS", "output_sensitivity", "output_norms"]


def output_norms(model: torch.nn.Module, batch: dict[str, torch.Tensor], task_id: int) -> torch.Tensor:
    """``(B,)``: ``||F(x)||^2`` of each row (its labels are not read): the task's own head's logits, or the LM's
    logits' squared norm averaged over the row's real tokens."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    head = task_head(model, task_id)
    if head is not None:  # the task's own head on the pooled features
        return head(out.pooled).float().square().sum(-1)
    logits = out.logits.float()  # (B, L, V)
    real = inputs.get("attention_mask", torch.ones(logits.shape[:2], device=logits.device)).to(logits.dtype)
    return (logits.square().sum(-1) * real).sum(-1) / real.sum(-1)


def output_sensitivity(model: torch.nn.Module, batches, names: list[str], task_id: int, *,
                       max_examples: int, engine: str = "auto") -> Tensors:
    """``mean_x |d ||F(x)||^2 / d θ|`` over at most ``max_examples`` rows of ``batches``, for the parameters
    ``names``, in eval mode (every module's mode is restored afterwards).

    ``engine``: ``"hooks"`` (one batched backward per batch, each row's gradient taken layer by layer and its
    absolute value summed in, :mod:`cl_utils.grad_squares`), ``"loop"`` (one backward per row), or ``"auto"``: the
    hooks where every parameter sits in a layer they have a rule for."""
    named = dict(model.named_parameters())
    params = {n: named[n] for n in names}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    hooks = engine == "hooks" or (engine == "auto" and supported(model, params) is None)
    squares = GradSquares(model, params, acc, absolute=True) if hooks else None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    seen = 0
    try:
        for batch in batches:
            batch = {k: v[:max_examples - seen] for k, v in move(batch, device).items()}
            n = batch["input_ids"].shape[0]
            if squares is not None:
                with squares.recording(torch.ones(n, dtype=torch.float64, device=device)):
                    output_norms(model, batch, task_id).sum().backward()
            else:
                for i in range(n):
                    norm = output_norms(model, {k: v[i:i + 1] for k, v in batch.items()}, task_id).sum()
                    grads = torch.autograd.grad(norm, list(params.values()), allow_unused=True)
                    for a, g in zip(acc.values(), grads):
                        if g is not None:
                            a.add_(g.float().abs())
            seen += n
            if seen >= max_examples:
                break
    finally:
        _restore_modes(modes)
    if seen == 0:
        raise ValueError("MAS: no example to measure the importance on")
    return {n: (a / seen).to(params[n].dtype) for n, a in acc.items()}


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
