"""Continual-learning methods, one module each, behind one interface (:class:`~cl_utils.methods.base.Method`; its
docstring lists the hooks and which method uses which), and a registry that builds a method from its name.

>>> make_method("er", memory=0.05).label
'er M=0.05'
>>> sorted(METHODS)[:4]
['agem', 'er', 'ewc', 'linear_probe']

Shared pieces sit beside the methods: the quadratic penalty of EWC, SI and MAS (:mod:`.quadratic`) and the episodic
memory of ER and A-GEM (:mod:`.buffer`); the Fisher is :mod:`cl_utils.fisher`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from .agem import AGEM
from .base import Method, short_number, task_head, train_head
from .er import ER
from .ewc import EWC
from .lora import OLoRA, PerTaskLoRA, SequentialLoRA
from .lwf import LwF
from .mas import MAS
from .naive import Naive
from .probe import LinearProbe
from .prompts import ProgressivePrompts
from .quadratic import QuadraticPenalty
from .si import SI

__all__ = ["Method", "Naive", "EWC", "SI", "MAS", "LwF", "ER", "AGEM", "ProgressivePrompts", "SequentialLoRA",
           "PerTaskLoRA", "OLoRA", "LinearProbe", "QuadraticPenalty", "METHODS", "make_method", "method_parameters",
           "task_head", "train_head", "short_number"]

# name (as in results files: <benchmark>__<name>.json) -> what builds it
METHODS: dict[str, Callable[..., Method]] = {
    "naive": Naive,
    "ewc": EWC,
    "online_ewc": functools.partial(EWC, mode="online"),
    "si": SI,
    "mas": MAS,
    "lwf": LwF,
    "er": ER,
    "agem": AGEM,
    "progressive_prompts": ProgressivePrompts,
    "lora_sequential": SequentialLoRA,
    "lora_per_task": PerTaskLoRA,
    "olora": OLoRA,
    "olora_no_penalty": functools.partial(OLoRA, lambda_orth=0.0),
    "linear_probe": LinearProbe,
}


def method_parameters(name: str) -> dict[str, Any]:
    """``{parameter: default}`` that :func:`make_method` accepts for ``name`` (``inspect.Parameter.empty``:
    required); fixed by the name (online_ewc's mode, olora_no_penalty's lambda_orth) are left out."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    factory = METHODS[name]
    fixed = factory.keywords if isinstance(factory, functools.partial) else {}
    cls = factory.func if isinstance(factory, functools.partial) else factory
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and k not in fixed
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def make_method(name: str, **kwargs: Any) -> Method:
    """The method ``name`` built with ``kwargs``: ``make_method("ewc", lam=30)``, ``make_method("er", memory=0.05)``.

    Raises ``ValueError`` for an unknown name, an unknown or missing parameter (the message lists the valid ones),
    and whatever the method's own checks refuse (a bad value).
    """
    accepted = method_parameters(name)
    unknown = sorted(set(kwargs) - set(accepted))
    missing = sorted(k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in kwargs)
    if unknown or missing:
        shown = ", ".join(k if d is inspect.Parameter.empty else f"{k}={d!r}" for k, d in accepted.items())
        what = f"unknown parameter(s) {unknown}" if unknown else f"missing parameter(s) {missing}"
        raise ValueError(f"method {name!r}: {what}; valid: {shown or '(none)'}")
    return METHODS[name](**kwargs)
