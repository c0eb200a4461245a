"""What every benchmark shares: the model sizes, random blocks, a step, an interleaved timer, a peak-memory
probe, and the rows they all report.

Random token blocks stand in for data: cost depends on shapes, not on the tokens.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from itertools import accumulate
from typing import Callable, Iterable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from cl_utils.measure import quiet_profiler

# The `embedded` profile's GPT-2 (cl_utils.config.ModelSpec defaults) and a tiny one for --quick.
EMBEDDED = dict(vocab_size=4096, n_positions=256, n_embd=128, n_layer=4, n_head=4)
QUICK = dict(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2)
MiB = 2 ** 20

Step = Callable[[], object]


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int = 0) -> int:
    """Use ``threads`` torch threads (0: every core this process may run on); return the number."""
    threads = threads or cores()
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class Setup:
    """The size (``quick``: a tiny model and few repeats) and the device every benchmark runs on."""
    quick: bool = False
    device: str = "cpu"

    def model(self, seed: int = 0) -> GPT2LMHeadModel:
        """The benchmark model, built from its config: no dropout, end-of-text id inside the vocabulary."""
        hf_logging.set_verbosity_error()
        torch.manual_seed(seed)
        cfg = GPT2Config(**(QUICK if self.quick else EMBEDDED), bos_token_id=0, eos_token_id=0,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
        model.loss_type = "ForCausalLM"
        return model.to(self.device)

    def blocks(self, n: int, length: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """``n`` random blocks of ``length`` tokens, as a batch with labels."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (n, length), generator=g)
        return {k: v.to(self.device) for k, v in
                {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}.items()}


def adamw_step(loss_fn: Callable[[], torch.Tensor], params: Iterable[torch.nn.Parameter],
               lr: float = 1e-5, after_backward: Callable[[], None] | None = None) -> Step:
    """One training step (forward via ``loss_fn``, backward, ``after_backward`` as the stream runner calls a
    method's, AdamW) over ``params``, as a callable. The optimizer's state is created by the first call."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        if after_backward is not None:
            after_backward()
        opt.step()
    return step


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Step], repeats: int | dict[str, int], warmup: int = 1,
                statistic: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Median seconds of each function (or another ``statistic`` of its times, e.g. ``min``): ``warmup`` untimed
    runs each, then round-robin timed runs (``repeats``, or ``repeats[name]``), so that load changes on a shared
    machine hit every one alike."""
    counts = repeats if isinstance(repeats, dict) else {name: repeats for name in fns}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync()
    for r in range(max(counts.values())):
        for name, fn in fns.items():
            if r < counts[name]:
                start = time.perf_counter()
                fn()
                _sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistic(t) for name, t in times.items()}


# -- peak memory -------------------------------------------------------------------------------------------
MEMORY_NOTE = ("peak memory: the most tensor memory held at once during one call, over what was held before it "
               "(CPU: torch.profiler's allocation events, profile_memory=True; CUDA: torch.cuda.max_memory_allocated), "
               "so the allocator's slack and Python objects are left out; each call starts with no gradients and, for "
               "a training step, a fresh AdamW, so gradients, optimizer state, activations and temporaries all count")


def _cpu_peak(fn: Step) -> float:
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    return float(max(accumulate(nbytes for _, nbytes in events), default=0))


def peak_memory(fn: Step, modules: Iterable[torch.nn.Module], device: str) -> float:
    """Peak extra tensor memory of one call of ``fn``, in bytes (see ``MEMORY_NOTE``); the gradients of
    ``modules`` are dropped first."""
    for module in modules:
        module.zero_grad(set_to_none=True)
    gc.collect()
    if not device.startswith("cuda"):
        return max(_cpu_peak(fn), 0.0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - before)


# -- rows --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: ``value`` against ``ref_value`` (the ``reference``), in ``unit``.

    ``ratio`` is the measured piece's cost over the reference's (time, or memory): > 1 costs more; for ``kind``
    ``"utilisation"`` it is ``value / ref_value``, a share of the reference's rate: higher is better.
    ``target`` is ``(op, bound)`` on that ratio, op ``"<="`` or ``">="``; None: a measurement without a target.
    ``kind``: ``"time"``, ``"memory"`` or ``"utilisation"`` (benchmarks.bench_mfu).
    """
    name: str
    value: float
    reference: str
    ref_value: float
    unit: str
    ratio: float
    target: tuple[str, float] | None = None
    kind: str = "time"

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "–"
        op, bound = self.target
        return "PASS" if (self.ratio <= bound if op == "<=" else self.ratio >= bound) else "FAIL"


NOTES: list[str] = []  # printed under the table: what a benchmark skipped, and why


def note(text: str) -> None:
    """Record a line for under the table (and say it on stderr at once)."""
    NOTES.append(text)
    print(f"note: {text}", file=sys.stderr, flush=True)


def _ratio(cost: float, ref_cost: float) -> float:
    return cost / ref_cost if ref_cost > 0 else math.nan


def compare(fns: dict[str, Callable[[], Step]], against: dict[str, str], labels: dict[str, str],
            repeats: int | dict[str, int], device: str, *, warmup: int = 1, modules: Iterable[torch.nn.Module] = (),
            targets: dict[str, tuple[str, float]] | None = None, tokens: int | None = None,
            pairwise: bool = False) -> list[Row]:
    """Time the pieces together (:func:`interleaved`), then the peak memory of one call each, and compare
    each piece named in ``against`` with its reference piece.

    ``pairwise``: time each piece alternating with its reference only, one pair after the other (a reference is
    timed again with each piece it serves), instead of all pieces in one round-robin. For pieces that allocate and
    free GBs per call (a per-example loop's dense gradients, vmap's and Opacus's per-example copies): what they do
    to the caches and memory falls partly on whatever runs next, and would be billed to a neighbour.

    ``fns`` maps a piece to a factory that builds it (called again, fresh, for the memory probe, so a
    training step's optimizer state counts); ``labels`` names the pieces in the table; ``targets`` (by piece)
    bound the time ratio; ``tokens``: tokens per call, to report throughput (tokens/s) instead of seconds.
    """
    targets = targets or {}
    modules = list(modules)
    built = {name: make() for name, make in fns.items()}
    if pairwise:
        counts = repeats if isinstance(repeats, dict) else {name: repeats for name in fns}
        pairs = {name: interleaved({ref: built[ref], name: built[name]}, {ref: counts[ref], name: counts[name]},
                                   warmup) for name, ref in against.items()}
    else:
        together = interleaved(built, repeats, warmup)
        pairs = {name: together for name in against}
    memory = {name: peak_memory(make(), modules, device) for name, make in fns.items()}
    timed, peaks = [], []
    for name, ref in against.items():
        seconds = pairs[name]
        if tokens is None:
            value, ref_value, unit = seconds[name], seconds[ref], "s"
        else:
            value, ref_value, unit = tokens / seconds[name], tokens / seconds[ref], "tokens/s"
        timed.append(Row(labels[name], value, labels[ref], ref_value, unit, _ratio(seconds[name], seconds[ref]),
                         targets.get(name)))
        peaks.append(Row(labels[name], memory[name], labels[ref], memory[ref], "B",
                         _ratio(memory[name], memory[ref]), kind="memory"))
    return timed + peaks
