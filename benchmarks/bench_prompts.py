"""A Progressive Prompts training step against a full fine-tuning step on the ``embedded``-sized GPT-2,
batch 16 x 128 tokens. The prompt step is the third task's: prompts 0 and 1 frozen, prompt 2 (P = 10
virtual tokens) training through its residual MLP, so the model reads 30 + 128 positions. Each step is
forward, backward and AdamW."""
from __future__ import annotations

import copy

from cl_utils.benchmark import Benchmark, Task
from cl_utils.methods.prompts import ProgressivePrompts

from .common import Row, Setup, adamw_step, compare


def rows(setup: Setup) -> list[Row]:
    block, batch_size, P, warmup, steps = (32, 4, 4, 2, 5) if setup.quick else (128, 16, 10, 3, 15)
    model = setup.model()
    batch = setup.blocks(batch_size, block, model.config.vocab_size)
    full = copy.deepcopy(model).train()

    items = [{"input_ids": batch["input_ids"][0]}]
    bench = Benchmark("lm", [Task(f"t{i}", items, items, items) for i in range(3)], [], lambda f, b: 0.0, "-NLL")
    method = ProgressivePrompts(P)
    model = method.prepare(model, bench)
    for k in range(2):
        method.begin_task(model, k, bench.tasks[k])
        method.end_task(model, k, bench.tasks[k], bench)
    method.begin_task(model, 2, bench.tasks[2])
    model.train()
    labels = {"full": f"full fine-tuning step (batch {batch_size} × {block})",
              "prompt": f"prompt-tuning step (P = {P}, 3 prompts)"}
    return compare({"full": lambda: adamw_step(lambda: full(**batch).loss, full.parameters(), lr=1e-4),
                    "prompt": lambda: adamw_step(lambda: method.forward(model, batch, 2).loss,
                                                 method.parameters(model, 2), lr=3e-2)},
                   {"prompt": "full"}, labels, steps, setup.device, warmup=warmup,
                   modules=[full, model, method.prompts])
