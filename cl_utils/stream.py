"""The stream runner: train a method task after task and score every column after each one.

The result is a score matrix with one row before the stream and one row after each task:
``scores[0]`` is the untouched base model (``b``), ``scores[i + 1, j]`` is column ``j`` after training
task ``i`` (``R[i, j]`` for the stream tasks; the extra columns come last). Every score is on the ``test``
splits. ``valid=True`` also scores each task's ``valid`` split once, at the end of the stream (``result.valid``):
what a choice between runs (a λ, a learning rate) is made on.

With one head per task (``benchmark.task_heads``) and a ``head_lr``, the heads train in their own AdamW group at
``head_lr``, the same for every method, whatever learning rate the method's own parameters use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler

from .benchmark import Benchmark
from .config import TrainSpec
from .distributed import check_shares, data_parallel, every_nth, shard_loader
from .methods import Method, task_head
from .metrics import summary
from .models import count_parameters
from .repro import set_seed
from .reuse import before_scores, first_task
from .training import autocast, move, train_steps

__all__ = ["StreamResult", "score_split", "evaluate_columns", "evaluate_valid", "param_groups", "run_stream", "run_joint"]


@dataclass
class StreamResult:
    method: str
    tasks: list[str]  # stream task names, in order
    extra: list[str]  # evaluation-only column names
    scores: np.ndarray  # (T + 1, T + E); NaN where a row was not evaluated (joint training)
    train_seconds: float  # optimiser steps plus the end-of-task work a later task uses (e.g. the Fisher); no evaluation
    trainable_params: int  # distinct parameters (elements) trained at some point of the stream
    total_params: int
    losses: list[list[float]] = field(default_factory=list)  # per task, the loss of every step
    hparams: dict[str, Any] = field(default_factory=dict)
    benchmark: str = "lm"  # the benchmark's name: says how to read a score (see cl_utils.scores)
    model: Any = field(default=None, repr=False, compare=False)  # the trained (possibly wrapped) model; not saved
    task_identity: bool = False  # told the task at test time (a per-task prompt, adapter or head)
    task_heads: bool = False  # one head per task: a task's head is untrained before its task, so FWT is undefined
    closing_seconds: float = 0.0  # the last task's end-of-task work (e.g. its Fisher): no task of the stream uses
    # it, only a continuation of the stream would (the saved ewc_state.pt), so it is not in train_seconds
    valid: list[float] | None = None  # each stream task's valid score after the whole stream (run with valid=True)
    state_bytes: int | None = 0  # what the method keeps besides the model (buffer, teacher, importances); None: not
    # recorded (a results file written before it was)
    reused: list[str] = field(default_factory=list)  # work kept from an earlier stream, the same bit for bit
    # (cl_utils.reuse): "before" (the untouched model's scores), "first_task" (naive's first task), "first_row"
    # (the scores right after it)

    @property
    def R(self) -> np.ndarray:
        return self.scores[1:, : len(self.tasks)]

    @property
    def b(self) -> np.ndarray:
        return self.scores[0, : len(self.tasks)]

    @property
    def state_mb(self) -> float:
        """``state_bytes`` in MiB; NaN when not recorded."""
        return float("nan") if self.state_bytes is None else self.state_bytes / 2**20

    @property
    def valid_acc(self) -> float:
        """The mean valid score over the tasks after the stream: ACC on ``valid``, what choices are made on."""
        if self.valid is None:
            raise ValueError(f"{self.method}: no valid scores; run it with valid=True (Experiment.run(..., valid=True))")
        return float(np.mean(self.valid))

    def metrics(self) -> dict[str, float | None]:
        """ACC, BWT, FWT and forgetting; only ACC where intermediate rows were not evaluated. FWT is None with
        one head per task: before its task, a task is scored through an untrained, random head."""
        if np.isnan(self.R[:-1]).any():
            return {"ACC": float(self.R[-1].mean()), "BWT": None, "FWT": None, "forgetting": None}
        out = summary(self.R, self.b)
        return {**out, "FWT": None} if self.task_heads else out


def score_split(model: torch.nn.Module, method: Method, benchmark: Benchmark, dataset, task_id: int | None, *,
                batch_size: int, device: torch.device) -> float:
    """The benchmark's score of ``model`` on ``dataset`` through ``method.forward(..., task_id)``, in eval mode
    (the model's mode is restored afterwards). The one way every score in a run is computed."""
    was_training = model.training
    model.eval()

    def forward(batch):
        with autocast(device):
            return method.forward(model, move(batch, device), task_id)

    try:
        return benchmark.score(forward, every_nth(benchmark.loader(dataset, batch_size)))  # all batches in one process
    finally:
        model.train(was_training)


def evaluate_columns(model: torch.nn.Module, method: Method, benchmark: Benchmark, *, batch_size: int,
                     device: torch.device) -> list[float]:
    """Score every stream task (as its own task id) and every extra column (task id None), on ``test``."""
    ids: list[int | None] = [*range(len(benchmark.tasks)), *([None] * len(benchmark.extra))]
    return [score_split(model, method, benchmark, task.test, task_id, batch_size=batch_size, device=device)
            for task_id, task in zip(ids, benchmark.columns)]


def evaluate_valid(model: torch.nn.Module, method: Method, benchmark: Benchmark, *, batch_size: int,
                   device: torch.device) -> list[float]:
    """Score every stream task (as its own task id) on its ``valid`` split."""
    return [score_split(model, method, benchmark, task.valid, task_id, batch_size=batch_size, device=device)
            for task_id, task in enumerate(benchmark.tasks)]


def _before(model, benchmark, batch_size, device) -> tuple[list[float], bool]:
    """The untouched model's test scores (the same for every method and stream: kept once, cl_utils.reuse)."""
    return before_scores(model, [c.test for c in benchmark.columns], batch_size,
                         lambda: evaluate_columns(model, Method(), benchmark, batch_size=batch_size, device=device),
                         tag=f"{benchmark.name}:{benchmark.score_name}")


def param_groups(model: torch.nn.Module, params: list[torch.nn.Parameter], benchmark: Benchmark,
                 head_lr: float | None) -> list[dict]:
    """AdamW groups: the task heads among ``params`` at ``head_lr``, the rest at the method's lr (one group, no
    ``"lr"``, when the benchmark has no heads or ``head_lr`` is None)."""
    heads = set()
    if benchmark.task_heads and head_lr is not None:
        heads = {id(p) for t in range(len(benchmark.tasks)) for p in task_head(model, t).parameters()}
    own = [p for p in params if id(p) not in heads]
    head = [p for p in params if id(p) in heads]
    return [{"params": own}] + ([{"params": head, "lr": head_lr}] if head else [])


def run_stream(model: torch.nn.Module, benchmark: Benchmark, method: Method, spec: TrainSpec, *, seed: int,
               eval_batch_size: int = 32, progress: bool = True, valid: bool = False,
               head_lr: float | None = None) -> StreamResult:
    """Train ``method`` on each task of ``benchmark`` in turn, scoring all columns (``test``) after each task, and
    the tasks' ``valid`` splits once at the end when ``valid``. ``head_lr``: see the module docstring."""
    device = next(model.parameters()).device
    check_shares({t.name: len(t.train) for t in benchmark.tasks}, spec.batch_size, spec.steps)  # >= 1 row a process
    set_seed(seed)
    before, kept = _before(model, benchmark, eval_batch_size, device)
    rows, reused = [before], ["before"] if kept else []
    model = method.prepare(model, benchmark)
    trained: dict[int, torch.nn.Parameter] = {}  # holding the parameters keeps their ids unique
    losses, seconds, closing = [], 0.0, 0.0
    T = len(benchmark.tasks)
    for task_id, task in enumerate(benchmark.tasks):
        method.begin_task(model, task_id, task)
        params = method.parameters(model, task_id)
        trained.update({id(p): p for p in params})

        model.train()
        groups = param_groups(model, params, benchmark, head_lr)
        loader_seed = seed * 1000 + task_id
        loader = shard_loader(benchmark.loader(task.train, spec.batch_size, shuffle=True, seed=loader_seed))

        def train(t=task_id, groups=groups, loader=loader, params=params):
            loss = data_parallel(lambda batch: method.loss(model, batch, t), model, params)  # itself in one process
            return train_steps(loss, groups, loader, spec, device=device,
                               desc=f"{method.label} · task {t + 1}/{T} ({task.name})", progress=progress,
                               after_backward=lambda: method.after_backward(model, t),
                               after_step=lambda: method.after_step(model, t))

        if task_id == 0 and method.first_task_as_naive(benchmark):  # the same steps as naive's: kept once
            log, kept = first_task(model, groups, loader, spec, loader_seed, train, progress=progress,
                                   tag=f"{benchmark.name}:{task.name}")
            reused += ["first_task"] if kept else []
        else:
            log = train()
        start = time.perf_counter()
        method.end_task(model, task_id, task, benchmark)  # e.g. EWC's Fisher pass: part of the method's cost
        losses.append(log.losses)
        end_seconds = time.perf_counter() - start
        seconds += log.seconds + (end_seconds if task_id < T - 1 else 0.0)
        closing = end_seconds if task_id == T - 1 else closing
        score = lambda: evaluate_columns(model, method, benchmark, batch_size=eval_batch_size, device=device)  # noqa: E731
        if task_id == 0 and method.first_task_as_naive(benchmark) and type(method).forward is Method.forward:
            # naive's weights (unless end_task changed them: then the key differs) through the plain forward
            row, kept = before_scores(model, [c.test for c in benchmark.columns], eval_batch_size, score,
                                      tag=f"{benchmark.name}:{benchmark.score_name}", kind="after-first")
            reused += ["first_row"] if kept else []
        else:
            row = score()
        rows.append(row)
    valid_scores = evaluate_valid(model, method, benchmark, batch_size=eval_batch_size, device=device) if valid else None
    return StreamResult(method.name, [t.name for t in benchmark.tasks], [t.name for t in benchmark.extra],
                        np.array(rows), seconds, sum(p.numel() for p in trained.values()), count_parameters(model),
                        losses, method.describe(), benchmark.name, model,
                        task_identity=method.needs_task_id or benchmark.task_heads, task_heads=benchmark.task_heads,
                        closing_seconds=closing, valid=valid_scores, state_bytes=method.state_bytes(), reused=reused)


def run_joint(model: torch.nn.Module, benchmark: Benchmark, spec: TrainSpec, *, seed: int,
              eval_batch_size: int = 32, progress: bool = True, valid: bool = False,
              head_lr: float | None = None) -> StreamResult:
    """The multitask reference: one run on the union of all tasks, with the stream's total budget. It is a
    reference, not an upper bound: a method of the stream can beat it on a task.

    Batches draw every task equally often (as the stream does), whatever the tasks' sizes.

    Only the final row of R exists (the model never sees the tasks one by one), so BWT, FWT and
    forgetting are undefined for it.
    """
    device = next(model.parameters()).device
    set_seed(seed)
    T = len(benchmark.tasks)
    before, kept = _before(model, benchmark, eval_batch_size, device)
    union = ConcatDataset([t.train for t in benchmark.tasks])
    check_shares({"joint": len(union)}, spec.batch_size, spec.steps * T)  # several processes: >= 1 row each
    weights = torch.cat([torch.full((len(t.train),), 1.0 / len(t.train)) for t in benchmark.tasks])
    sampler = WeightedRandomSampler(weights, num_samples=len(union), replacement=True,
                                    generator=torch.Generator().manual_seed(seed * 1000))
    loader = shard_loader(DataLoader(union, batch_size=spec.batch_size, sampler=sampler, collate_fn=benchmark.collate))
    budget = TrainSpec(**{**spec.__dict__, "steps": spec.steps * T})
    method = Method()
    model.train()
    groups = param_groups(model, method.parameters(model, 0), benchmark, head_lr)
    loss = data_parallel(lambda b: model(**b).loss, model, [p for g in groups for p in g["params"]])
    log = train_steps(loss, groups, loader, budget, device=device, desc=f"joint · {T} tasks",
                      progress=progress)
    final = evaluate_columns(model, method, benchmark, batch_size=eval_batch_size, device=device)
    valid_scores = evaluate_valid(model, method, benchmark, batch_size=eval_batch_size, device=device) if valid else None
    nan = [float("nan")] * len(final)
    return StreamResult("joint", [t.name for t in benchmark.tasks], [t.name for t in benchmark.extra],
                        np.array([before, *([nan] * (T - 1)), final]), log.seconds,
                        count_parameters(model, trainable_only=True), count_parameters(model), [log.losses],
                        {"steps": budget.steps}, benchmark.name, model, task_identity=benchmark.task_heads,
                        task_heads=benchmark.task_heads, valid=valid_scores, reused=["before"] if kept else [])
