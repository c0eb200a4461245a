"""An EWC training step (3 consolidated tasks, separate and online) against a plain step, on the
``embedded``-sized GPT-2, batch 16 x 128 tokens: forward (+ penalty), backward, AdamW. Target <= 1.10x."""
from __future__ import annotations

import torch

from cl_utils.methods.ewc import EWC
from cl_utils.fisher import diagonal_fisher

from .common import Row, Setup, adamw_step, compare


def rows(setup: Setup) -> list[Row]:
    block, batch, repeats = (32, 4, 6) if setup.quick else (128, 16, 10)
    model = setup.model()
    vocab = model.config.vocab_size
    data = setup.blocks(batch, block, vocab, seed=1)
    fisher = diagonal_fisher(model, [setup.blocks(16, block, vocab, seed=2)])
    methods = {}
    for mode in ("separate", "online"):
        ewc = EWC(lam=100.0, mode=mode, gamma=0.9)
        for task in range(3):  # anchors at slightly different weights, Fishers scaled per task
            with torch.no_grad():
                anchor = {n: p.detach() + 1e-3 * (task + 1) for n, p in model.named_parameters() if p.requires_grad}
            ewc.consolidate({n: f * (task + 1) for n, f in fisher.items()}, anchor)
        methods[mode] = ewc
    model.train()
    steps = {"plain": lambda: adamw_step(lambda: model(**data).loss, model.parameters())}
    for mode, ewc in methods.items():
        steps[mode] = lambda e=ewc: adamw_step(lambda: model(**data).loss + e.penalty(model, 3), model.parameters())
    labels = {"plain": f"plain step (batch {batch} × {block})",
              **{mode: f"EWC step, {mode} (3 tasks)" for mode in methods}}
    return compare(steps, {mode: "plain" for mode in methods}, labels, repeats, setup.device, modules=[model],
                   targets={mode: ("<=", 1.10) for mode in methods})
