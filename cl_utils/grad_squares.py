"""Weighted sums of squared (or absolute) per-example gradients, taken layer by layer inside one ordinary backward
pass: EWC's Fisher (:mod:`cl_utils.fisher`) and MAS's importance (:mod:`cl_utils.methods.mas`).

A layer ``y = x W^T + b`` applied to the tokens ``t`` of example ``b`` has the per-example gradient
``G_b = sum_t delta_bt x_bt^T`` (``delta``: the gradient of the summed loss with respect to ``y``; the examples do
not interact, so ``delta_b`` is example ``b``'s own). One batched backward of ``sum_b loss_b`` therefore gives every
example's gradient, layer by layer: a forward hook keeps each layer's input ``x`` (autograd keeps it anyway), a
hook on its output receives ``delta``, and ``G_b`` is one batched matrix product, as large as the weight gradient
that an ordinary backward computes and that is never formed here (every parameter is frozen while this runs; the
graph starts at the embeddings' outputs). Each ``G_b`` is squared and weighted into the running sum at once, a few
examples at a time, so that the copies stay small (cf. Goodfellow 2015, "Efficient per-example gradient
computations"; Opacus's ``GradSampleModule`` keeps every ``G_b`` instead).

Layers: ``nn.Linear``, transformers' ``Conv1D`` (GPT-2), ``nn.Embedding`` (accumulated sparsely: only the rows of
the example's tokens, summed per token id before squaring; ``padding_idx`` gets nothing, as in ``nn.Embedding``),
``nn.LayerNorm`` and the ``RMSNorm`` of Llama-family models (their normalised input is recomputed from ``x``). A
parameter used by several layers (GPT-2's and SmolLM2's tied word embedding and output layer) or by one layer
several times gets its per-example gradients summed first, in a ``(rows, *shape)`` buffer, and squared after the
backward pass. :func:`supported` says whether a model's trainable parameters all sit in such layers;
:mod:`cl_utils.fisher` falls back to ``torch.func.vmap`` otherwise. The loss must be a sum of per-example terms:
dropout off (``eval()``), no batch statistics.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

__all__ = ["supported", "GradSquares"]

BLOCK_BYTES = 2**21  # per-example gradient copies squared at once per layer: a few examples, cache-sized


def _kind(module: torch.nn.Module) -> str | None:
    """The layer rule that computes ``module``'s per-example gradients, None when there is none."""
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, torch.nn.Embedding):
        ok = module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
        return "embedding" if ok else None
    if isinstance(module, torch.nn.LayerNorm):
        return "layernorm"
    own = dict(module.named_parameters(recurse=False))
    if type(module).__name__.endswith("RMSNorm") and set(own) == {"weight"} and hasattr(module, "variance_epsilon"):
        return "rmsnorm"  # Llama's: weight * (x * rsqrt(mean(x^2) + eps)), checked against a loop in the tests
    return None


def _owners(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, str]]:
    """``(module, attribute, kind)`` for every parameter a module holds directly (tied parameters once per module)."""
    return [(m, attr, _kind(m)) for m in model.modules() for attr, _ in m.named_parameters(recurse=False)]


def supported(model: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> str | None:
    """None when every parameter in ``params`` sits in a layer with a rule; else why not (for the fallback's note)."""
    wanted = {id(p) for p in params.values()}
    for module, attr, kind in _owners(model):
        if id(getattr(module, attr)) in wanted and kind is None:
            return f"{type(module).__name__}.{attr} has no per-example rule"
    if not any(isinstance(m, torch.nn.Embedding) for m in model.modules()):
        return "the model has no nn.Embedding to start the backward pass from"
    return None


class GradSquares:
    """Hooks that add ``sum_b w_b G_b^2`` (``absolute``: ``sum_b w_b |G_b|``) into ``acc[name]`` for every parameter
    of ``params`` during a backward.

    Use::

        squares = GradSquares(model, params, acc)
        with squares.recording(weights):     # weights (B,): w_b of the batch's rows
            (loss_sum).backward()            # loss_sum = sum_b loss_b, forward inside the block
    """

    def __init__(self, model: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                 acc: dict[str, torch.Tensor], *, absolute: bool = False) -> None:
        self.model, self.acc = model, acc
        self.absolute = absolute  # sum_b w_b |G_b| instead (MAS's importance)
        self.name = {id(p): n for n, p in params.items()}
        self.weights: torch.Tensor | None = None
        self.weight_values: list[float] = []
        self.uses: dict[int, list[str]] = {}  # id(param) -> the kinds of layer that used it in this forward, in order
        self.shared: dict[int, torch.Tensor] = {}  # id(param) -> (B, *shape) per-example sums, when used twice
        self.keys: dict[int, tuple] = {}  # id(embedding weight) -> its (example, token id) keys in this forward
        self.tied_rows: dict[int, torch.Tensor] = {}  # id(param) -> the output layer's G_b rows at those keys
        self._ws: torch.Tensor | None = None  # see _workspace

    # -- recording ----------------------------------------------------------------------------------------
    @contextmanager
    def recording(self, weights: torch.Tensor) -> Iterator[None]:
        """Hooks on, every parameter frozen, grad mode on; the shared buffers are squared on exit."""
        self.weights, self.uses, self.shared, self.keys, self.tied_rows = weights, {}, {}, {}, {}
        self.weight_values = weights.tolist()  # as numbers, read once (a per-block read would sync a GPU)
        frozen = [(p, p.requires_grad) for p in self.model.parameters()]
        handles = [m.register_forward_hook(self._forward) for m in self.model.modules()
                   if _kind(m) is not None and any(True for _ in m.parameters(recurse=False))]
        try:
            for p, _ in frozen:
                p.requires_grad_(False)
            with torch.enable_grad():
                yield
            for key, buf in self.shared.items():
                self._add(key, buf)
        finally:
            for h in handles:
                h.remove()
            for p, flag in frozen:
                p.requires_grad_(flag)
            self.weights, self.shared, self.keys, self.tied_rows = None, {}, {}, {}

    def _forward(self, module: torch.nn.Module, args: tuple, output: torch.Tensor):
        kind = _kind(module)
        tracked = [p for p in module.parameters(recurse=False) if id(p) in self.name]
        for p in tracked:
            self.uses.setdefault(id(p), []).append(kind)
        x = args[0]
        if kind == "embedding":  # the graph starts here: every parameter is frozen
            B = self.weights.shape[0]
            if x.shape[0] != B:  # position ids (1, L), broadcast over the batch later: make them per example
                x, output = x.expand(B, *x.shape[1:]), output.expand(B, *output.shape[1:])
            output = output.detach().clone().requires_grad_()
            if tracked:  # what the backward hook needs of the ids
                x = self.keys[id(module.weight)] = _token_keys(x, module)
        if tracked and output.requires_grad:
            output.register_hook(lambda g, m=module, k=kind, x=x: self._backward(m, k, x, g))
        return output if kind == "embedding" else None

    # -- per-example gradients ----------------------------------------------------------------------------
    def _backward(self, module: torch.nn.Module, kind: str, x: torch.Tensor, g: torch.Tensor) -> None:
        B = g.shape[0]
        g = g.reshape(B, -1, g.shape[-1])
        if kind == "embedding":
            self._embedding(module, x, g)
            return
        if kind in ("linear", "conv1d"):
            x = x.reshape(B, -1, x.shape[-1])
            w = module.weight
            if id(w) in self.name:
                if kind == "linear":  # (B, out, in) = g^T x
                    self._collect(w, lambda s, out: torch.bmm(g[s].transpose(1, 2), x[s], out=out), g.dtype)
                else:  # Conv1D keeps W as (in, out): x^T g
                    self._collect(w, lambda s, out: torch.bmm(x[s].transpose(1, 2), g[s], out=out), g.dtype)
        else:
            normed = self._normalised(module, kind, x).reshape(g.shape)
            if id(module.weight) in self.name:
                self._collect(module.weight, lambda s, out: torch.sum(g[s] * normed[s], 1, out=out), g.dtype)
        bias = getattr(module, "bias", None)
        if bias is not None and id(bias) in self.name:
            self._collect(bias, lambda s, out: torch.sum(g[s], 1, out=out), g.dtype)

    @staticmethod
    def _normalised(module: torch.nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
        """What the norm layer multiplies its weight with, recomputed as the layer does."""
        if kind == "layernorm":
            return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        return h.to(x.dtype)

    def _tied(self, key: int) -> bool:
        """An input embedding tied to an output layer (GPT-2, SmolLM2): the output layer's ``G_b`` is dense, the
        embedding's sparse, so ``(G_out + G_emb)^2 = G_out^2 + G_emb (2 G_out + G_emb)`` on the example's token rows
        only: no ``(B, V, d)`` buffer. The output layer's backward comes first."""
        return not self.absolute and self.uses.get(key) == ["embedding", "linear"]

    def _collect(self, param: torch.Tensor, per_example, dtype: torch.dtype) -> None:
        """``per_example(rows, out)`` gives ``G_b`` (of ``dtype``) for a slice of rows, written into ``out`` (None: a
        new tensor); squared into the sum, or into the shared buffer."""
        key = id(param)
        B = self.weights.shape[0]
        tied = self._tied(key)
        if not tied and (len(self.uses.get(key, ())) > 1 or key in self.shared):
            buf = self.shared.get(key)
            if buf is None:
                self.shared[key] = per_example(slice(0, B), None).to(self.acc[self.name[key]].dtype)
            else:
                buf.add_(per_example(slice(0, B), None))
            return
        step = max(1, BLOCK_BYTES // (param.numel() * param.element_size()))
        if tied:
            unique = self.keys[key][0]
            V = param.shape[0]
            self.tied_rows[key] = torch.empty(unique.shape[0], *param.shape[1:], dtype=self.acc[self.name[key]].dtype,
                                              device=param.device)
        for start in range(0, B, step):
            rows = slice(start, min(B, start + step))
            grads = per_example(rows, self._workspace((rows.stop - rows.start, *param.shape), dtype, param.device))
            if tied:  # keep this block's G_b rows at the example's own tokens
                at = (unique >= start * V) & (unique < rows.stop * V)
                self.tied_rows[key][at] = grads.reshape(-1, *param.shape[1:])[unique[at] - start * V].to(
                    self.tied_rows[key].dtype)
            self._add_block(key, grads, rows)

    def _workspace(self, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """One buffer for every block's ``G_b``, grown as needed and reused, instead of a fresh tensor of a few MB per
        block (on the README's BERT workload: 1.43x the floor before, 1.36x after, in one pair of runs)."""
        n = math.prod(shape)
        ws = self._ws
        if ws is None or ws.numel() < n or ws.dtype != dtype or ws.device != device:
            ws = self._ws = torch.empty(n, dtype=dtype, device=device)
        return ws[:n].view(shape)

    def _add_block(self, key: int, grads: torch.Tensor, rows: slice) -> None:
        """``acc += sum_b w_b G_b^2`` for a block of ``G`` ``(b, *shape)``, the batch's ``rows``."""
        acc = self.acc[self.name[key]]
        if grads.shape[0] == 1 and grads.dtype == acc.dtype and not self.absolute:  # one pass, no squared copy
            acc.addcmul_(grads[0], grads[0], value=self.weight_values[rows.start])
            return
        flat = grads.to(acc.dtype).reshape(grads.shape[0], -1)
        flat = flat.abs_() if self.absolute else flat.square_()
        acc.view(-1).addmv_(flat.t(), self.weights[rows].to(acc.dtype))

    def _add(self, key: int, buf: torch.Tensor) -> None:
        step = max(1, BLOCK_BYTES // (buf[0].numel() * buf.element_size()))
        for start in range(0, buf.shape[0], step):
            rows = slice(start, start + step)
            self._add_block(key, buf[rows], rows)

    def _embedding(self, module: torch.nn.Embedding, keys: tuple, g: torch.Tensor) -> None:
        """Rows of the example's tokens only: ``sum_{t: id_t = v} delta_t`` per example and token id ``v``
        (``keys``: :func:`_token_keys` of this call's ids)."""
        key = id(module.weight)
        V, B = module.weight.shape[0], g.shape[0]
        unique, inverse, keep = keys
        acc = self.acc[self.name[key]]
        if not self._tied(key) and (len(self.uses[key]) > 1 or key in self.shared):  # the dense per-example buffer
            buf = self.shared.get(key)
            if buf is None:
                buf = self.shared[key] = torch.zeros(B, *module.weight.shape, dtype=acc.dtype, device=g.device)
            buf.view(B * V, -1).index_add_(0, unique[inverse], g[keep].to(buf.dtype))
            return
        summed = torch.zeros(unique.shape[0], g.shape[-1], dtype=acc.dtype, device=g.device)
        summed.index_add_(0, inverse, g[keep].to(acc.dtype))
        weights = self.weights.to(acc.dtype)[unique // V, None]
        if self._tied(key):  # G_emb (2 G_out + G_emb): the output layer's square is in already
            tied = self.tied_rows.pop(key)
            acc.index_add_(0, unique % V, tied.mul_(2).add_(summed).mul_(summed).mul_(weights))
        else:
            acc.index_add_(0, unique % V, (summed.abs_() if self.absolute else summed.square_()).mul_(weights))


def _token_keys(ids: torch.Tensor, module: torch.nn.Embedding) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One key ``b * V + id`` per (example, token id) present: the sorted keys, each kept token's index into them,
    and which tokens are kept (``padding_idx`` gets no gradient, as in ``nn.Embedding``)."""
    V = module.weight.shape[0]
    keep = ids != module.padding_idx if module.padding_idx is not None else torch.ones_like(ids, dtype=torch.bool)
    keys = (ids + V * torch.arange(ids.shape[0], device=ids.device)[:, None])[keep]
    unique, inverse = torch.unique(keys, return_inverse=True)
    return unique, inverse, keep
