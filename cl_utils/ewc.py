"""Elastic Weight Consolidation as a :class:`~cl_utils.methods.Method`.

After each task the runner calls :meth:`EWC.end_task`, which computes the diagonal Fisher ``F`` on that
task's train split at the weights just trained (:func:`cl_utils.fisher.diagonal_fisher`) and stores an
anchor ``theta*`` (a detached clone of those weights). Training the next tasks then adds::

    penalty = (lam / 2) * sum_k sum_i F_k,i * (theta_i - theta*_k,i)^2          (Kirkpatrick et al. 2017, eq. 3)

* ``mode="separate"``: one ``(F_k, theta*_k)`` per past task, as in the paper.
* ``mode="online"`` (Schwarz et al. 2018, "Progress & Compress", section 2.3): a single running Fisher
  ``F <- gamma * F_old + F_new`` and a single anchor, the latest weights.

The penalty costs one pass over the parameters whatever the number of tasks: per parameter,
``sum_k F_k (theta - a_k)^2 = S (theta - m)^2 + C`` with ``S = sum_k F_k``, the Fisher-weighted mean
anchor ``m = sum_k F_k a_k / S`` and a constant ``C = sum_k F_k (a_k - m)^2`` (same value, same gradient
``sum_k F_k (theta - a_k)``, and no cancellation between large terms near ``theta*``).

Task heads (the parameters under a model's ``head_prefix``, e.g. ``heads.`` of
:class:`cl_utils.classifier.MultiHeadClassifier`) are left out of the Fisher, the anchors and the penalty: each head
serves one task only, and later tasks never update an earlier task's head.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .benchmark import Benchmark, Task
from .fisher import KINDS, diagonal_fisher
from .methods import Method

__all__ = ["EWC", "check_fisher_matches", "weights_checksum", "protected_parameter_names"]

MODES = ("separate", "online")
Tensors = dict[str, torch.Tensor]


def check_fisher_matches(fisher: Tensors, model: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless every key of ``fisher`` names a parameter of ``model`` of the same shape.

    Model parameters missing from ``fisher`` (e.g. a head added after consolidation) are allowed.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(fisher) - set(params))
    if missing:
        raise ValueError(f"the stored Fisher has {len(missing)} key(s) the model has no parameter for: "
                         f"{missing[:5]}; keys must be names from model.named_parameters(), e.g. "
                         f"{list(params)[:3]}")
    bad = [f"{n}: {tuple(f.shape)} vs {tuple(params[n].shape)}"
           for n, f in fisher.items() if f.shape != params[n].shape]
    if bad:
        raise ValueError(f"Fisher and model shapes differ (Fisher vs model) for {bad[:5]}")


def protected_parameter_names(model: torch.nn.Module) -> list[str] | None:
    """Trainable parameters EWC consolidates: all but the task heads (names starting with ``model.head_prefix``).

    None when the model declares no heads (every trainable parameter, as before).
    """
    prefix = getattr(model, "head_prefix", None)
    if not prefix:
        return None
    return [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(prefix)]


def weights_checksum(model: torch.nn.Module) -> float:
    """A float64 fingerprint of the trainable weights: ``sum_p sum(p) + sum(p^2)``; changes when they change."""
    with torch.no_grad():
        return float(sum(p.double().sum() + p.double().square().sum()
                         for p in model.parameters() if p.requires_grad))


class EWC(Method):
    """Elastic Weight Consolidation (separate) or online EWC.

    Args:
        lam: penalty strength ``lambda`` (>= 0).
        mode: ``"separate"`` (one Fisher and anchor per task) or ``"online"`` (one decayed Fisher, one anchor).
        gamma: decay of the old Fisher in online mode, in (0, 1]; unused in separate mode.
        fisher_examples: train examples (blocks / texts) per Fisher.
        fisher_batch_size: rows per loader batch when computing the Fisher (does not change its value).
        kind: ``"empirical"`` (data labels) or ``"true"`` (labels sampled from the model).

    Attributes:
        fishers, anchors: lists of ``{param name: tensor}``; per consolidated task (separate) or one entry
            (online). Shapes are the parameters' shapes.
        task_ids: the consolidated tasks, in order.
        fisher_log: per :meth:`end_task`, ``{"task_id", "checksum"}``: :func:`weights_checksum` of the
            weights the Fisher was computed at.
    """

    name = "ewc"

    def __init__(self, lam: float, *, mode: str = "separate", gamma: float = 1.0, fisher_examples: int = 256,
                 fisher_batch_size: int = 16, kind: str = "empirical") -> None:
        if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"EWC: lam must be a finite number >= 0, got {lam!r}")
        if mode not in MODES:
            raise ValueError(f"EWC: mode must be one of {MODES}, got {mode!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"EWC: gamma must be in (0, 1] (1 = no decay), got {gamma!r}")
        if fisher_examples < 1 or fisher_batch_size < 1:
            raise ValueError(f"EWC: fisher_examples and fisher_batch_size must be >= 1, "
                             f"got {fisher_examples} and {fisher_batch_size}")
        if kind not in KINDS:
            raise ValueError(f"EWC: kind must be one of {KINDS}, got {kind!r}")
        self.lam, self.mode, self.gamma, self.kind = float(lam), mode, float(gamma), kind
        self.fisher_examples, self.fisher_batch_size = fisher_examples, fisher_batch_size
        self.name = "online_ewc" if mode == "online" else "ewc"
        self.label_hparams = {"lam": "λ", **({"gamma": "γ"} if mode == "online" else {})}
        self.fishers: list[Tensors] = []
        self.anchors: list[Tensors] = []
        self.task_ids: list[int] = []
        self.fisher_log: list[dict[str, Any]] = []
        self._merged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (S, m)
        self._constant = 0.0  # C, summed over parameters

    # -- consolidation -------------------------------------------------------------------------------
    def end_task(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark) -> None:
        """Fisher on ``task.train`` at the weights just trained on it, then store them as the anchor."""
        if len(task.train) == 0:
            raise ValueError(f"EWC: task {task.name!r} has an empty train split; the Fisher needs at least one example")
        loader = benchmark.loader(task.train, self.fisher_batch_size, shuffle=True, seed=task_id)
        checksum = weights_checksum(model)
        names = protected_parameter_names(model)
        fisher = diagonal_fisher(model, loader, kind=self.kind, max_examples=self.fisher_examples, seed=task_id,
                                 parameter_names=names)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()
                  if p.requires_grad and (names is None or n in fisher)}
        self.consolidate(fisher, anchor, task_id=task_id)
        self.fisher_log.append({"task_id": task_id, "checksum": checksum})

    def consolidate(self, fisher: Tensors, anchor: Tensors, *, task_id: int | None = None) -> None:
        """Add one task's Fisher and anchor (same keys and shapes); ``end_task`` calls this."""
        if set(fisher) != set(anchor) or any(fisher[n].shape != anchor[n].shape for n in fisher):
            raise ValueError(f"Fisher and anchor must have the same keys and shapes; keys only in the Fisher: "
                             f"{sorted(set(fisher) - set(anchor))[:5]}, only in the anchor: "
                             f"{sorted(set(anchor) - set(fisher))[:5]}")
        fisher = {n: f.detach().clone() for n, f in fisher.items()}
        anchor = {n: a.detach().clone() for n, a in anchor.items()}
        if self.mode == "online" and self.fishers:
            old_f, old_a = self.fishers[0], self.anchors[0]
            fisher = {**{n: self.gamma * f for n, f in old_f.items()},
                      **{n: self.gamma * old_f[n] + f if n in old_f else f for n, f in fisher.items()}}
            anchor = {**old_a, **anchor}
            self.fishers, self.anchors = [fisher], [anchor]
        else:
            self.fishers.append(fisher)
            self.anchors.append(anchor)
        self.task_ids.append(-1 if task_id is None else task_id)
        self._rebuild()

    def _rebuild(self) -> None:
        """Per parameter ``S = sum_k F_k`` and ``m = sum_k F_k a_k / S``; ``C = sum_k F_k (a_k - m)^2``."""
        self._merged, self._constant = {}, 0.0
        for name in dict.fromkeys(n for f in self.fishers for n in f):  # ordered: reproducible sums
            pairs = [(f[name], a[name]) for f, a in zip(self.fishers, self.anchors) if name in f]
            if len(pairs) == 1:  # exact: the penalty is 0 at the anchor
                self._merged[name] = pairs[0]
                continue
            f64 = [(f.double(), a.double()) for f, a in pairs]
            s = sum(f for f, _ in f64)
            m = torch.where(s > 0, sum(f * a for f, a in f64) / s.clamp_min(torch.finfo(s.dtype).tiny), f64[-1][1])
            self._constant += float(sum((f * (a - m).square()).sum() for f, a in f64))
            self._merged[name] = (s.to(pairs[0][0].dtype), m.to(pairs[0][1].dtype))

    # -- training ------------------------------------------------------------------------------------
    def penalty(self, model: torch.nn.Module, task_id: int) -> torch.Tensor | None:
        """``(lam / 2) * sum F (theta - theta*)^2`` as a scalar tensor; None before any task was consolidated.

        Parameters without a stored Fisher (added after consolidation) are left out.
        """
        if not self._merged:
            return None
        params = dict(model.named_parameters())
        if not self._merged.keys() <= params.keys() or any(params[n].shape != s.shape
                                                            for n, (s, _) in self._merged.items()):
            check_fisher_matches({n: s for n, (s, _) in self._merged.items()}, model)
        total = sum((s * (params[n] - m).square()).sum() for n, (s, m) in self._merged.items())
        return (0.5 * self.lam) * (total + self._constant)

    def describe(self) -> dict[str, Any]:
        return {"lam": self.lam, "mode": self.mode, "gamma": self.gamma, "fisher_examples": self.fisher_examples,
                "kind": self.kind}

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write hyper-parameters, Fishers, anchors and logs to one ``torch.save`` file."""
        torch.save({"format": 1, "hparams": {**self.describe(), "fisher_batch_size": self.fisher_batch_size},
                    "fishers": self.fishers, "anchors": self.anchors, "task_ids": self.task_ids,
                    "fisher_log": self.fisher_log}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = None) -> "EWC":
        """Restore an :class:`EWC` written by :meth:`save` (same penalties)."""
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != 1:
            raise ValueError(f"{path} is not an EWC state written by EWC.save (format 1)")
        ewc = cls(**state["hparams"])
        ewc.fishers, ewc.anchors = state["fishers"], state["anchors"]
        ewc.task_ids, ewc.fisher_log = state["task_ids"], state["fisher_log"]
        ewc._rebuild()
        return ewc
