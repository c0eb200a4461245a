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
import warnings

import torch
from common import adamw_step, blocks, gpt2, interleaved, set_threads
from peft import get_peft_model

from cl_utils.lora import lora_config, trainable_parameter_report

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
    threads = set_threads()
    full = gpt2(args.quick)
    cfg = full.config
    lora = get_peft_model(copy.deepcopy(full), lora_config(full, r=args.r, alpha=2 * args.r))
    full.train(), lora.train()
    batch = blocks(args.batch, args.block, cfg.vocab_size, seed=0)
    report = trainable_parameter_report(lora)
    print(f"GPT-2 {sum(p.numel() for p in full.parameters()) / 1e6:.2f}M params, batch {args.batch} x "
          f"{args.block} tokens, LoRA r={args.r}, {threads} threads, torch {torch.__version__}, "
          f"median of {args.repeats}")

    t = interleaved({"full": adamw_step(lambda: full(**batch).loss, full.parameters()),
                     "lora": adamw_step(lambda: lora(**batch).loss, lora.parameters())}, args.repeats)
    t_full, t_lora = t["full"], t["lora"]
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
