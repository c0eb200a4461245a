"""An EWC training step (3 consolidated tasks, separate and online) against a plain step: forward (+ penalty),
backward, AdamW. The ``embedded``-sized GPT-2, batch 16 x 128 tokens: target <= 1.10x. SmolLM2-135M at its profile's
batch (4 x 128; when the ``smollm2`` extra is installed, not with ``--quick``): target <= 1.05x, where the penalty's
passes over 134.5M parameters weigh most (cl_utils.methods.quadratic computes them with fused multi-tensor ops,
into buffers kept from step to step, and adds the gradient in ``after_backward``)."""
from __future__ import annotations

import torch

from cl_utils.methods.ewc import EWC
from cl_utils.fisher import diagonal_fisher

from cl_utils.config import PROFILES

from .common import Row, Setup, adamw_step, compare


def rows(setup: Setup) -> list[Row]:
    block, batch, repeats = (32, 4, 6) if setup.quick else (128, 16, 10)
    out = steps("", setup.model(), block, batch, repeats, setup, target=1.10)
    if not setup.quick:
        from .bench_fisher import smollm2

        smol = smollm2(setup)
        if smol is not None:
            spec = PROFILES["smollm2"]
            out += steps("SmolLM2: ", smol, spec.block_size, spec.finetune.batch_size, 4, setup, target=1.05,
                         modes=("separate",))
    return out


def steps(prefix: str, model: torch.nn.Module, block: int, batch: int, repeats: int, setup: Setup, *,
          target: float, modes: tuple[str, ...] = ("separate", "online")) -> list[Row]:
    vocab = model.config.vocab_size
    data = setup.blocks(batch, block, vocab, seed=1)
    fisher = diagonal_fisher(model, [setup.blocks(4, block, vocab, seed=2)])
    methods = {}
    for mode in modes:
        ewc = EWC(lam=100.0, mode=mode, gamma=0.9)
        for task in range(3):  # anchors at slightly different weights, Fishers scaled per task
            with torch.no_grad():
                anchor = {n: p.detach() + 1e-3 * (task + 1) for n, p in model.named_parameters() if p.requires_grad}
            ewc.consolidate({n: f * (task + 1) for n, f in fisher.items()}, anchor)
        methods[mode] = ewc
    model.train()
    fns = {"plain": lambda: adamw_step(lambda: model(**data).loss, model.parameters())}
    for mode, ewc in methods.items():
        fns[mode] = lambda e=ewc: adamw_step(lambda: model(**data).loss + e.penalty(model, 3), model.parameters(),
                                             after_backward=lambda: e.after_backward(model, 3))
    labels = {"plain": f"{prefix}plain step (batch {batch} × {block})",
              **{mode: f"{prefix}EWC step, {mode} (3 tasks)" for mode in methods}}
    return compare(fns, {mode: "plain" for mode in methods}, labels, repeats, setup.device, modules=[model],
                   targets={mode: ("<=", target) for mode in methods})
