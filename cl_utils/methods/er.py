"""Experience replay (ER): rehearse a small reservoir memory of earlier training rows with every batch.

Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning" (arXiv:1902.10486): each step trains on
the current batch together with a batch of the same size drawn from the memory (one forward pass over the rows of
both, so the loss is their mean, as in the paper and mammoth's ``er.py``), and the current batch then enters the
memory by reservoir sampling, so the memory stays a uniform sample of every row trained on so far.

Hooks: ``prepare`` (the memory's size) and ``loss``. The memory can be saved next to the model
(:data:`~cl_utils.methods.buffer.REPLAY_BUFFER`, by :func:`cl_utils.saving.save_trained`) and reloads exactly.
"""
from __future__ import annotations

from typing import Any

import torch

from ..benchmark import Benchmark
from ..distributed import all_rows, share
from .base import Method
from .buffer import ReplayBuffer, WithMemory, rows_of

__all__ = ["ER", "memory_rows"]


def memory_rows(memory: float, benchmark: Benchmark) -> int:
    """The capacity for ``memory`` = a fraction of one task's training set (the mean over the stream's tasks)."""
    sizes = [len(t.train) for t in benchmark.tasks]
    return max(1, round(memory * sum(sizes) / len(sizes)))


def check_memory(name: str, memory: float) -> float:
    if isinstance(memory, bool) or not isinstance(memory, (int, float)) or not 0 < memory <= 1:
        raise ValueError(f"{name}: memory is a fraction of one task's training set, in (0, 1] (e.g. 0.05), "
                         f"got {memory!r}")
    return float(memory)


class ER(WithMemory, Method):
    """Experience replay with a reservoir memory.

    Args:
        memory: the memory's size as a fraction of one task's training set (mean over the stream), in (0, 1].
        replay_batch_size: rows replayed per step (None: the current batch's size, as in the paper).
        seed: seeds the reservoir and the draws.

    Attributes:
        buffer: the :class:`~cl_utils.methods.buffer.ReplayBuffer` (after ``prepare``).
    """

    name = "er"
    label_hparams = {"memory": "M"}

    def __init__(self, memory: float = 0.05, *, replay_batch_size: int | None = None, seed: int = 0) -> None:
        self.memory = check_memory("ER", memory)
        if replay_batch_size is not None and (isinstance(replay_batch_size, bool) or replay_batch_size < 1):
            raise ValueError(f"ER: replay_batch_size must be >= 1 (or None), got {replay_batch_size!r}")
        self.replay_batch_size, self.seed = replay_batch_size, seed
        self.buffer: ReplayBuffer | None = None
        self._collate = None

    def prepare(self, model: torch.nn.Module, benchmark: Benchmark) -> torch.nn.Module:
        if not self._loaded:  # a loaded memory (ER.load) carries on where it was saved
            self.buffer = ReplayBuffer(memory_rows(self.memory, benchmark), seed=self.seed)
        self._collate = benchmark.collate
        return model

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task_id: int) -> torch.Tensor:
        """The mean loss over the current batch and a replay batch, in one forward pass (texts carry their own task
        id, hence their own head); then the current rows enter the reservoir."""
        mine = rows_of(batch)
        rows = all_rows(mine)  # the whole global batch, on every rank (``mine`` itself in one process)
        if len(self.buffer):  # the same draw on every rank; each replays its share (all of it in one process)
            replay = share(self.buffer.sample(self.replay_batch_size or len(rows)))
            joined = self._collate(mine + replay) if self._collate is not None else \
                {k: torch.stack([r[k] for r in mine + replay]) for k in mine[0]}
            batch = {k: v.to(batch["input_ids"].device) for k, v in joined.items()}
        loss = self.forward(model, batch, task_id).loss
        self.buffer.reservoir(rows)
        return loss

    def describe(self) -> dict[str, Any]:
        return {"memory": self.memory, "replay_batch_size": self.replay_batch_size, **self.memory_info()}

    def _init_kwargs(self) -> dict[str, Any]:
        return {"memory": self.memory, "replay_batch_size": self.replay_batch_size, "seed": self.seed}
