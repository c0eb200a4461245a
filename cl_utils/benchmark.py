"""The benchmark abstraction every method and notebook is written against.

A benchmark is an ordered list of tasks, each with a ``train``, a ``valid`` and a ``test`` split, plus
evaluation-only columns (``extra``, e.g. the pretraining corpus) and a score function where higher is better.
Choices (a λ, a learning rate) are made on ``valid``; every reported score comes from ``test``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["Task", "Benchmark", "Forward"]

Batch = dict[str, torch.Tensor]
Forward = Callable[[Batch], Any]  # batch -> model output with ``.loss`` / ``.logits``


@dataclass
class Task:
    name: str
    train: Dataset  # items are dicts of tensors
    valid: Dataset  # for choices (hyper-parameters) only
    test: Dataset  # for every reported score
    info: dict[str, Any] = field(default_factory=dict)  # e.g. document and token counts per split


@dataclass
class Benchmark:
    name: str  # "lm", later "classification"; part of every results file name
    tasks: list[Task]  # the stream, in training order
    extra: list[Task]  # evaluation-only columns, scored after every task too
    score: Callable[[Forward, Iterable[Batch]], float]  # higher is better
    score_name: str  # what the score is, for tables and plots
    collate: Callable[[list[Batch]], Batch] | None = None
    # One output head per task (task-incremental classification): every method, and joint training, is told the
    # task at test time, and a task's head is untrained until its task (so forward transfer is undefined).
    task_heads: bool = False

    @property
    def columns(self) -> list[Task]:
        return [*self.tasks, *self.extra]

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=self.collate, drop_last=False)
