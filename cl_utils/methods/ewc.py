"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018).

The importance of :mod:`cl_utils.methods.quadratic` is the diagonal Fisher ``F`` on the task's train split, at the
weights just trained, from per-example gradients (:func:`cl_utils.fisher.diagonal_fisher`). Hooks: ``end_task``
(the Fisher and the anchor) and ``penalty``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..benchmark import Benchmark, Task
from ..distributed import sharded_mean
from ..fisher import KINDS, diagonal_fisher
from .quadratic import QuadraticPenalty, Tensors

__all__ = ["EWC"]


class EWC(QuadraticPenalty):
    """Elastic Weight Consolidation (separate) or online EWC.

    Args:
        lam: penalty strength ``lambda`` (>= 0).
        mode: ``"separate"`` (one Fisher and anchor per task) or ``"online"`` (one decayed Fisher, one anchor).
        gamma: decay of the old Fisher in online mode, in (0, 1]; unused in separate mode.
        fisher_examples: train examples (blocks / texts) per Fisher.
        fisher_batch_size: rows per loader batch when computing the Fisher (does not change its value).
        kind: ``"empirical"`` (data labels) or ``"true"`` (labels sampled from the model).

    Attributes: those of :class:`~cl_utils.methods.quadratic.QuadraticPenalty`; ``fishers`` is its ``importances``.
    """

    name = "ewc"

    def __init__(self, lam: float, *, mode: str = "separate", gamma: float = 1.0, fisher_examples: int = 256,
                 fisher_batch_size: int = 16, kind: str = "empirical") -> None:
        super().__init__(lam, mode=mode, gamma=gamma)
        if fisher_examples < 1 or fisher_batch_size < 1:
            raise ValueError(f"EWC: fisher_examples and fisher_batch_size must be >= 1, "
                             f"got {fisher_examples} and {fisher_batch_size}")
        if kind not in KINDS:
            raise ValueError(f"EWC: kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.fisher_examples, self.fisher_batch_size = kind, fisher_examples, fisher_batch_size
        self.name = "online_ewc" if mode == "online" else "ewc"
        self.label_hparams = {"lam": "λ", **({"gamma": "γ"} if mode == "online" else {})}

    @property
    def fishers(self) -> list[Tensors]:
        return self.importances

    def importance(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark,
                   names: list[str]) -> Tensors:
        """The diagonal Fisher on ``task.train`` (``fisher_examples`` rows) at the weights just trained on it."""
        if len(task.train) == 0:
            raise ValueError(f"EWC: task {task.name!r} has an empty train split; the Fisher needs at least one example")
        loader = benchmark.loader(task.train, self.fisher_batch_size, shuffle=True, seed=task_id)
        # with several processes: the same examples dealt out, sums and counts all-reduced, then divided
        return sharded_mean(lambda batches, n: diagonal_fisher(model, batches, kind=self.kind, max_examples=n,
                                                               seed=task_id, parameter_names=names),
                            loader, self.fisher_examples, scored_only=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fisher_examples": self.fisher_examples, "kind": self.kind}

    def _init_kwargs(self) -> dict[str, Any]:
        return {**super()._init_kwargs(), "fisher_examples": self.fisher_examples,
                "fisher_batch_size": self.fisher_batch_size, "kind": self.kind}
