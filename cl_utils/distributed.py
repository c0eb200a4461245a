"""Data-parallel streams under ``torchrun``: every rank trains on its share of the same global batch.

    torchrun --standalone --nproc_per_node 2 -m cl_utils run --profile smoke --benchmark lm --method ewc --set lam=30

Plain ``torch.distributed`` and :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on the CPU, NCCL on CUDA),
not ``accelerate``: the runner already owns its loop (AdamW groups, the schedule, clipping, the methods' hooks
between backward and step), and what a data-parallel stream needs beyond DDP's gradient averaging is specific to
this project (the share weights below, sharded Fisher/MAS sums, a replay memory kept the same on every rank, scores
reduced as token totals). ``accelerate`` would add a dependency and a second way of launching
(``accelerate launch --cpu`` starts one process: accelerate#2741) for a ``prepare`` that wraps the same DDP.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is the identity: the one-process path is the one the
notebooks run, bit for bit.

- Training: each global batch (the same on every rank: the loaders are seeded) is cut into ``world`` contiguous
  shares (:func:`share_sizes`); rank ``r`` trains on share ``r``. Its loss is multiplied by ``world * w_r / W``
  (``w``: the tokens its loss averages over), so DDP's mean of the ranks' gradients is the gradient of the mean
  loss over the whole global batch, even when the last batch of an epoch does not split evenly (with equal shares
  the factor is exactly 1). The global batch size and the learning rate do not change with ``world``; gradient
  clipping and the methods' ``after_backward`` hooks see the all-reduced gradient.
- Evaluation: rank ``r`` scores batches ``r, r + world, ...`` (each batch exactly as one process forms it) and the
  token (or row) totals are summed over the ranks (:func:`all_sum`).
- Importances: EWC's Fisher and MAS's sensitivities are means over examples. The examples one process would use are
  dealt out to the ranks (:func:`sharded_mean`); each rank's mean times its count is summed over the ranks with the
  counts, then divided: the mean over all the examples, never the square of an averaged gradient. SI's path
  integral reads the all-reduced gradient and the shared weights, so it is the same on every rank as it is.
- Only rank 0 writes files and shows progress; it builds (or loads) the caches first, the others wait and then
  read them (:func:`main_first`). The reuse cache (:mod:`cl_utils.reuse`) is off in a distributed run.
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["SUPPORTED", "env_world_size", "init", "finish", "world_size", "rank", "is_main", "barrier",
           "main_first", "share_sizes", "share_weights", "take_rows", "check_shares", "shard_loader", "every_nth", "data_parallel",
           "all_sum", "mean", "all_rows", "share", "total", "deal_examples", "sharded_mean", "WEIGHT_KEY"]

# Methods whose state stays correct across ranks (the CLI refuses the others before anything loads). All of them
# today: naive, LoRA and the prompts only need DDP; EWC and MAS reduce their sums; SI reads all-reduced gradients;
# LwF distils per row; ER keeps one memory on every rank (all_rows); A-GEM's reference gradient is taken on the
# same memory batch (the global batch's size) on every rank.
SUPPORTED = frozenset({"naive", "ewc", "online_ewc", "si", "mas", "lwf", "er", "agem", "progressive_prompts",
                       "lora_sequential", "lora_per_task", "olora", "olora_no_penalty", "linear_probe", "joint"})
WEIGHT_KEY = "_share_weight"  # a training batch's factor (see the module docstring); popped before the loss
_local = False  # inside main_first: this process acts alone (no collective)

Batch = dict[str, Any]


def env_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``), without initialising anything."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init() -> None:
    """Join the process group ``torchrun`` describes (NCCL with CUDA, else gloo); nothing with one process."""
    if env_world_size() <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is then this rank's GPU
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return 1 if _local or not dist.is_initialized() else dist.get_world_size()


def rank() -> int:
    return 0 if _local or not dist.is_initialized() else dist.get_rank()


def is_main() -> bool:
    """True on rank 0 (and in one process): the one that writes files and shows progress."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (building caches), the others after it, each as if alone (no collective); then
    every rank takes rank 0's RNG state (Python, NumPy, torch), which building a cache (pretraining) may have moved
    on rank 0 alone, so that what follows draws as one process would."""
    global _local
    many = world_size() > 1
    if many and not is_main():
        dist.barrier()
    _local = True
    try:
        yield
    finally:
        _local = False
    if many and is_main():
        dist.barrier()
    if many:
        state = [(random.getstate(), np.random.get_state(), torch.get_rng_state())]
        dist.broadcast_object_list(state, src=0)
        random.setstate(state[0][0])
        np.random.set_state(state[0][1])
        torch.set_rng_state(state[0][2])


# --- shares of a global batch ------------------------------------------------------------------------------------

def share_sizes(n: int, world: int) -> list[int]:
    """Rows of each rank's share of ``n`` rows: as equal as possible, the first ones one larger."""
    return [n // world + (r < n % world) for r in range(world)]


def _rows_per_key(batch: Batch) -> list[str]:
    n = batch["input_ids"].shape[0]
    return [k for k, v in batch.items() if torch.is_tensor(v) and v.ndim and v.shape[0] == n]


def take_rows(batch: Batch, index: torch.Tensor | slice) -> Batch:
    """The rows ``index`` of a collated batch (keys without a row dimension are kept whole)."""
    rows = set(_rows_per_key(batch))
    return {k: v[index] if k in rows else v for k, v in batch.items()}


def _tokens(labels: torch.Tensor) -> torch.Tensor:
    """``(B,)``: what each row's loss averages over: its predicted tokens for an LM's ``(B, L)`` labels (shifted,
    not -100), 1 for a labelled row of classification's ``(B,)``."""
    if labels.is_floating_point():
        return torch.ones(labels.shape[0])
    return (labels[:, 1:] != -100).sum(1) if labels.ndim > 1 else (labels != -100).long()


def share_weights(labels: torch.Tensor, world: int) -> list[float]:
    """Each share's loss factor ``world * w_r / W`` (1.0 for equal shares of equal rows)."""
    per_row = _tokens(labels).double()
    sizes = share_sizes(labels.shape[0], world)
    bounds = [sum(sizes[:r]) for r in range(world + 1)]
    w = [float(per_row[bounds[r]:bounds[r + 1]].sum()) for r in range(world)]
    total_w = sum(w)
    return [world * x / total_w if total_w else 1.0 for x in w]


class _ShardedLoader:
    """Yields this rank's share of each global batch of ``loader``, with its factor under :data:`WEIGHT_KEY`."""

    def __init__(self, loader: torch.utils.data.DataLoader, rank: int, world: int) -> None:
        self.loader, self.rank, self.world = loader, rank, world
        self.dataset, self.batch_size, self.collate_fn = loader.dataset, loader.batch_size, loader.collate_fn

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            n = batch["input_ids"].shape[0]
            if n < self.world:
                raise ValueError(f"a global batch of {n} rows cannot be shared by {self.world} processes (each needs "
                                 f"one): choose a batch size, and split sizes, whose every batch has >= {self.world}")
            sizes = share_sizes(n, self.world)
            start = sum(sizes[: self.rank])
            yield {**take_rows(batch, slice(start, start + sizes[self.rank])),
                   WEIGHT_KEY: share_weights(batch["labels"], self.world)[self.rank]}


def check_shares(splits: dict[str, int], batch_size: int, steps: int) -> None:
    """Before training: raise ``ValueError`` if a batch of ``batch_size`` rows, or the last (partial) batch of an
    epoch of a split of ``splits`` (name -> rows) that ``steps`` reach, has fewer rows than processes. Nothing in
    one process."""
    world = world_size()
    short = {name: n % batch_size for name, n in splits.items()
             if 0 < n % batch_size < world and steps > n // batch_size}
    if world > 1 and (batch_size < world or short):
        what = f"a batch of {batch_size} rows" if batch_size < world else ", ".join(
            f"{name}'s last batch of an epoch has {k} row(s)" for name, k in short.items())
        raise ValueError(f"{what}: {world} processes need at least one row each; choose a batch size (and split "
                         f"sizes) whose every batch has >= {world} rows, or fewer processes")


def shard_loader(loader: torch.utils.data.DataLoader):
    """``loader`` itself in one process; else its batches cut into this rank's shares (:class:`_ShardedLoader`)."""
    return loader if world_size() == 1 else _ShardedLoader(loader, rank(), world_size())


def every_nth(batches: Iterable[Batch]) -> Iterable[Batch]:
    """For scoring: this rank's batches ``rank, rank + world, ...`` (all of them in one process)."""
    if world_size() == 1:
        return batches
    r, w = rank(), world_size()
    return (b for i, b in enumerate(batches) if i % w == r)


class _LossModule(torch.nn.Module):
    """What DDP wraps: the model (and trainable parameters outside it, e.g. prompts) and the loss of a share."""

    def __init__(self, loss_fn: Callable[[Batch], torch.Tensor], model: torch.nn.Module,
                 params: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.loss_fn, self.model = loss_fn, model
        inside = {id(p) for p in model.parameters()}
        self.outside = torch.nn.ParameterList([p for p in params if id(p) not in inside])

    def forward(self, batch: Batch) -> torch.Tensor:
        weight = batch.pop(WEIGHT_KEY, 1.0)
        return self.loss_fn(batch) * weight


def data_parallel(loss_fn: Callable[[Batch], torch.Tensor], model: torch.nn.Module,
                  params: list[torch.nn.Parameter]) -> Callable[[Batch], torch.Tensor]:
    """``loss_fn`` itself in one process; else the same loss through DDP, whose backward all-reduces (averages) the
    gradients of every trainable parameter of ``model`` and of ``params``. Built per task (after ``begin_task``):
    which parameters train changes from task to task (prompts, adapters, heads)."""
    if world_size() == 1:
        return loss_fn
    module = _LossModule(loss_fn, model, params)
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
        find_unused_parameters=True)  # other tasks' heads, frozen adapters: no gradient this task


# --- reductions -------------------------------------------------------------------------------------------------

def all_sum(*values: float) -> tuple[float, ...]:
    """The sums over the ranks of Python numbers (float64); the numbers themselves in one process."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return tuple(t.tolist())


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks of a tensor (a copy); the tensor itself in one process."""
    if world_size() == 1:
        return value
    t = value.detach().clone()
    dist.all_reduce(t)
    return t / world_size()


def total(n: int) -> int:
    """The sum over the ranks of an int (e.g. a global batch's rows); ``n`` in one process."""
    return n if world_size() == 1 else int(round(all_sum(float(n))[0]))


def all_rows(rows: list) -> list:
    """Every rank's ``rows``, rank 0's first (the global batch, in order, on every rank); ``rows`` in one process."""
    if world_size() == 1:
        return rows
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


def share(items: list) -> list:
    """This rank's contiguous share of ``items`` (the same on every rank), as :func:`share_sizes` cuts a batch."""
    if world_size() == 1:
        return items
    sizes = share_sizes(len(items), world_size())
    start = sum(sizes[: rank()])
    return items[start:start + sizes[rank()]]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# --- importances: a mean over examples, dealt out -------------------------------------------------------------------

def _scored(labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: rows a loss counts (what :func:`cl_utils.fisher.diagonal_fisher` skips otherwise)."""
    return _tokens(labels) > 0


def deal_examples(batches: Iterable[Batch], max_examples: int | None, rank: int, world: int, *,
                  scored_only: bool) -> tuple[list[Batch], int]:
    """The examples one process would take from ``batches`` (the first ``max_examples``, counting only scored rows
    when ``scored_only``), dealt round-robin: rank ``r`` gets examples ``r, r + world, ...``, as sub-batches of the
    original batches. Returns them and how many rows they hold."""
    mine, count, taken = [], 0, 0
    for batch in batches:
        keep = _scored(batch["labels"]) if scored_only else torch.ones(batch["input_ids"].shape[0], dtype=torch.bool)
        index = torch.nonzero(keep).flatten()
        if max_examples is not None:
            index = index[: max_examples - taken]
        order = torch.arange(taken, taken + len(index))
        taken += len(index)
        own = index[order % world == rank]
        if len(own):
            mine.append(take_rows(batch, own))
            count += len(own)
        if max_examples is not None and taken >= max_examples:
            break
    return mine, count


def sharded_mean(measure: Callable[[Iterable[Batch], int | None], dict[str, torch.Tensor]],
                 batches: Iterable[Batch], max_examples: int | None, *, scored_only: bool) -> dict[str, torch.Tensor]:
    """``measure(batches, max_examples)``, a mean over examples (a Fisher), in one process. With several, the same
    mean: each rank measures its dealt examples (:func:`deal_examples`), and the means times their counts and the
    counts are summed over the ranks before the division."""
    if world_size() == 1:
        return measure(batches, max_examples)
    mine, count = deal_examples(batches, max_examples, rank(), world_size(), scored_only=scored_only)
    if count == 0:
        raise ValueError(f"rank {rank()} got no example of the {max_examples} to measure: use at least "
                         f"{world_size()} examples (one per process)")
    means = measure(mine, None)
    names = list(means)
    flat = torch.cat([means[n].detach().double().flatten() * count for n in names]
                     + [torch.tensor([float(count)], dtype=torch.float64, device=means[names[0]].device)])
    dist.all_reduce(flat)
    sums, n = flat[:-1], flat[-1]
    out, at = {}, 0
    for name in names:
        size = means[name].numel()
        out[name] = (sums[at:at + size] / n).view_as(means[name]).to(means[name].dtype)
        at += size
    return out
