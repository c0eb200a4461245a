"""Averaged Gradient Episodic Memory (A-GEM; Chaudhry, Ranzato, Rohrbach & Elhoseiny, ICLR 2019, arXiv:1812.00420).

At the end of each task (but the last) a random share of its training rows enters an episodic memory, as the
paper's implementation and mammoth's ``agem.py`` fill it. From the second task on, every step draws a reference
batch from the memory and takes its gradient ``g_ref``; when the current gradient ``g`` conflicts with it
(``g · g_ref < 0``, the step would raise the memory's loss to first order), ``g`` is projected (eq. 11)::

    g  <-  g - (g · g_ref / g_ref · g_ref) g_ref

so that ``g · g_ref = 0``; a gradient that does not conflict is left unchanged. The projection is over every
trained parameter at once (one flat vector), before gradient clipping. The paper steps with SGD; here AdamW rescales
each coordinate after the projection, so a step can still raise the memory's loss a little. The last task never
enters the memory (no task of the stream would use it): a saved memory does not protect it in a continuation.
Hooks: ``prepare``, ``end_task``, ``loss`` (notes the batch size) and ``after_backward``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..benchmark import Benchmark, Task
from ..distributed import total
from ..training import autocast
from .base import Method
from .buffer import ReplayBuffer, WithMemory
from .er import check_memory, memory_rows

__all__ = ["AGEM", "project"]


@torch.no_grad()
def project(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> bool:
    """A-GEM's projection of ``grads`` (in place) against ``reference``, both lists of same-shaped tensors read
    as one flat vector each. Returns True when they conflicted (and ``grads`` was projected)."""
    dot = sum((g.double() * r.double()).sum() for g, r in zip(grads, reference))
    if dot >= 0:
        return False
    norm = sum(r.double().square().sum() for r in reference)
    if norm == 0:
        return False
    coef = float(dot / norm)
    for g, r in zip(grads, reference):
        g.sub_(r, alpha=coef)
    return True


class AGEM(WithMemory, Method):
    """A-GEM with a memory filled at the end of each task.

    Args:
        memory: the memory's total size as a fraction of one task's training set (mean over the stream), in (0, 1];
            shared equally by the tasks that fill it (all but the last).
        reference_batch_size: memory rows per reference gradient (None: the current batch's size).
        seed: seeds which rows enter the memory and the reference draws.
    """

    name = "agem"
    label_hparams = {"memory": "M"}

    def __init__(self, memory: float = 0.05, *, reference_batch_size: int | None = None, seed: int = 0) -> None:
        self.memory = check_memory("AGEM", memory)
        if reference_batch_size is not None and (isinstance(reference_batch_size, bool) or reference_batch_size < 1):
            raise ValueError(f"AGEM: reference_batch_size must be >= 1 (or None), got {reference_batch_size!r}")
        self.reference_batch_size, self.seed = reference_batch_size, seed
        self.buffer: ReplayBuffer | None = None
        self.per_task = 0
        self.steps = self.projected = 0  # steps trained with a memory to compare with, and those projected
        self._collate = None
        self._batch_size = 1

    def prepare(self, model: torch.nn.Module, benchmark: Benchmark) -> torch.nn.Module:
        capacity = memory_rows(self.memory, benchmark)
        self.per_task = max(1, capacity // max(1, len(benchmark.tasks) - 1))
        if self.buffer is None or not self._loaded:  # a loaded memory (AGEM.load) carries on where it was saved
            self.buffer = ReplayBuffer(capacity, seed=self.seed)
        self._collate = benchmark.collate
        self._n_tasks = len(benchmark.tasks)
        return model

    def end_task(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark) -> None:
        if task_id == self._n_tasks - 1:  # no later task would use it
            return
        generator = torch.Generator().manual_seed(self.seed * 1000 + task_id)
        picked = torch.randperm(len(task.train), generator=generator)[: self.per_task].tolist()
        self.buffer.extend([{k: v.clone() for k, v in task.train[i].items()} for i in picked])

    def first_task_as_naive(self, benchmark: Benchmark) -> bool:
        """The memory is empty until the first task ends: its steps are naive's."""
        return True

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task_id: int) -> torch.Tensor:
        self._batch_size = total(batch["input_ids"].shape[0])  # the global batch's rows (this batch's in one process)
        self._device = batch["input_ids"].device
        return super().loss(model, batch, task_id)

    def after_backward(self, model: torch.nn.Module, task_id: int) -> None:
        if not len(self.buffer):  # the first task: nothing to compare with, naive's step
            return
        self.steps += 1
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        ref = self.buffer.batch(self.reference_batch_size or self._batch_size, self._collate)
        ref = {k: v.to(self._device) for k, v in ref.items()}
        with torch.enable_grad(), autocast(self._device):  # the same precision as the training step
            ref_loss = self.forward(model, ref, task_id).loss
            reference = torch.autograd.grad(ref_loss, params, allow_unused=True)
        reference = [torch.zeros_like(p) if r is None else r for p, r in zip(params, reference)]
        self.projected += project([p.grad for p in params], reference)

    def describe(self) -> dict[str, Any]:
        # not the projected steps: a sign test, it may differ by CPU
        return {"memory": self.memory, "reference_batch_size": self.reference_batch_size, **self.memory_info()}

    def _init_kwargs(self) -> dict[str, Any]:
        return {"memory": self.memory, "reference_batch_size": self.reference_batch_size, "seed": self.seed}
