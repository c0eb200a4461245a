"""The one small interface every continual-learning method implements (cf. mammoth's ``observe``/``end_task``,
Avalanche's plugin hooks).

The stream runner (:mod:`cl_utils.stream`) calls, in order::

    model = method.prepare(model, benchmark)             # once: validate, freeze, wrap with adapters, size a buffer
    for task_id, task in enumerate(benchmark.tasks):
        method.begin_task(model, task_id, task)          # e.g. add a prompt or an adapter, snapshot a teacher
        for each step, over method.parameters(model, task_id):
            loss = method.loss(model, batch, task_id)    # default: forward(...).loss + penalty(...)
            loss.backward()
            method.after_backward(model, task_id)        # e.g. project the gradient (A-GEM), read it (SI)
            clip, optimiser step
            method.after_step(model, task_id)            # e.g. the path integral of SI
        method.end_task(model, task_id, task, benchmark) # e.g. a Fisher, freeze a prompt, fill a memory
        evaluate every column j with method.forward(model, batch, j)  (j=None: an extra column)

Which hooks each method uses, besides ``forward`` (one module each in this package):

=====================  ==========================================================================================
naive                  none: plain fine-tuning
ewc, online_ewc, mas   ``end_task`` (importance and anchor), ``penalty``, ``after_backward`` (adds the penalty's
                       gradient, computed in ``penalty``)
si                     ``begin_task``, ``after_backward`` (reads the gradient, adds the penalty's), ``after_step``
                       (path integral), ``end_task``, ``penalty``
lwf                    ``prepare``, ``begin_task`` (frozen teacher), ``loss`` (+ distillation), ``end_task``
er                     ``prepare`` (buffer size), ``loss`` (+ a replay batch; the batch joins the reservoir)
agem                   ``prepare``, ``end_task`` (fill the memory), ``loss``, ``after_backward`` (projection)
progressive_prompts    ``prepare``, ``begin_task``, ``parameters``, ``forward``, ``end_task``
lora_*, olora*         ``prepare``, ``begin_task``, ``parameters``, ``forward``, ``end_task``; ``penalty`` (O-LoRA)
linear_probe           ``prepare``, ``parameters``, ``end_task``
=====================  ==========================================================================================

``first_task_as_naive(benchmark)`` is True for naive, ewc, online_ewc, mas, agem, and lwf with one head per task:
their first task trains exactly as naive's, so a stream reuses naive's (:mod:`cl_utils.reuse`, bit for bit).
"""
from __future__ import annotations

from typing import Any

import torch

from ..benchmark import Benchmark, Task

__all__ = ["Method", "task_head", "train_head", "short_number"]


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


def train_head(model: torch.nn.Module, task_id: int, on: bool) -> list[torch.nn.Parameter]:
    """(Un)freeze task ``task_id``'s own head, if the model has one per task; return its parameters ([] without)."""
    head = task_head(model, task_id)
    if head is None:
        return []
    head.requires_grad_(on)
    return list(head.parameters())


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

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task_id: int) -> torch.Tensor:
        """The training objective of one batch of task ``task_id``: the task loss plus :meth:`penalty`. Methods
        that need the batch itself (distillation, replay) override this."""
        loss = self.forward(model, batch, task_id).loss
        extra = self.penalty(model, task_id)
        return loss if extra is None else loss + extra

    def after_backward(self, model: torch.nn.Module, task_id: int) -> None:
        """Called after ``loss.backward()``, before gradient clipping and the optimiser step: the gradients are in
        ``p.grad`` and may be changed in place."""

    def after_step(self, model: torch.nn.Module, task_id: int) -> None:
        """Called after each optimiser step."""

    def end_task(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark) -> None:
        """Called after training task ``task_id``, before it is evaluated."""

    def first_task_as_naive(self, benchmark: Benchmark) -> bool:
        """Whether this method trains the first task exactly as naive does (same parameters, loss and gradients, no
        hook that changes them or keeps anything during training), so a stream may reuse naive's first task
        (:mod:`cl_utils.reuse`). False unless a method says so; ``tests/test_reuse.py`` checks every one that does."""
        return False

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters recorded in the results file."""
        return {}

    def state_bytes(self) -> int:
        """Bytes the method keeps besides the model (a buffer, a teacher, importances and anchors); recorded in the
        results file after the stream."""
        return 0
