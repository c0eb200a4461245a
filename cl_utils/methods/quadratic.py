"""The importance-weighted quadratic penalty that EWC, SI and MAS share; only how the importance is measured differs.

After each task the runner calls :meth:`QuadraticPenalty.end_task`, which asks the subclass for that task's
importance ``Ω`` (one non-negative tensor per protected parameter, :meth:`~QuadraticPenalty.importance`) at the
weights just trained, and stores an anchor ``θ*`` (a detached clone of those weights). Training the next tasks
then adds::

    penalty = (lam / 2) * sum_k sum_i Ω_k,i * (θ_i - θ*_k,i)^2          (EWC: Kirkpatrick et al. 2017, eq. 3)

* ``mode="separate"``: one ``(Ω_k, θ*_k)`` per past task, as in the EWC paper.
* ``mode="online"`` (Schwarz et al. 2018, "Progress & Compress", section 2.3): a single running importance
  ``Ω <- gamma * Ω_old + Ω_new`` and a single anchor, the latest weights. SI and MAS accumulate this way (γ = 1).

The penalty costs the same whatever the number of tasks: per parameter,
``sum_k Ω_k (θ - a_k)^2 = S (θ - m)^2 + C`` with ``S = sum_k Ω_k``, the importance-weighted mean anchor
``m = sum_k Ω_k a_k / S`` and a constant ``C = sum_k Ω_k (a_k - m)^2`` (same value, same gradient
``sum_k Ω_k (θ - a_k)``, and no cancellation between large terms near ``θ*``).

Its gradient ``lam S (θ - m)`` is computed with fused multi-tensor ops (``torch._foreach_*``: one kernel per
operation over every parameter, no Python loop) in the forward pass, into two buffers per parameter kept from step
to step (fresh ones would be fresh pages from the OS at every step: on SmolLM2, 1 GB of page faults that cost more
than the arithmetic). It does not go through autograd: the penalty's one autograd node (:class:`_Penalty`) only
records that it is owed, and :meth:`QuadraticPenalty.after_backward` adds it into each ``p.grad`` in place, after
the loss's own gradients, before clipping and the optimiser step (the runner calls it; a penalty whose gradient
was never added makes the next call raise). The sum is autograd's, bit for bit, on every weight that one gradient
of the loss reaches; on a tied weight, which receives several, the order of the sum differs, so the last bit may
(``tests/test_ewc.py``; :meth:`QuadraticPenalty.penalty_autograd` is the reference). The value (for the logged
loss) is ``sum_i g_i (θ_i - m_i) / 2``, equal up to rounding.

Task heads (the parameters under a model's ``head_prefix``, e.g. ``heads.`` of
:class:`cl_utils.classifier.MultiHeadClassifier`) are left out of the importance, the anchors and the penalty: each
head serves one task only, and later tasks never update an earlier task's head.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..benchmark import Benchmark, Task
from ..distributed import all_sum, world_size
from .base import Method

__all__ = ["QuadraticPenalty", "check_importance_matches", "weights_checksum", "protected_parameter_names"]

MODES = ("separate", "online")
Tensors = dict[str, torch.Tensor]


def check_importance_matches(importance: Tensors, model: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless every key of ``importance`` names a parameter of ``model`` of the same shape.

    Model parameters missing from ``importance`` (e.g. a head added after consolidation) are allowed.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(importance) - set(params))
    if missing:
        raise ValueError(f"the stored importance (Fisher) has {len(missing)} key(s) the model has no parameter for: "
                         f"{missing[:5]}; keys must be names from model.named_parameters(), e.g. "
                         f"{list(params)[:3]}")
    bad = [f"{n}: {tuple(f.shape)} vs {tuple(params[n].shape)}"
           for n, f in importance.items() if f.shape != params[n].shape]
    if bad:
        raise ValueError(f"importance (Fisher) and model shapes differ (stored vs model) for {bad[:5]}")


def protected_parameter_names(model: torch.nn.Module) -> list[str]:
    """Trainable parameters a quadratic penalty consolidates: all but the task heads (names starting with
    ``model.head_prefix``, when the model declares one)."""
    prefix = getattr(model, "head_prefix", None) or None
    return [n for n, p in model.named_parameters() if p.requires_grad and not (prefix and n.startswith(prefix))]


def weights_checksum(model: torch.nn.Module) -> float:
    """A float64 fingerprint of the trainable weights: ``sum_p sum(p) + sum(p^2)``; changes when they change."""
    with torch.no_grad():
        return float(sum(p.double().sum() + p.double().square().sum()
                         for p in model.parameters() if p.requires_grad))


class _Penalty(torch.autograd.Function):
    """The penalty's value as one autograd node. Its gradient does not go through autograd: ``backward`` tells the
    method that it is owed (times the incoming gradient), and :meth:`QuadraticPenalty.after_backward` adds it into
    each ``p.grad`` in place."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, method: "QuadraticPenalty", *params: torch.Tensor) -> torch.Tensor:
        ctx.method, ctx.n = method, len(params)
        return value.clone()

    @staticmethod
    def backward(ctx, out: torch.Tensor):
        ctx.method._owe(float(out))
        return (None, None, *[None] * ctx.n)


class QuadraticPenalty(Method):
    """The shared part of EWC, SI and MAS: consolidation, the penalty, saving. Subclasses define
    :meth:`importance` (and may use the training hooks to measure it).

    Args:
        lam: penalty strength ``lambda`` (>= 0).
        mode: ``"separate"`` (one importance and anchor per task) or ``"online"`` (one decayed sum, one anchor).
        gamma: decay of the old importance in online mode, in (0, 1]; unused in separate mode.

    Attributes:
        importances, anchors: lists of ``{param name: tensor}``; per consolidated task (separate) or one entry
            (online). Shapes are the parameters' shapes.
        task_ids: the consolidated tasks, in order.
        fisher_log: per :meth:`end_task`, ``{"task_id", "checksum"}``: :func:`weights_checksum` of the weights the
            importance was measured at.
    """

    state_file = "ewc_state.pt"  # what cl_utils.saving.save_trained writes the state to
    label_hparams = {"lam": "λ"}

    def __init__(self, lam: float, *, mode: str = "separate", gamma: float = 1.0) -> None:
        if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"{self.name}: lam must be a finite number >= 0, got {lam!r}")
        if mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {mode!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"{self.name}: gamma must be in (0, 1] (1 = no decay), got {gamma!r}")
        self.lam, self.mode, self.gamma = float(lam), mode, float(gamma)
        self.importances: list[Tensors] = []
        self.anchors: list[Tensors] = []
        self.task_ids: list[int] = []
        self.fisher_log: list[dict[str, Any]] = []
        self._merged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (S, m)
        self._constant = 0.0  # C, summed over parameters
        self._slope: list[torch.Tensor] = []  # per merged parameter, 2 * float32(lam / 2) * S: the gradient's factor
        self._scratch: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # θ - m and the gradient, reused
        self._penalised: list[torch.nn.Parameter] = []  # the parameters of the last penalty
        self._owed: float | None = None  # after a backward: the scale of the gradient owed to _penalised's p.grad

    # -- what subclasses define ------------------------------------------------------------------------
    def importance(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark,
                   names: list[str]) -> Tensors:
        """``{name: Ω}`` (non-negative, shaped like the parameter) for the parameters ``names``, at the weights
        just trained on task ``task_id``."""
        raise NotImplementedError

    # -- consolidation ---------------------------------------------------------------------------------
    def end_task(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark) -> None:
        """The task's importance at the weights just trained on it, then those weights as the anchor."""
        self._scratch, self._penalised, self._owed = None, [], None  # the penalty's buffers: not needed until the
        # next task trains (and a backward that failed half-way owes nothing to the next one)
        checksum = weights_checksum(model)
        names = protected_parameter_names(model)
        importance = self.importance(model, task_id, task, benchmark, names)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in importance}
        self.consolidate(importance, anchor, task_id=task_id)
        self.fisher_log.append({"task_id": task_id, "checksum": checksum})

    def consolidate(self, importance: Tensors, anchor: Tensors, *, task_id: int | None = None) -> None:
        """Add one task's importance and anchor (same keys and shapes); ``end_task`` calls this."""
        if set(importance) != set(anchor) or any(importance[n].shape != anchor[n].shape for n in importance):
            raise ValueError(f"importance and anchor must have the same keys and shapes; keys only in the importance: "
                             f"{sorted(set(importance) - set(anchor))[:5]}, only in the anchor: "
                             f"{sorted(set(anchor) - set(importance))[:5]}")
        importance = {n: f.detach().clone() for n, f in importance.items()}
        anchor = {n: a.detach().clone() for n, a in anchor.items()}
        if self.mode == "online" and self.importances:
            old_f, old_a = self.importances[0], self.anchors[0]
            importance = {**{n: self.gamma * f for n, f in old_f.items()},
                          **{n: self.gamma * old_f[n] + f if n in old_f else f for n, f in importance.items()}}
            anchor = {**old_a, **anchor}
            self.importances, self.anchors = [importance], [anchor]
        else:
            self.importances.append(importance)
            self.anchors.append(anchor)
        self.task_ids.append(-1 if task_id is None else task_id)
        self._rebuild()

    def _rebuild(self) -> None:
        """Per parameter ``S = sum_k Ω_k`` and ``m = sum_k Ω_k a_k / S``; ``C = sum_k Ω_k (a_k - m)^2``."""
        self._merged, self._constant, self._scratch = {}, 0.0, None
        for name in dict.fromkeys(n for f in self.importances for n in f):  # ordered: reproducible sums
            pairs = [(f[name], a[name]) for f, a in zip(self.importances, self.anchors) if name in f]
            if len(pairs) == 1:  # exact: the penalty is 0 at the anchor
                self._merged[name] = pairs[0]
                continue
            f64 = [(f.double(), a.double()) for f, a in pairs]
            s = sum(f for f, _ in f64)
            m = torch.where(s > 0, sum(f * a for f, a in f64) / s.clamp_min(torch.finfo(s.dtype).tiny), f64[-1][1])
            self._constant += float(sum((f * (a - m).square()).sum() for f, a in f64))
            self._merged[name] = (s.to(pairs[0][0].dtype), m.to(pairs[0][1].dtype))
        # autograd's gradient of (lam/2) sum S (θ - m)^2 is fl(fl(c S) * 2 (θ - m)), c = lam/2 in S's dtype; the
        # factor 2 is exact, so fl(c S) * 2 can be kept once
        self._slope = [torch.mul(s, 0.5 * self.lam).mul_(2) for s, _ in self._merged.values()]

    def first_task_as_naive(self, benchmark: Benchmark) -> bool:
        """No penalty before the first consolidation (``penalty`` is None): the first task is naive's. SI, which
        accumulates its path integral while training, says otherwise."""
        return True

    # -- training --------------------------------------------------------------------------------------
    def begin_task(self, model: torch.nn.Module, task_id: int, task: Task) -> None:
        """A task starts with nothing owed (a stream interrupted during a backward, then run on, owes nothing)."""
        self._owed = None

    def penalty(self, model: torch.nn.Module, task_id: int) -> torch.Tensor | None:
        """``(lam / 2) * sum Ω (θ - θ*)^2`` as a scalar tensor; None before any task was consolidated.

        Its gradient is computed here, with fused multi-tensor ops, and added into ``p.grad`` by
        :meth:`after_backward` (see the module docstring); a model whose parameters and importances differ in dtype
        or device gets :meth:`penalty_autograd`. Parameters without a stored importance (added after consolidation)
        are left out.
        """
        params = self._merged_params(model)
        if params is None:
            return None
        merged = list(self._merged.values())
        anchors = [m for _, m in merged]
        if any(p.dtype != m.dtype or p.dtype != s.dtype or p.device != s.device
               for p, (s, m) in zip(params, merged)):
            return self.penalty_autograd(model, task_id)
        if self._owed is not None:
            raise RuntimeError(f"{self.name}: the last backward's penalty gradient was never added: call "
                               f"method.after_backward(model, task_id) after loss.backward() (the stream runner does)")
        with torch.no_grad():
            diff, grads = self._buffers(params)
            torch._foreach_copy_(diff, params)
            torch._foreach_sub_(diff, anchors)
            torch._foreach_copy_(grads, diff)
            torch._foreach_mul_(grads, self._slope)
            value = 0.5 * sum(torch.dot(g.view(-1), d.view(-1)) for g, d in zip(grads, diff))  # g d = lam S d^2
            value = value + (0.5 * self.lam) * self._constant
        self._penalised = params
        return _Penalty.apply(value, self, *params)

    def _buffers(self, params: list[torch.nn.Parameter]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Two tensors per parameter, kept from step to step (a fresh 0.5 GB each step on SmolLM2 is fresh pages from
        the OS each time, whose faults cost more than the arithmetic). Made again after ``end_task`` and ``_rebuild``;
        ``params`` match ``_merged`` in shape, dtype and device (``penalty`` checked), hence these."""
        if self._scratch is None:
            self._scratch = ([torch.empty_like(p) for p in params], [torch.empty_like(p) for p in params])
        return self._scratch

    def _owe(self, scale: float) -> None:
        """Called by the penalty's backward: its gradient (times ``scale``) is owed to ``p.grad``."""
        self._owed = (self._owed or 0.0) + scale

    @torch.no_grad()
    def after_backward(self, model: torch.nn.Module, task_id: int) -> None:
        """Add the penalty's gradient ``lam S (θ - m)`` into each ``p.grad``, in place: one fused add over every
        parameter, after the loss's own gradients (so ``p.grad`` = loss gradient + penalty gradient, as autograd
        would sum them; on a weight that receives several gradients, e.g. a tied embedding, the sum's order differs,
        so the last bit may)."""
        if self._owed is None:
            return
        params, scale, self._owed = self._penalised, self._owed, None
        if world_size() > 1:  # DDP averaged the loss's gradients over the ranks, each scaled by its rank's share of
            scale = all_sum(scale)[0] / world_size()  # the batch: the penalty's, added after that, takes the same mean
        grads = self._scratch[1]
        have = [i for i, p in enumerate(params) if p.grad is not None]
        if have and scale == 1.0:
            torch._foreach_add_([params[i].grad for i in have], [grads[i] for i in have])
        elif have:
            torch._foreach_add_([params[i].grad for i in have], [grads[i] for i in have], alpha=scale)
        for p, g in zip(params, grads):
            if p.grad is None and p.requires_grad:
                p.grad = g * scale

    def penalty_autograd(self, model: torch.nn.Module, task_id: int) -> torch.Tensor | None:
        """The same penalty through autograd's own operations: the reference :meth:`penalty` matches."""
        params = self._merged_params(model)
        if params is None:
            return None
        total = sum((s * (p - m).square()).sum() for p, (s, m) in zip(params, self._merged.values()))
        return (0.5 * self.lam) * (total + self._constant)

    def _merged_params(self, model: torch.nn.Module) -> list[torch.nn.Parameter] | None:
        """The model's parameters in the order of ``_merged`` (checked); None before any consolidation."""
        if not self._merged:
            return None
        params = dict(model.named_parameters())
        if not self._merged.keys() <= params.keys() or any(params[n].shape != s.shape
                                                            for n, (s, _) in self._merged.items()):
            check_importance_matches({n: s for n, (s, _) in self._merged.items()}, model)
        return [params[n] for n in self._merged]

    @torch.no_grad()
    def penalty_gradient(self, name: str, param: torch.Tensor) -> torch.Tensor | None:
        """``d penalty / d param`` = ``lam * S (θ - m)`` for one parameter (None when it is not consolidated)."""
        merged = self._merged.get(name)
        return None if merged is None else self.lam * merged[0] * (param - merged[1])

    def state_bytes(self) -> int:
        """Importances and anchors, and the merged ``S`` and ``m`` where they are new tensors (2+ tasks, separate)."""
        tensors = {id(t): t for d in (*self.importances, *self.anchors) for t in d.values()}
        tensors.update({id(t): t for pair in self._merged.values() for t in pair})
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def describe(self) -> dict[str, Any]:
        return {"lam": self.lam, "mode": self.mode, "gamma": self.gamma}

    # -- persistence -----------------------------------------------------------------------------------
    def _init_kwargs(self) -> dict[str, Any]:
        """What ``type(self)(**kwargs)`` needs to rebuild this method (saved by :meth:`save`)."""
        return {"lam": self.lam, "mode": self.mode, "gamma": self.gamma}

    def save(self, path: str | Path) -> None:
        """Write hyper-parameters, importances, anchors and logs to one ``torch.save`` file."""
        torch.save({"format": 2, "method": self.name, "hparams": self._init_kwargs(), "importances": self.importances,
                    "anchors": self.anchors, "task_ids": self.task_ids, "fisher_log": self.fisher_log}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = None) -> "QuadraticPenalty":
        """Restore a method written by :meth:`save` (same penalties). Format 1 (EWC before SI and MAS) reads too."""
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or state.get("format") not in (1, 2):
            raise ValueError(f"{path} is not a state written by {cls.__name__}.save (format 1 or 2)")
        method = cls(**state["hparams"])
        method.importances = state["importances" if state["format"] == 2 else "fishers"]
        method.anchors, method.task_ids, method.fisher_log = state["anchors"], state["task_ids"], state["fisher_log"]
        method._rebuild()
        return method
