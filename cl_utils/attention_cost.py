"""What self-attention costs as the context grows: measured time and peak memory against sequence length n.

Two things are swept over n (batch 1, float32, random weights and tokens: cost depends on shapes only):

- one attention layer of a GPT-2 config (``GPT2Attention``: QKV projection, the attention itself and the output
  projection, with the causal mask the model builds for itself, ``masking_utils.create_causal_mask``);
- the whole ``GPT2LMHeadModel``.

Each is measured forward (``no_grad``) and forward+backward, for every :class:`Variant`: transformers'
``attn_implementation="eager"`` (explicit n x n scores, Vaswani et al. 2017) and ``"sdpa"``
(``torch.nn.functional.scaled_dot_product_attention``), and within SDPA each backend the device offers, forced with
``torch.nn.attention.sdpa_kernel``: on a CPU the math path and the fused flash kernel (FlashAttention's tiling,
Dao et al. 2022, never materialising the n x n scores); on CUDA also the memory-efficient kernel (Rabe & Staats 2021).
:func:`cl_utils.measure.sdpa_kernels` names the kernel that actually ran; :mod:`cl_utils.measure` says how time
and peak memory are measured.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block, eager_attention_forward

from .config import ModelSpec
from .display import progress_bar
from .measure import Step, min_seconds, peak_memory, sdpa_kernels, torch_threads

__all__ = ["Variant", "variants", "gpt2_config", "Sweep", "attention_layer_step", "model_step", "run_sweep",
           "layer_breakdown"]



@dataclass(frozen=True)
class Variant:
    """One way to compute attention: a transformers ``attn_implementation`` and, for SDPA, a forced backend."""

    name: str  # key in results, e.g. "sdpa_flash"
    implementation: str  # "eager" or "sdpa"
    backend: SDPBackend | None = None  # None: SDPA picks a kernel itself

    def context(self):
        """The ``sdpa_kernel`` context forcing this variant's backend (a no-op when none is forced)."""
        return sdpa_kernel(self.backend) if self.backend is not None else nullcontext()


def variants(device: torch.device | str) -> list[Variant]:
    """The variants a device offers: eager, SDPA's own choice, and each SDPA backend forced (CPU: math and
    flash; CUDA: math, flash and memory-efficient)."""
    out = [Variant("eager", "eager"), Variant("sdpa", "sdpa"), Variant("sdpa_math", "sdpa", SDPBackend.MATH),
           Variant("sdpa_flash", "sdpa", SDPBackend.FLASH_ATTENTION)]
    if torch.device(device).type == "cuda":
        out.append(Variant("sdpa_efficient", "sdpa", SDPBackend.EFFICIENT_ATTENTION))
    return out


def gpt2_config(model: ModelSpec) -> GPT2Config:
    """The GPT-2 config of a config-built profile's model (``profile.model``), without dropout."""
    return GPT2Config(vocab_size=model.vocab_size, n_positions=model.n_positions, n_embd=model.n_embd,
                      n_layer=model.n_layer, n_head=model.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=0, eos_token_id=0)


def _config(base: GPT2Config, implementation: str, n_positions: int) -> GPT2Config:
    cfg = GPT2Config(**{**base.to_dict(), "n_positions": max(base.n_positions, n_positions)})
    cfg._attn_implementation = implementation
    return cfg


def attention_layer_step(base: GPT2Config, variant: Variant, n: int, *, backward: bool,
                         device: torch.device | str = "cpu", seed: int = 0) -> Step:
    """One call of a GPT-2 attention layer on ``(1, n, n_embd)`` hidden states, with the causal mask the model
    would build (eager: an ``(1, 1, n, n)`` additive mask; SDPA: none, ``is_causal=True``), inside the variant's
    ``sdpa_kernel`` context; ``backward``: also back-propagate ``out.sum()`` to the input and the weights."""
    device = torch.device(device)
    torch.manual_seed(seed)
    cfg = _config(base, variant.implementation, n)
    layer = GPT2Attention(cfg, layer_idx=0).to(device).train(False)
    x = torch.randn(1, n, cfg.n_embd, device=device, requires_grad=backward)

    def step() -> None:
        with variant.context(), torch.set_grad_enabled(backward):
            mask = create_causal_mask(config=cfg, inputs_embeds=x, attention_mask=None, past_key_values=None,
                                      position_ids=torch.arange(n, device=device)[None])
            out = layer(x, attention_mask=mask)[0]
            if backward:
                layer.zero_grad(set_to_none=True)
                x.grad = None
                out.sum().backward()
    return step


def model_step(base: GPT2Config, variant: Variant, n: int, *, backward: bool, device: torch.device | str = "cpu",
               seed: int = 0) -> Step:
    """One call of the whole ``GPT2LMHeadModel`` on ``(1, n)`` random tokens; ``backward``: the LM loss too."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(_config(base, variant.implementation, n)).to(device).train(False)
    model.loss_type = "ForCausalLM"
    ids = torch.randint(0, base.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed)).to(device)

    def step() -> None:
        with variant.context(), torch.set_grad_enabled(backward):
            if backward:
                model.zero_grad(set_to_none=True)
                model(input_ids=ids, labels=ids).loss.backward()
            else:
                model(input_ids=ids)
    return step


@dataclass
class Sweep:
    """Measurements against sequence length; every list is aligned with ``lengths``."""

    lengths: list[int]
    seconds: dict[str, list[float]] = field(default_factory=dict)  # variant -> forward seconds (no_grad)
    seconds_fwd_bwd: dict[str, list[float]] = field(default_factory=dict)  # variant -> forward+backward seconds
    peak_memory: dict[str, list[float]] = field(default_factory=dict)  # variant -> forward peak bytes
    peak_memory_fwd_bwd: dict[str, list[float]] = field(default_factory=dict)  # variant -> forward+backward peak
    kernels: dict[str, list[str]] = field(default_factory=dict)  # variant -> SDPA kernels that ran (forward, first n)

    def table(self):
        """The sweep as a table: one row per length, columns (measure, variant); ms and MiB, blank once stopped."""
        import pandas as pd

        cols = {}
        for key, unit, scale in (("seconds", "forward ms", 1e3), ("seconds_fwd_bwd", "fwd+bwd ms", 1e3),
                                 ("peak_memory", "forward MiB", 2 ** -20),
                                 ("peak_memory_fwd_bwd", "fwd+bwd MiB", 2 ** -20)):
            for name, values in getattr(self, key).items():
                cols[(unit, name)] = [None if v is None else v * scale for v in values]
        return pd.DataFrame(cols, index=pd.Index(self.lengths, name="n"))

    def as_dict(self) -> dict:
        return {"lengths": self.lengths, "seconds": self.seconds, "seconds_fwd_bwd": self.seconds_fwd_bwd,
                "peak_memory": self.peak_memory, "peak_memory_fwd_bwd": self.peak_memory_fwd_bwd,
                "kernels": self.kernels}


def run_sweep(make_step: Callable[..., Step], base: GPT2Config, lengths: list[int], chosen: list[Variant], *,
              device: torch.device | str = "cpu", desc: str = "sweep", progress: bool = True, budget_s: float = 0.4,
              max_call_s: float = 5.0, threads: int = 0) -> Sweep:
    """Time and probe the peak memory of ``make_step`` (:func:`attention_layer_step` or :func:`model_step`)
    for every variant at every length, forward and forward+backward. Lengths go up; variants are
    interleaved at each length, so a change in machine load hits them alike.

    A variant stops (None from then on) once its forward+backward call, grown quadratically to the next length,
    would take longer than ``max_call_s``: that is how the O(n^2) paths stop early while the fused ones go on.
    The memory probe doubles as the warm-up call. ``threads``: torch threads while measuring (0: as they are; see
    :func:`cl_utils.measure.torch_threads`).
    """
    if not lengths or any(int(n) < 2 for n in lengths) or sorted(lengths) != list(lengths):
        raise ValueError(f"lengths must be increasing integers >= 2, got {lengths}")
    if not chosen:
        raise ValueError("no variant to measure")
    device = torch.device(device)
    out = Sweep(list(lengths))
    tables = (out.seconds, out.seconds_fwd_bwd, out.peak_memory, out.peak_memory_fwd_bwd)
    for table in tables:
        table.update({v.name: [] for v in chosen})
    stopped: set[str] = set()
    with torch_threads(threads):
        for i, n in enumerate(progress_bar(lengths, desc=desc, enabled=progress)):
            for v in chosen:
                if v.name in stopped:
                    for table in tables:
                        table[v.name].append(None)
                    continue
                fwd = make_step(base, v, n, backward=False, device=device)
                out.peak_memory[v.name].append(peak_memory(fwd, device))
                out.seconds[v.name].append(min_seconds(fwd, device, budget_s=budget_s, warmup=False))
                if i == 0:
                    out.kernels[v.name] = sdpa_kernels(fwd)
                del fwd
                both = make_step(base, v, n, backward=True, device=device)
                out.peak_memory_fwd_bwd[v.name].append(peak_memory(both, device))
                out.seconds_fwd_bwd[v.name].append(min_seconds(both, device, budget_s=budget_s, warmup=False))
                del both
                if i + 1 < len(lengths) and out.seconds_fwd_bwd[v.name][-1] * (lengths[i + 1] / n) ** 2 > max_call_s:
                    stopped.add(v.name)
    return out


def layer_breakdown(base: GPT2Config, lengths: list[int], variant: Variant, *, device: torch.device | str = "cpu",
                    budget_s: float = 0.3, desc: str = "breakdown", progress: bool = True,
                    threads: int = 0) -> dict[str, list[float]]:
    """Forward seconds (``no_grad``) of the parts of one GPT-2 block at each length n, on ``(1, n, n_embd)``:

    - ``attention``: what ``attn_implementation`` computes from q, k, v ``(1, heads, n, head_dim)``: the causal
      mask, scores, softmax and weighted sum (O(n^2 d));
    - ``projections``: the QKV and output projections (``c_attn``, ``c_proj``; O(n d^2));
    - ``mlp``: the feed-forward block (O(n d^2)).

    ``threads``: torch threads while measuring (0: as they are).
    """
    device = torch.device(device)
    cfg = _config(base, variant.implementation, max(lengths))
    torch.manual_seed(0)
    block = GPT2Block(cfg, layer_idx=0).to(device).train(False)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(variant.implementation, eager_attention_forward)
    heads, head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
    out: dict[str, list[float]] = {"attention": [], "projections": [], "mlp": []}
    for n in progress_bar(lengths, desc=desc, enabled=progress):
        x = torch.randn(1, n, cfg.n_embd, device=device)
        q, k, v = torch.randn(3, 1, heads, n, head_dim, device=device).unbind(0)
        positions = torch.arange(n, device=device)[None]

        def core() -> None:
            mask = create_causal_mask(config=cfg, inputs_embeds=x, attention_mask=None, past_key_values=None,
                                      position_ids=positions)
            attend(block.attn, q, k, v, mask, dropout=0.0, scaling=block.attn.scaling)

        parts = {"attention": core, "projections": lambda: (block.attn.c_attn(x), block.attn.c_proj(x)),
                 "mlp": lambda: block.mlp(x)}
        with torch.no_grad(), variant.context(), torch_threads(threads):
            for name, fn in parts.items():
                out[name].append(min_seconds(fn, device, budget_s=budget_s))
    return out
