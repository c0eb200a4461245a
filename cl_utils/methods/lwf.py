"""Learning without Forgetting (LwF; Li & Hoiem 2016, "Learning without Forgetting", ECCV, arXiv:1606.09282).

Before each task, a frozen copy of the model is kept (the teacher). While the task trains, the model is also
pulled towards the teacher's outputs on the *current* task's inputs, with a temperature ``T``; no earlier data is
stored::

    loss = task loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

- Language model: the KL between next-token distributions at every position whose next token is scored
  (shifted labels that are not -100: real tokens only, never padding), averaged over those positions. Before
  the first task the teacher is the pretrained model, so LwF also protects what pretraining gave.
- Classification with one head per task: the KL on each earlier task's head (task ``k < t``), fed the features
  of the current texts, averaged over those heads (the paper's "old task" outputs; ``T = 2`` as in the paper). The
  first task has no earlier head, so it trains as naive does.

``T^2`` keeps the gradient's scale independent of ``T`` (Hinton et al. 2015); the paper sums the earlier heads' terms,
here they are averaged (a scale that α absorbs). Hooks: ``prepare``, ``begin_task`` (the teacher), ``loss`` and
``end_task`` (the last teacher is freed).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Method, task_head

__all__ = ["LwF", "distillation_kl"]


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_rows KL(softmax(teacher / T) || softmax(student / T))`` for logits ``(N, C)``."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


class LwF(Method):
    """Learning without Forgetting.

    Args:
        alpha: weight of the distillation term (>= 0; 0 trains exactly as naive).
        temperature: ``T`` (> 0).
    """

    name = "lwf"
    label_hparams = {"alpha": "α"}

    def __init__(self, alpha: float = 1.0, *, temperature: float = 2.0) -> None:
        for key, value, ok in (("alpha", alpha, lambda v: v >= 0), ("temperature", temperature, lambda v: v > 0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"LwF: {key} must be a finite number {'>= 0' if key == 'alpha' else '> 0'}, "
                                 f"got {value!r}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.teacher: torch.nn.Module | None = None
        self._n_tasks = 0
        self._teacher_bytes = 0

    def prepare(self, model: torch.nn.Module, benchmark) -> torch.nn.Module:
        self._n_tasks = len(benchmark.tasks)
        return model

    def begin_task(self, model: torch.nn.Module, task_id: int, task) -> None:
        self.teacher = None  # free the previous one first
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self._teacher_bytes = sum(t.numel() * t.element_size()
                                  for t in (*self.teacher.parameters(), *self.teacher.buffers()))

    def end_task(self, model: torch.nn.Module, task_id: int, task, benchmark) -> None:
        if task_id == self._n_tasks - 1:  # no later task distils from it: free the copy
            self.teacher = None

    def first_task_as_naive(self, benchmark) -> bool:
        """With one head per task there is no old head to distil during the first task: its steps are naive's. On
        the LM the first task already distils from the pretrained model (the teacher of the first task)."""
        return bool(benchmark.task_heads)

    def distillation(self, model: torch.nn.Module, out: Any, batch: dict[str, torch.Tensor],
                     task_id: int) -> torch.Tensor:
        """The KL term (before ``alpha``) of the current batch, whose student outputs are ``out``."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if task_head(model, 0) is not None:  # one head per task: the earlier tasks' heads
            if task_id == 0:
                return out.loss.new_zeros(())
            with torch.no_grad():
                old = self.teacher(**inputs).pooled
            terms = [distillation_kl(task_head(model, k)(out.pooled), task_head(self.teacher, k)(old),
                                     self.temperature) for k in range(task_id)]
            return torch.stack(terms).mean()
        labels = batch["labels"]
        scored = labels[:, 1:] != -100  # position t predicts token t + 1
        with torch.no_grad():
            old = self.teacher(**inputs).logits[:, :-1][scored]
        return distillation_kl(out.logits[:, :-1][scored], old, self.temperature)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task_id: int) -> torch.Tensor:
        out = self.forward(model, batch, task_id)
        return out.loss + self.alpha * self.distillation(model, out, batch, task_id)

    def state_bytes(self) -> int:
        """The teacher's bytes, held during training (one model copy); freed after the last task."""
        return self._teacher_bytes

    def describe(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "temperature": self.temperature}
