"""Cost of the EWC core on the ``embedded``-sized GPT-2: the Fisher and the penalty.

Run ``python benchmarks/bench_ewc.py`` (about a minute on 2 CPU cores) or ``--quick`` (a tiny model, seconds).
Random token blocks stand in for data: cost depends on shapes, not on the tokens. Every time is the median
of ``--repeats`` runs after one warm-up. Targets:

* ``diagonal_fisher`` over N blocks <= 1.5x one ordinary batched forward+backward over the same N (the floor);
* ``diagonal_fisher`` >= 2x faster than a per-example Python loop (batch of one, ``backward``, ``grad**2``);
* an EWC training step (3 consolidated tasks) <= 1.10x a plain step (forward, backward, AdamW).

Prints PASS/FAIL per target and always exits 0: timings on a shared machine are evidence, not a gate.
When another process holds one of the cores, every multi-threaded op waits for the descheduled thread
(here: 100x slower on the tiny model); ``--threads 1`` then gives steadier numbers.
"""
from __future__ import annotations

import argparse

import torch
from common import adamw_step, blocks, gpt2, interleaved, set_threads, verdict

from cl_utils.ewc import EWC
from cl_utils.fisher import diagonal_fisher

def loop_fisher(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference: one backward per example, squared, averaged."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    n_rows = batch["input_ids"].shape[0]
    for i in range(n_rows):
        model.zero_grad(set_to_none=True)
        model(**{k: v[i:i + 1] for k, v in batch.items()}).loss.backward()
        for n, p in params.items():
            acc[n] += p.grad.square()
    return {n: a / n_rows for n, a in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (a smoke run)")
    ap.add_argument("--n", type=int, default=64, help="examples in the Fisher (and in the floor)")
    ap.add_argument("--block", type=int, default=128, help="tokens per example")
    ap.add_argument("--chunk", type=int, default=16, help="chunk_size of diagonal_fisher")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the CPU cores available)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.block, args.repeats = 16, 32, 3
    threads = set_threads(args.threads)
    model = gpt2(args.quick)
    cfg = model.config
    model.eval()  # the Fisher runs without dropout; time the floor and the loop the same way
    data = blocks(args.n, args.block, cfg.vocab_size, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 {n_params / 1e6:.2f}M params, N={args.n} blocks of {args.block} tokens, "
          f"chunk_size={args.chunk}, {threads} threads, torch {torch.__version__}, median of {args.repeats}")

    def floor():
        model.zero_grad(set_to_none=True)
        model(**data).loss.backward()

    def floor_chunked():
        model.zero_grad(set_to_none=True)
        for start in range(0, args.n, args.chunk):
            model(**{k: v[start:start + args.chunk] for k, v in data.items()}).loss.backward()

    t = interleaved({"floor": floor, "chunked": floor_chunked,
                     "fisher": lambda: diagonal_fisher(model, [data], chunk_size=args.chunk),
                     "loop": lambda: loop_fisher(model, data)},
                    {"floor": args.repeats, "chunked": args.repeats, "fisher": args.repeats,
                     "loop": min(3, args.repeats)})
    rows = [("batched forward+backward (floor)", t["floor"], "", ""),
            (f"  same in batches of {args.chunk} (info)", t["chunked"], f"{t['chunked'] / t['floor']:.2f}x floor", ""),
            ("diagonal_fisher", t["fisher"], f"{t['fisher'] / t['floor']:.2f}x floor",
             verdict(t["fisher"] <= 1.5 * t["floor"]) + " (<= 1.5x)"),
            ("per-example loop Fisher", t["loop"], f"{t['loop'] / t['fisher']:.2f}x slower",
             verdict(t["loop"] >= 2 * t["fisher"]) + " (fisher >= 2x faster)")]

    # Training steps: batch 16, AdamW; EWC with 3 consolidated tasks (separate and online).
    step_batch = blocks(16, args.block, cfg.vocab_size, seed=1)
    fisher = diagonal_fisher(model, [blocks(16, args.block, cfg.vocab_size, seed=2)], chunk_size=args.chunk)
    methods = {}
    for mode in ("separate", "online"):
        ewc = EWC(lam=100.0, mode=mode, gamma=0.9)
        for task in range(3):  # anchors at slightly different weights, Fishers scaled per task
            with torch.no_grad():
                anchor = {n: p.detach() + 1e-3 * (task + 1) for n, p in model.named_parameters() if p.requires_grad}
            ewc.consolidate({n: f * (task + 1) for n, f in fisher.items()}, anchor)
        methods[mode] = ewc
    model.train()
    steps = {"plain": adamw_step(lambda: model(**step_batch).loss, model.parameters())}
    for mode, ewc in methods.items():
        steps[mode] = adamw_step(lambda e=ewc: model(**step_batch).loss + e.penalty(model, 3), model.parameters())
    t = interleaved(steps, 2 * args.repeats)
    rows.append(("plain training step (batch 16)", t["plain"], "", ""))
    for mode in methods:
        rows.append((f"EWC step, {mode} (3 tasks)", t[mode], f"{t[mode] / t['plain']:.3f}x plain",
                     verdict(t[mode] <= 1.10 * t["plain"]) + " (<= 1.10x)"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'seconds':>8}  {'ratio':<18} target")
    for name, seconds, ratio, target in rows:
        print(f"{name:<{width}}  {seconds:8.4f}  {ratio:<18} {target}")


if __name__ == "__main__":
    main()
