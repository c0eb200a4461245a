"""Run every benchmark and print one markdown table (``make bench``; ``python -m benchmarks [--quick]``).

Speed and peak memory of each method's pieces on the ``embedded``-sized GPT-2 (``--quick``: a tiny model,
seconds), each against its reference: the Fisher, an EWC step, a prompt-tuning step, a LoRA step, evaluation
throughput; then model FLOPs utilisation (training and evaluation of the embedded GPT-2, MiniLM and SmolLM2 against
the fp32 sgemm peak measured in the same run). Random token blocks stand in for data: cost depends on shapes, not
on the tokens. Each module interleaves the pieces it compares, so load changes on a shared machine hit them alike;
every time is a median.

Verdicts are evidence, not a gate: the command exits 0 whatever they say (a crash still fails it). When
another process holds one of the cores, every multi-threaded op waits for the descheduled thread;
``--threads 1`` then gives steadier numbers.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import torch

from . import bench_eval, bench_ewc, bench_fisher, bench_lora, bench_mfu, bench_prompts
from .common import EMBEDDED, MEMORY_NOTE, NOTES, QUICK, MiB, Row, Setup, cores, set_threads

BENCHES = {"fisher": bench_fisher, "ewc": bench_ewc, "prompts": bench_prompts, "lora": bench_lora,
           "eval": bench_eval, "mfu": bench_mfu}
KINDS = ("time", "utilisation", "memory")  # the table's order
COLUMNS = ("benchmark", "measured", "reference", "ratio", "target", "verdict")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: str) -> str:
    """One line: CPU, cores, torch threads and version, ATen's CPU capability, device, load average."""
    usable = cores()
    total = os.cpu_count() or usable
    line = (f"{cpu_model()}, {total} cores" + (f" ({usable} usable)" if usable != total else "")
            + f", {torch.get_num_threads()} torch threads, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()}), device {device}")
    if device.startswith("cuda"):
        line += f" ({torch.cuda.get_device_name(device)})"
    if hasattr(os, "getloadavg"):
        line += f"; load average {os.getloadavg()[0]:.2f} at start"
    return line


def _amount(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "B":
        return f"{value / MiB:.1f} MiB"
    return f"{value:,.0f} {unit}"


def _share(row: Row, value: float, spec: str) -> str:
    """A ratio (``spec`` digits) or bound: a percentage on utilisation rows, a multiple (``×``) elsewhere."""
    if math.isnan(value):
        return "–"
    return f"{value:.0%}" if row.kind == "utilisation" else f"{value:{spec}}×"


def cells(row: Row) -> tuple[str, ...]:
    name = f"peak memory: {row.name}" if row.kind == "memory" else row.name
    ratio = _share(row, row.ratio, ".2f")
    target = "–" if row.target is None else f"{'≤' if row.target[0] == '<=' else '≥'} {_share(row, row.target[1], 'g')}"
    return (name, _amount(row.value, row.unit), f"{row.reference}: {_amount(row.ref_value, row.unit)}",
            ratio, target, row.verdict)


def table(rows: list[Row]) -> str:
    """The markdown table: timings first, then utilisation, then peak memory, each in benchmark order."""
    ordered = [r for kind in KINDS for r in rows if r.kind == kind]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in ordered]
    return "\n".join(lines)


def collect(setup: Setup, names: list[str] | None = None) -> list[Row]:
    """Every row of the benchmarks ``names`` (default: all), in order; progress on stderr."""
    rows: list[Row] = []
    NOTES.clear()
    for name in names or list(BENCHES):
        start = time.perf_counter()
        rows += BENCHES[name].rows(setup)
        print(f"=== {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model and few repeats (a smoke run, seconds)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the CPU cores available)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or None
    unknown = sorted(set(names or []) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    set_threads(args.threads)
    setup = Setup(quick=args.quick, device=args.device)
    size = QUICK if args.quick else EMBEDDED
    head = machine(args.device)
    start = time.perf_counter()
    rows = collect(setup, names)
    elapsed = time.perf_counter() - start
    met = [r for r in rows if r.target is not None]
    print(f"Machine: {head}")
    print(f"Model: GPT-2 {size['n_layer']} layers x {size['n_embd']}, vocabulary {size['vocab_size']}"
          f"{' (--quick)' if args.quick else ' (the embedded profile)'}; measured in {elapsed:.0f} s\n")
    print(table(rows))
    print(f"\n{sum(r.verdict == 'PASS' for r in met)} of {len(met)} targets met. ratio: the measured piece's cost "
          "(time, or memory) over its reference's; > 1 costs more. Times: medians of interleaved repeats (the Fisher "
          "rows: each piece alternating with its reference alone). "
          f"{MEMORY_NOTE}. Utilisation (%): tokens/s over the tokens/s that the model FLOPs per token (6 N + 12 L d T "
          "training, a third of it evaluation; benchmarks/bench_mfu.py) would reach at the fp32 sgemm peak measured "
          "in this run, both from best-of times.")
    for line in NOTES:
        print(f"Note: {line}")
    return rows


if __name__ == "__main__":
    main()
