"""A generic training loop: AdamW, warm-up + cosine schedule, gradient clipping, a progress bar.

Nothing here knows about GPT-2 or about continual learning: the caller passes a ``loss_fn(batch)``
(a method's forward plus its penalty) and the parameters to optimise.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from . import distributed
from .config import TrainSpec
from .display import progress_bar

__all__ = ["TrainLog", "train_steps", "move", "autocast"]


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)  # training loss of every step
    seconds: float = 0.0  # wall-clock time of the loop


def move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA; a no-op on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _forever(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training split is empty")


def _lr_lambda(spec: TrainSpec) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine down to 10 %
    return f


def train_steps(loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                params: Iterable[torch.nn.Parameter] | list[dict], loader: DataLoader, spec: TrainSpec, *,
                device: torch.device, desc: str = "train", progress: bool = True,
                after_backward: Callable[[], None] | None = None,
                after_step: Callable[[], None] | None = None) -> TrainLog:
    """Run ``spec.steps`` optimiser steps of ``loss_fn`` over ``loader`` (cycled as often as needed).

    ``params``: parameters (all at ``spec.lr``), or AdamW parameter groups ``[{"params": [...], "lr": ...}]`` (a
    group without ``"lr"`` gets ``spec.lr``); every group follows the same warm-up and cosine schedule.
    """
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    groups = [g for g in groups if g["params"]]
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec))
    log = TrainLog()
    start = time.perf_counter()
    batches = _forever(loader)
    bar = progress_bar(range(spec.steps), desc=desc, enabled=progress)  # a widget in JupyterLab, else text
    for _ in bar:
        batch = move(next(batches), device)
        with autocast(device):
            loss = loss_fn(batch)
        value = distributed.mean(loss.detach())  # the global batch's loss (this loss itself in one process)
        if not torch.isfinite(value):
            raise FloatingPointError(f"{desc}: the loss became {value.item()} at step {len(log.losses)}; "
                                     f"lower the learning rate (now {spec.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        sched.step()
        log.losses.append(value.item())
        bar.set_postfix(loss=f"{log.losses[-1]:.3f}", refresh=False)
    log.seconds = time.perf_counter() - start
    return log
