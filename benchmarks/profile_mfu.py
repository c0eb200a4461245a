"""Where each MFU workload's time goes (benchmarks/bench_mfu.py): the evidence behind the README's utilisation notes.

``python -m benchmarks.profile_mfu [--quick] [--threads N]`` profiles one call of every workload's training step and
evaluation (torch.profiler, after one untimed call) and prints the shares of self CPU time in matmuls (``aten::mm``,
``addmm``, ``bmm``, ``baddbmm``), attention (the SDPA kernels and softmax, backward included) and everything else
(element-wise ops, copies, reductions, embedding lookups); ``AdamW`` is the part of the latter under
``optimizer.step``; ``matmul GFLOP/s`` is the rate of the matmuls alone (the profiler's FLOP count over their time).
The profiler adds a little time to every op, so the shares are approximate.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from cl_utils.measure import quiet_profiler

from .bench_mfu import QUICK_SIZES, SIZES, WORKLOADS, sgemm_gflops
from .common import Setup, Step, set_threads

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
ATTENTION = ("attention", "softmax")


def breakdown(step: Step) -> dict[str, float]:
    """Shares of one call's self CPU time: ``matmul``, ``attention`` (SDPA kernels, softmax), ``element-wise``
    (the rest of aten), ``AdamW`` (everything under ``optimizer.step``), and ``matmul GFLOP/s`` (their rate alone)."""
    step()
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = [e for e in events if e.key in MATMUL]
    attn = sum(e.self_cpu_time_total for e in events if any(a in e.key.lower() for a in ATTENTION))
    adamw = max((e.cpu_time_total for e in events if e.key.startswith("Optimizer.step#")), default=0.0)
    mm_time = sum(e.self_cpu_time_total for e in mm)
    return {"matmul": mm_time / total, "attention": attn / total, "element-wise": 1 - (mm_time + attn) / total,
            "AdamW": adamw / total, "matmul GFLOP/s": sum(e.flops for e in mm) / max(mm_time, 1e-9) / 1e3}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="where each MFU workload's time goes (torch.profiler)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    setup = Setup(quick=args.quick)
    print(f"sgemm peak: {sgemm_gflops(QUICK_SIZES if args.quick else SIZES):.0f} GFLOP/s, "
          f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    for name, build in WORKLOADS.items():
        w = build(setup)
        for what, step in (("training step", w.train_step()), ("evaluation", w.eval_step())):
            shares = breakdown(step)
            print(f"{name} {what}: " + ", ".join(f"{k} {v:.0%}" if k != "matmul GFLOP/s" else f"{k} {v:.0f}"
                                                  for k, v in shares.items()))


if __name__ == "__main__":
    main()
