"""Synaptic Intelligence (SI; Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence",
ICML, arXiv:1703.04200).

EWC's quadratic penalty (:mod:`cl_utils.methods.quadratic`) with another importance: how much each parameter's
movement lowered the loss along the training path. During task ``μ``, every step adds to a running sum::

    ω_i  +=  -g_i * Δθ_i          g: the gradient of the task loss alone (read before the penalty's gradient is
                                  added, in after_backward), Δθ: the change the optimiser step made

and at the end of the task (eq. 5)::

    Ω_i  +=  max(0, ω_i) / ((θ_i(end) - θ_i(start))^2 + ξ)

with one running ``Ω`` and the latest weights as the anchor (online mode, γ = 1: the paper's sum over tasks).
Zenke et al. write the penalty ``c Σ Ω (θ - θ*)^2``; here it is ``(λ / 2) Σ Ω (θ - θ*)^2`` like EWC's, so
``c = λ / 2``. The clamp at 0 is ours: ``ω`` is positive in expectation, but a parameter whose moves raised the
loss on balance would get a negative weight, which makes the penalty push it away from its anchor without bound.
Hooks: ``begin_task``, ``after_backward``, ``after_step``, ``end_task``, ``penalty``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..benchmark import Benchmark, Task
from .quadratic import QuadraticPenalty, Tensors, protected_parameter_names

__all__ = ["SI"]


class SI(QuadraticPenalty):
    """Synaptic Intelligence.

    Args:
        lam: penalty strength (``λ = 2c`` of the paper).
        xi: the damping ``ξ`` of eq. 5 (> 0; the paper uses 1e-3 on MNIST and 0.1 on CIFAR).
    """

    name = "si"
    state_file = "si_state.pt"

    def __init__(self, lam: float, *, xi: float = 0.1, mode: str = "online", gamma: float = 1.0) -> None:
        super().__init__(lam, mode=mode, gamma=gamma)
        if isinstance(xi, bool) or not isinstance(xi, (int, float)) or not math.isfinite(xi) or xi <= 0:
            raise ValueError(f"SI: xi must be a finite number > 0, got {xi!r}")
        self.xi = float(xi)
        self._params: dict[str, torch.nn.Parameter] = {}
        self._start: Tensors = {}  # θ at the start of the task
        self._before: Tensors = {}  # θ before the current step
        self._grad: Tensors = {}  # the task loss's gradient of the current step
        self._omega: Tensors = {}  # ω, the running path integral

    def first_task_as_naive(self, benchmark: Benchmark) -> bool:
        """The first task's steps are naive's, but SI reads every one of them (the path integral): it trains them."""
        return False

    def begin_task(self, model: torch.nn.Module, task_id: int, task: Task) -> None:
        super().begin_task(model, task_id, task)
        named = dict(model.named_parameters())
        self._params = {n: named[n] for n in protected_parameter_names(model)}
        self._start = {n: p.detach().clone() for n, p in self._params.items()}
        self._before = {n: p.detach().clone() for n, p in self._params.items()}
        self._omega = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self._params.items()}

    @torch.no_grad()
    def after_backward(self, model: torch.nn.Module, task_id: int) -> None:
        """Keep the task loss's gradient: ``p.grad`` before the fused penalty's gradient is added (then add it); after
        the autograd penalty (:meth:`penalty_autograd`, for mixed dtypes), ``p.grad`` minus its ``λ S (θ - m)``."""
        through_autograd = self._owed is None and bool(self._merged)
        self._grad = {}
        for n, p in self._params.items():
            if p.grad is None:
                continue
            g = p.grad.detach().float().clone()
            own = self.penalty_gradient(n, p.detach()) if through_autograd else None
            self._grad[n] = g if own is None else g.sub_(own.float())
        super().after_backward(model, task_id)

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, task_id: int) -> None:
        for n, p in self._params.items():
            now = p.detach()
            if n in self._grad:  # a parameter without a gradient this step adds nothing (g = 0)
                self._omega[n].sub_(self._grad[n] * (now.float() - self._before[n].float()))
            self._before[n].copy_(now)

    def importance(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark,
                   names: list[str]) -> Tensors:
        params = dict(model.named_parameters())
        out = {}
        for n in names:
            delta = params[n].detach().float() - self._start[n].float()
            out[n] = (self._omega[n].clamp_min(0) / (delta.square() + self.xi)).to(params[n].dtype)
        self._params, self._grad, self._before, self._start, self._omega = {}, {}, {}, {}, {}
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "xi": self.xi}

    def _init_kwargs(self) -> dict[str, Any]:
        return {**super()._init_kwargs(), "xi": self.xi}
