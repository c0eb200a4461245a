"""The linear probe: the pretrained encoder frozen, only each task's own head trained (classification only).

A reference for what the frozen encoder's features already give: a continual-learning method that trains the
encoder is only worth its cost where it beats this. It cannot forget (task ``j``'s head is trained during task ``j``
only, and nothing it reads from ever changes), so its BWT is 0 by construction.
"""
from __future__ import annotations

import torch

from ..benchmark import Benchmark
from .base import Method, task_head, train_head

__all__ = ["LinearProbe"]


class LinearProbe(Method):
    """Train ``task_head(model, task_id)`` on task ``task_id``; everything else stays as pretrained."""

    name = "linear_probe"

    def prepare(self, model: torch.nn.Module, benchmark: Benchmark) -> torch.nn.Module:
        if not benchmark.task_heads or task_head(model, 0) is None:
            raise ValueError(f"linear_probe needs one head per task (the classification benchmark); benchmark "
                             f"{benchmark.name!r} has none: there is nothing to probe with")
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def parameters(self, model: torch.nn.Module, task_id: int) -> list[torch.nn.Parameter]:
        return train_head(model, task_id, True)

    def end_task(self, model, task_id, task, benchmark) -> None:
        train_head(model, task_id, False)
