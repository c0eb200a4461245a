"""The one small interface every continual-learning method implements (cf. mammoth's ``observe``/``end_task``).

The stream runner (:mod:`cl_utils.stream`) calls, in order::

    model = method.prepare(model, benchmark)            # once: validate, freeze, wrap with adapters
    for task_id, task in enumerate(benchmark.tasks):
        method.begin_task(model, task_id, task)         # e.g. add a prompt or an adapter
        train on: method.forward(model, batch, task_id).loss + method.penalty(model, task_id)
                  over method.parameters(model, task_id)
        method.end_task(model, task_id, task, benchmark)  # e.g. compute a Fisher, freeze a prompt
        evaluate every column j with method.forward(model, batch, j)  (j=None: an extra column)

EWC, Progressive Prompts and LoRA subclass :class:`Method` in their own modules.
"""
from __future__ import annotations

from typing import Any

import torch

from .benchmark import Benchmark, Task

__all__ = ["Method", "Naive", "task_head", "short_number"]


def short_number(value: Any) -> str:
    """A hyper-parameter value in a few characters: 300.0 -> "300", 1e5 -> "1e5", 0.03 -> "0.03", True -> "True"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    mantissa, _, exponent = f"{value:.4g}".partition("e")
    return mantissa + (f"e{int(exponent)}" if exponent else "")


def task_head(model: torch.nn.Module, task_id: int) -> torch.nn.Module | None:
    """Task ``task_id``'s own output head when the model has one per task (``model.task_head``, as
    :class:`cl_utils.classifier.MultiHeadClassifier`; a peft wrapper is looked through), else None.

    Methods that freeze the model (prompts, LoRA) train this head with the task and freeze it afterwards.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get = getattr(base, "task_head", None)
    return None if get is None else get(task_id)


class Method:
    """Plain fine-tuning of every trainable parameter. Subclasses override only what they change."""

    name = "naive"
    # True when the method must be told the task at test time (task-incremental inference: a per-task prompt or
    # adapter). Tables and figures keep such methods apart from those that are not told it.
    needs_task_id: bool = False
    # The hyper-parameters that tell two runs of the method apart, as {key of describe(): symbol}; ``label``
    # shows them, e.g. in the progress bars of a sweep ("ewc λ=300 · task 1/3").
    label_hparams: dict[str, str] = {}

    @property
    def label(self) -> str:
        """The name with the hyper-parameters of ``label_hparams``: ``"ewc λ=300"``, ``"olora r=8 λ₁=0.5"``."""
        hparams = self.describe()
        shown = [f"{symbol}={short_number(hparams[key])}" for key, symbol in self.label_hparams.items()
                 if key in hparams]
        return " ".join([self.name, *shown])

    def prepare(self, model: torch.nn.Module, benchmark: Benchmark) -> torch.nn.Module:
        """Called once before the stream, before any training: validate against the benchmark (raise
        ``ValueError`` early), freeze what must not train, and return the model (possibly wrapped)."""
        return model

    def begin_task(self, model: torch.nn.Module, task_id: int, task: Task) -> None:
        """Called before training task ``task_id``."""

    def parameters(self, model: torch.nn.Module, task_id: int) -> list[torch.nn.Parameter]:
        """What the optimiser of task ``task_id`` updates (a fresh AdamW per task)."""
        return [p for p in model.parameters() if p.requires_grad]

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task_id: int | None) -> Any:
        """Model output for ``batch`` as task ``task_id`` (None: no task identity, e.g. the pretraining column)."""
        return model(**batch)

    def penalty(self, model: torch.nn.Module, task_id: int) -> torch.Tensor | None:
        """Regulariser added to the task loss (None: nothing)."""
        return None

    def end_task(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark) -> None:
        """Called after training task ``task_id``, before it is evaluated."""

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters recorded in the results file."""
        return {}


class Naive(Method):
    """Sequential fine-tuning with no protection against forgetting: the baseline."""
