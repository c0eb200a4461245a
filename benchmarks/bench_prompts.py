"""Speed of a Progressive Prompts training step relative to a full fine-tuning step.

The embedded-sized GPT-2 (4 layers, 128 wide, 256 positions, vocabulary 4096) built from its config, random
token blocks of 128, batch 16. The prompt step is the third task's: prompts 0 and 1 frozen, prompt 2 (10
virtual tokens) training through its residual MLP, so the model reads 30 + 128 positions. Each step is
forward + backward + AdamW step; the figure is the median over the timed steps (the two kinds of
step take turns), after warm-up steps.

    python benchmarks/bench_prompts.py           # the embedded size
    python benchmarks/bench_prompts.py --quick   # a tiny model, a few steps (seconds)

Prints the two medians and their ratio. Always exits 0: it is a measurement, not a test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cl_utils.benchmark import Benchmark, Task
from cl_utils.prompts import ProgressivePrompts


def median_step_seconds(steps_by_name: dict, warmup: int, steps: int) -> dict[str, float]:
    """Median seconds of each step function; they take turns, so a busy shared CPU slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for i in range(warmup + steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps")
    args = parser.parse_args(argv)
    ids = {"bos_token_id": 0, "eos_token_id": 0}  # inside the vocabulary (GPT2Config's default is 50256)
    if args.quick:
        cfg = GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=1, n_head=2, **ids)
        block, batch_size, P, warmup, steps = 32, 4, 4, 2, 5
    else:
        cfg = GPT2Config(vocab_size=4096, n_positions=256, n_embd=128, n_layer=4, n_head=4, **ids)
        block, batch_size, P, warmup, steps = 128, 16, 10, 3, 15
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"
    ids = torch.randint(cfg.vocab_size, (batch_size, block))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    print(f"GPT-2 {cfg.n_layer} layers x {cfg.n_embd}, batch {batch_size} x {block} tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    full = GPT2LMHeadModel(cfg)
    full.load_state_dict(model.state_dict())
    full.loss_type = "ForCausalLM"
    full.train()
    opt_full = torch.optim.AdamW(full.parameters(), lr=1e-4)

    def full_step() -> None:
        opt_full.zero_grad(set_to_none=True)
        full(**batch).loss.backward()
        opt_full.step()

    items = [{"input_ids": ids[0]}]
    bench = Benchmark("lm", [Task(f"t{i}", items, items) for i in range(3)], [], lambda f, b: 0.0, "-NLL")
    method = ProgressivePrompts(P)
    model = method.prepare(model, bench)
    for k in range(2):
        method.begin_task(model, k, bench.tasks[k])
        method.end_task(model, k, bench.tasks[k], bench)
    method.begin_task(model, 2, bench.tasks[2])
    model.train()
    opt_prompt = torch.optim.AdamW(method.parameters(model, 2), lr=3e-2)

    def prompt_step() -> None:
        opt_prompt.zero_grad(set_to_none=True)
        method.forward(model, batch, 2).loss.backward()
        opt_prompt.step()

    medians = median_step_seconds({"full": full_step, "prompt": prompt_step}, warmup, steps)
    t_full, t_prompt = medians["full"], medians["prompt"]
    n_full = sum(p.numel() for p in full.parameters())
    n_prompt = sum(p.numel() for p in method.parameters(model, 2))
    print(f"full fine-tuning step:       {t_full * 1e3:8.1f} ms  ({n_full:,} trained parameters)")
    print(f"progressive prompts step:    {t_prompt * 1e3:8.1f} ms  ({n_prompt:,} trained parameters, "
          f"{method.prompt_stack_length} virtual tokens)")
    print(f"prompt step / full step:     {t_prompt / t_full:8.2f}")


if __name__ == "__main__":
    try:
        main()
    except Exception:  # a measurement: report the failure, never fail the caller
        traceback.print_exc()
    sys.exit(0)
