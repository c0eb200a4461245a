"""Cost of a LoRA training step against a full fine-tuning step on the ``embedded``-sized GPT-2.

Run ``python benchmarks/bench_lora.py`` (under a minute on 2 CPU cores) or ``--quick`` (a tiny model, seconds).
Random token blocks stand in for data: cost depends on shapes, not on the tokens. Both steps are forward,
backward and AdamW on the same batch; LoRA (r=8 on c_attn, attn.c_proj and mlp.c_proj, through peft) trains
only its adapter but still back-propagates through every layer. Steps are interleaved so that load changes on
a shared machine hit both alike; each time is the median of ``--repeats`` steps after one warm-up.

Prints the measurements and always exits 0: timings on a shared machine are evidence, not a gate.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import torch
from peft import get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from cl_utils.lora import lora_config, trainable_parameter_report

EMBEDDED = dict(vocab_size=4096, n_positions=256, n_embd=128, n_layer=4, n_head=4)
QUICK = dict(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2)


def blocks(n: int, length: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (a smoke run)")
    ap.add_argument("--batch", type=int, default=16, help="blocks per step")
    ap.add_argument("--block", type=int, default=128, help="tokens per block")
    ap.add_argument("--r", type=int, default=8, help="LoRA rank")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per variant (median)")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.block, args.repeats = 4, 32, 3
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft 0.21 on transformers 5
    hf_logging.set_verbosity_error()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config(**(QUICK if args.quick else EMBEDDED))
    full = GPT2LMHeadModel(cfg)
    full.loss_type = "ForCausalLM"
    lora = get_peft_model(copy.deepcopy(full), lora_config(full, r=args.r, alpha=2 * args.r))
    full.train(), lora.train()
    batch = blocks(args.batch, args.block, cfg.vocab_size, seed=0)
    opts = {"full": (full, torch.optim.AdamW([p for p in full.parameters() if p.requires_grad], lr=1e-5)),
            "lora": (lora, torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-5))}
    report = trainable_parameter_report(lora)
    print(f"GPT-2 {sum(p.numel() for p in full.parameters()) / 1e6:.2f}M params, batch {args.batch} x "
          f"{args.block} tokens, LoRA r={args.r}, {threads} threads, torch {torch.__version__}, "
          f"median of {args.repeats}")

    def step(model, opt) -> None:
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {key: [] for key in opts}
    for _ in range(1 + args.repeats):  # the first step of each is the warm-up
        for key, (model, opt) in opts.items():
            start = time.perf_counter()
            step(model, opt)
            times[key].append(time.perf_counter() - start)
    t_full, t_lora = (statistics.median(times[k][1:]) for k in ("full", "lora"))
    n_full = sum(p.numel() for p in full.parameters())
    rows = [("full fine-tuning step", t_full, "1.000x", f"{n_full:,} (100%)"),
            (f"LoRA step (r={args.r})", t_lora, f"{t_lora / t_full:.3f}x",
             f"{report['trainable']:,} ({report['percent']:.2f}% of {report['total']:,})")]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'seconds':>8}  {'vs full':<8} trainable params")
    for name, t, ratio, params in rows:
        print(f"{name:<{width}}  {t:8.4f}  {ratio:<8} {params}")


if __name__ == "__main__":
    main()
