"""When SDPA's fused kernel is not used, and why.

``torch.nn.functional.scaled_dot_product_attention`` picks a kernel per call. The fused ones (flash on a CPU; flash,
memory-efficient or cuDNN on CUDA) never hold the n x n scores; the math path does, exactly like eager attention.
Nothing says which one ran, so :func:`dispatch_table` runs the whole GPT-2 in the situations that matter, names the
kernel from torch.profiler's op names (:func:`cl_utils.measure.sdpa_kernels`), asks torch why the fused kernel
was refused (forcing it with ``sdpa_kernel`` makes torch say so in a warning) and measures what each costs.
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2Config, GPT2LMHeadModel

from .measure import Step, min_seconds, peak_memory, sdpa_kernels, torch_threads

__all__ = ["CASES", "dispatch_table", "refusal_reason"]


CASES = {
    "causal, no mask": "eval mode, no attention_mask: transformers passes no mask and is_causal=True",
    "padding mask": "a 2-D attention_mask with one padded token: transformers builds an explicit (1, 1, n, n) mask",
    "attention dropout": "training mode with attn_pdrop=0.1 (GPT-2's own default; the embedded profile uses 0)",
    "learned mask": "an additive mask that requires grad (a learned position bias, e.g. ALiBi-style slopes)",
}


def _fused(device: torch.device) -> list[SDPBackend]:
    return [SDPBackend.FLASH_ATTENTION] + ([SDPBackend.EFFICIENT_ATTENTION] if device.type == "cuda" else [])


def refusal_reason(fn: Step, device: torch.device | str = "cpu") -> str:
    """Why the fused kernels refuse ``fn``'s SDPA call, in torch's own words ("" when one accepts it): ``fn`` runs
    once with only the fused backends allowed, and torch's warnings are collected."""
    device = torch.device(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(_fused(device)):
                fn()
            return ""
        except RuntimeError:
            pass
    reasons = []
    for w in caught:
        text = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", str(w.message)).strip()
        if text and not text.endswith("not used because:") and text not in reasons:
            reasons.append(text)
    return " ".join(reasons) or "refused without a reason given (checked: no fused kernel accepts the call)"


def _cases(base: GPT2Config, n: int, device: torch.device) -> dict[str, Step]:
    cfg = GPT2Config(**{**base.to_dict(), "n_positions": max(base.n_positions, n), "attn_pdrop": 0.1})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).to(device).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(0)).to(device)
    padded = torch.ones_like(ids)
    padded[0, -1] = 0
    heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
    q, k, v = torch.randn(3, 1, heads, n, head_dim, device=device).unbind(0)
    bias = torch.zeros(n, n, device=device).masked_fill(
        torch.ones(n, n, dtype=torch.bool, device=device).triu(1), float("-inf")).requires_grad_()

    def run(mode: str) -> Step:
        def step() -> None:
            with torch.no_grad():
                model.train(mode == "attention dropout")
                model(input_ids=ids, attention_mask=padded if mode == "padding mask" else None)
                model.eval()
        return step

    def learned() -> None:  # a single SDPA call (one layer's attention): no transformers model takes a learned mask
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return {"causal, no mask": run(""), "padding mask": run("padding mask"),
            "attention dropout": run("attention dropout"), "learned mask": learned}


def dispatch_table(base: GPT2Config, n: int, *, device: torch.device | str = "cpu", threads: int = 0):
    """One row per case of :data:`CASES` at length ``n``: the SDPA kernel that ran, why the fused one was
    refused, forward seconds and peak memory (MiB; "learned mask" is one attention call, the rest the whole model).
    ``threads``: torch threads while measuring (0: as they are)."""
    import pandas as pd

    device = torch.device(device)
    rows = []
    with torch_threads(threads):
        for name, step in _cases(base, n, device).items():
            kernels = sdpa_kernels(step)
            rows.append({"case": name, "what": CASES[name], "kernel": ", ".join(kernels) or "none",
                         "why not fused": refusal_reason(step, device) or "-",
                         "forward s": min_seconds(step, device, budget_s=0.3, max_repeats=3),
                         "peak MiB": peak_memory(step, device) / 2 ** 20})
    return pd.DataFrame(rows).set_index("case")
