"""An episodic memory of training rows, shared by ER and A-GEM.

A row is one example as the benchmark's loader gives it, cut out of a collated batch: an LM block
(``input_ids``, ``attention_mask``, ``labels`` of ``(L,)``) or a text (``input_ids``, ``attention_mask`` ``(L,)``,
``labels`` and ``task_ids`` ``()``), stored on the CPU. :meth:`ReplayBuffer.batch` collates sampled rows with the
benchmark's own ``collate``, so a replayed text keeps its task id and is scored through its own head.

Two ways in: :meth:`~ReplayBuffer.reservoir` (Vitter's algorithm R, as ER uses it: after ``n`` rows were offered,
each is held with probability ``capacity / n``, whatever task it came from) and :meth:`~ReplayBuffer.extend` (append
while there is room, as A-GEM fills its memory at the end of each task). The generator's state is part of the saved
buffer, so a reloaded buffer draws exactly what the original would have.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["ReplayBuffer", "WithMemory", "rows_of", "REPLAY_BUFFER"]

REPLAY_BUFFER = "replay_buffer.pt"
Row = dict[str, torch.Tensor]


def rows_of(batch: dict[str, torch.Tensor]) -> list[Row]:
    """The rows of a collated batch, as detached CPU tensors (padding of a text is cut off at its mask's length)."""
    batch = {k: v.detach().to("cpu") for k, v in batch.items()}  # one copy per key, not per row
    n = batch["input_ids"].shape[0]
    lengths = batch["attention_mask"].sum(1).tolist() if "task_ids" in batch else None  # texts: right-padded
    rows = []
    for i in range(n):
        row = {}
        for key, value in batch.items():
            v = value[i]
            if lengths is not None and v.dim() == 1:
                v = v[: int(lengths[i])]
            row[key] = v.clone()
        rows.append(row)
    return rows


class ReplayBuffer:
    """At most ``capacity`` rows, drawn with a ``torch.Generator`` seeded by ``seed``.

    Example::

        buffer = ReplayBuffer(64, seed=0)
        buffer.reservoir(rows_of(batch))
        replay = buffer.batch(16, benchmark.collate)
    """

    def __init__(self, capacity: int, *, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ReplayBuffer: capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.rows: list[Row] = []
        self.seen = 0  # rows offered to reservoir() so far
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def reservoir(self, rows: list[Row]) -> None:
        """Offer ``rows`` to the reservoir (Vitter 1985, algorithm R)."""
        for row in rows:
            self.seen += 1
            if len(self.rows) < self.capacity:
                self.rows.append(row)
                continue
            j = int(torch.randint(self.seen, (1,), generator=self.generator))
            if j < self.capacity:
                self.rows[j] = row

    def extend(self, rows: list[Row]) -> None:
        """Append ``rows`` while there is room (the rest is dropped)."""
        self.rows.extend(rows[: self.capacity - len(self.rows)])

    def sample(self, n: int) -> list[Row]:
        """``min(n, len(self))`` distinct rows, uniformly at random."""
        if not self.rows:
            raise ValueError("ReplayBuffer.sample: the buffer is empty")
        picked = torch.randperm(len(self.rows), generator=self.generator)[:n].tolist()
        return [self.rows[i] for i in picked]

    def batch(self, n: int, collate: Callable[[list[Row]], dict] | None) -> dict[str, torch.Tensor]:
        """A collated batch of :meth:`sample` ``(n)`` (``collate`` None: the rows are stacked)."""
        rows = self.sample(n)
        if collate is not None:
            return collate(rows)
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def tasks(self) -> dict[int, int]:
        """Rows held per task id (texts carry theirs; LM blocks do not: ``{-1: n}``)."""
        counts: dict[int, int] = {}
        for r in self.rows:
            t = int(r["task_ids"]) if "task_ids" in r else -1
            counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def nbytes(self) -> int:
        """Bytes held by the rows' tensors."""
        return sum(t.numel() * t.element_size() for r in self.rows for t in r.values())

    def state(self) -> dict[str, Any]:
        return {"format": 1, "capacity": self.capacity, "seen": self.seen, "rows": self.rows,
                "generator": self.generator.get_state()}

    def save(self, path: str | Path) -> None:
        torch.save(self.state(), path)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ReplayBuffer":
        if not isinstance(state, dict) or state.get("format") != 1:
            raise ValueError("not a replay buffer state written by ReplayBuffer.save (format 1)")
        buffer = cls(state["capacity"])
        buffer.rows, buffer.seen = list(state["rows"]), int(state["seen"])
        buffer.generator.set_state(state["generator"])
        return buffer

    @classmethod
    def load(cls, path: str | Path) -> "ReplayBuffer":
        return cls.from_state(torch.load(path, weights_only=True))


class WithMemory:
    """What ER and A-GEM share about their memory: its bytes, its summary in ``describe``, and saving it with the
    hyper-parameters (``_init_kwargs``) so that ``load`` rebuilds the method with the memory exactly as it was."""

    state_file = REPLAY_BUFFER
    buffer: ReplayBuffer | None = None
    _loaded = False  # a loaded memory carries on where it was saved (prepare keeps it)

    def _init_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.nbytes

    def memory_info(self) -> dict[str, Any]:
        """Capacity, rows held (per task id) and bytes, for ``describe`` (empty before ``prepare``)."""
        if self.buffer is None:
            return {}
        return {"memory_rows": self.buffer.capacity, "rows_held": len(self.buffer), "rows_per_task": self.buffer.tasks(),
                "buffer_bytes": self.buffer.nbytes}

    def save(self, path: str | Path) -> None:
        """The memory (rows, reservoir count and generator state) and the hyper-parameters, in one file."""
        torch.save({"method": self.name, "hparams": self._init_kwargs(), "buffer": self.buffer.state()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: Any = None):
        state = torch.load(path, weights_only=True)
        method = cls(**state["hparams"])
        method.buffer, method._loaded = ReplayBuffer.from_state(state["buffer"]), True
        return method
