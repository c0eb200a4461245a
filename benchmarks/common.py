"""What every benchmark shares: the model sizes, random blocks, thread setup, a step and an interleaved timer.

Random token blocks stand in for data: cost depends on shapes, not on the tokens.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Iterable

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

# The `embedded` profile's GPT-2 (cl_utils.config.ModelSpec defaults) and a tiny one for --quick.
EMBEDDED = dict(vocab_size=4096, n_positions=256, n_embd=128, n_layer=4, n_head=4)
QUICK = dict(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2)


def set_threads(threads: int = 0) -> int:
    """Use ``threads`` torch threads (0: every core this process may run on); return the number."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or cores
    torch.set_num_threads(threads)
    return threads


def gpt2(quick: bool, seed: int = 0) -> GPT2LMHeadModel:
    """The benchmark model, built from its config: no dropout, end-of-text id inside the vocabulary."""
    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = GPT2Config(**(QUICK if quick else EMBEDDED), bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"
    return model


def blocks(n: int, length: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` random blocks of ``length`` tokens, as a batch with labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def adamw_step(loss_fn: Callable[[], torch.Tensor], params: Iterable[torch.nn.Parameter],
               lr: float = 1e-5) -> Callable[[], None]:
    """One training step (forward via ``loss_fn``, backward, AdamW) over ``params``, as a callable."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
    return step


def interleaved(fns: dict[str, Callable[[], object]], repeats: int | dict[str, int],
                warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function: ``warmup`` untimed runs each, then round-robin timed runs
    (``repeats``, or ``repeats[name]``), so that load changes on a shared machine hit every one alike."""
    counts = repeats if isinstance(repeats, dict) else {name: repeats for name in fns}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for r in range(max(counts.values())):
        for name, fn in fns.items():
            if r < counts[name]:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
