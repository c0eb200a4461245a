"""Speed of a Progressive Prompts training step relative to a full fine-tuning step.

The embedded-sized GPT-2 (4 layers, 128 wide, 256 positions, vocabulary 4096) built from its config, random
token blocks of 128, batch 16. The prompt step is the third task's: prompts 0 and 1 frozen, prompt 2 (10
virtual tokens) training through its residual MLP, so the model reads 30 + 128 positions. Each step is
forward + backward + AdamW step; the figure is the median over the timed steps (the two kinds of
step take turns), after warm-up steps.

    python benchmarks/bench_prompts.py           # the embedded size
    python benchmarks/bench_prompts.py --quick   # a tiny model, a few steps (seconds)

Prints the two medians and their ratio. Slow timings never fail it (a measurement, not a test); a crash does.
"""
from __future__ import annotations

import argparse
import copy

import torch
from common import adamw_step, blocks, gpt2, interleaved, set_threads

from cl_utils.benchmark import Benchmark, Task
from cl_utils.prompts import ProgressivePrompts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps")
    args = parser.parse_args(argv)
    block, batch_size, P, warmup, steps = (32, 4, 4, 2, 5) if args.quick else (128, 16, 10, 3, 15)
    threads = set_threads()
    model = gpt2(args.quick)
    cfg = model.config
    batch = blocks(batch_size, block, cfg.vocab_size)
    print(f"GPT-2 {cfg.n_layer} layers x {cfg.n_embd}, batch {batch_size} x {block} tokens, "
          f"torch {torch.__version__}, {threads} threads")

    full = copy.deepcopy(model).train()
    full_step = adamw_step(lambda: full(**batch).loss, full.parameters(), lr=1e-4)

    items = [{"input_ids": batch["input_ids"][0]}]
    bench = Benchmark("lm", [Task(f"t{i}", items, items) for i in range(3)], [], lambda f, b: 0.0, "-NLL")
    method = ProgressivePrompts(P)
    model = method.prepare(model, bench)
    for k in range(2):
        method.begin_task(model, k, bench.tasks[k])
        method.end_task(model, k, bench.tasks[k], bench)
    method.begin_task(model, 2, bench.tasks[2])
    model.train()
    prompt_step = adamw_step(lambda: method.forward(model, batch, 2).loss, method.parameters(model, 2), lr=3e-2)

    medians = interleaved({"full": full_step, "prompt": prompt_step}, steps, warmup=warmup)
    t_full, t_prompt = medians["full"], medians["prompt"]
    n_full = sum(p.numel() for p in full.parameters())
    n_prompt = sum(p.numel() for p in method.parameters(model, 2))
    print(f"full fine-tuning step:       {t_full * 1e3:8.1f} ms  ({n_full:,} trained parameters)")
    print(f"progressive prompts step:    {t_prompt * 1e3:8.1f} ms  ({n_prompt:,} trained parameters, "
          f"{method.prompt_stack_length} virtual tokens)")
    print(f"prompt step / full step:     {t_prompt / t_full:8.2f}")


if __name__ == "__main__":
    main()
