"""The diagonal Fisher information of a model's parameters, from per-example gradients.

EWC (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks", PNAS 114(13),
eq. 3 and its supplement) weighs each parameter by the diagonal of the Fisher information::

    F_i = E_x[ (d loss_x / d theta_i)^2 ]        loss_x: the loss of ONE example x

estimated by the mean over N examples. The square is taken per example, *before* averaging. Squaring
the gradient of a batch (or of a sum) instead gives ``(mean_x g_x)^2``, which drops the variance term
``E[g^2] - E[g]^2``. At a trained optimum E[g] is close to 0, so that value is close to 0, and
shrinks further as the batch grows. This is a common bug (ContinualAI/colab, GradientEpisodicMemory#7,
pytorch-ewc#1).

Causal LMs: a Fisher per token. An LM example is a block of ``n`` predicted tokens (shifted labels that
are not -100, :func:`cl_utils.evaluation.predicted_tokens`) and its loss is their *mean* NLL, so
``(d loss_x / d theta)^2`` shrinks about as ``1 / n``: sum F measured 27.5, 13.5 and 7.5 at blocks of 32,
64 and 128 tokens of the same text, and a 512-token profile would get a penalty ~4x weaker for the same
``lambda``. Each example's squared gradient is therefore weighted by its ``n``::

    F_i = mean_x n_x (d loss_x / d theta_i)^2 = mean_x (d sum-NLL_x / d theta_i)^2 / n_x

a Fisher per token: for ``kind="true"`` its expectation is the mean over the block's tokens of their
per-token Fishers (the cross-token terms vanish in expectation); the empirical one keeps them, and
tests/test_fisher.py checks that its sum stays within 20 % at 32, 64 and 128 tokens. It no longer scales
with the block length, and it is on the scale of a loss that is a mean over tokens. Classification (one
label per example) has ``n = 1``. With full blocks (``n = block_size - 1`` for every example) it is exactly
``block_size - 1`` times the former per-example Fisher, so ``lambda / (block_size - 1)`` now gives the same
EWC run as ``lambda`` did before (embedded, 128-token blocks: 3000 then, 3000 / 127 = 23.6 now).

``kind="empirical"`` uses the data's labels; ``kind="true"`` samples the labels from the model's own
predictive distribution, which gives the Fisher information proper (Martens 2020, "New insights and
perspectives on the natural gradient method", section 11).

Per-example gradients are vectorised with ``torch.func`` (``vmap(grad(loss))``), ``chunk_size`` rows
at a time. Inside ``vmap``, transformers' 2-D mask utilities branch on tensor values and fail, so each
row gets a precomputed 4-D additive mask ``(1, 1, L, L)`` instead: causal for decoders, with the padded
keys masked. Rows must be right-padded (as :mod:`cl_utils.data` does), with ``labels=-100`` on the
padding. Position ids come from the model, as in an ordinary batched forward.

Input embeddings (``sparse_embeddings``): the per-example gradient of a ``(V, d)`` word-embedding matrix is zero
except on the rows of the tokens in that example, yet ``vmap`` would materialise all ``V x d`` values per
example (30522 x 384 for MiniLM: more than every other parameter together). For a model that allows it
(``model.fisher_sparse_embeddings = True``, e.g. :class:`cl_utils.classifier.MultiHeadClassifier`), the
embedding lookup is done outside ``vmap``, the per-example gradient is taken with respect to the looked-up
vectors ``(L, d)``, summed per token id within the example and squared: the same Fisher, exactly, at the cost
of ``L x d`` per example. Tied embeddings (GPT-2's ``wte`` is also its output layer) keep the dense path.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .evaluation import predicted_tokens_per_row
from .grad_squares import GradSquares, supported
from .models import is_causal_lm
from .training import move

__all__ = ["diagonal_fisher", "sample_labels", "additive_mask", "is_causal_lm", "ENGINES"]

Batch = dict[str, torch.Tensor]
KINDS = ("empirical", "true")
ENGINES = ("auto", "hooks", "vmap")
VMAP_BYTES = 2**30  # per-example gradient copies one vmap call may hold (chunk_size is lowered to fit)
SHARED_BYTES = 2**30  # per-example copies of tied parameters the hooks may hold (rows per forward are lowered to fit)


def _causal_attention(model: torch.nn.Module) -> bool:
    """True for decoders: self-attention modules flag ``is_causal`` (GPT-2, Llama, BERT as decoder)."""
    config = getattr(model, "config", None)
    return (is_causal_lm(model) or bool(getattr(config, "is_decoder", False))
            or any(getattr(m, "is_causal", False) is True for m in model.modules()))


def additive_mask(attention_mask: torch.Tensor, *, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """4-D additive attention masks, ``(B, L)`` of 0/1 -> ``(B, 1, L, L)``; one row of it is ``(1, L, L)``,
    which :func:`diagonal_fisher` passes as the ``(1, 1, L, L)`` mask of that row as a batch of one.

    Entry ``[b, 0, q, k]`` is 0 where query ``q`` may attend to key ``k`` (``k`` is not padding and,
    if ``causal``, ``k <= q``) and ``torch.finfo(dtype).min`` elsewhere.
    """
    B, L = attention_mask.shape
    allowed = attention_mask.bool()[:, None, :].expand(B, L, L)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=attention_mask.device).tril()
    mask = torch.zeros(B, 1, L, L, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


@torch.no_grad()
def sample_labels(model: torch.nn.Module, batch: Batch, generator: torch.Generator, *,
                  causal_lm: bool | None = None) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution, for the true Fisher.

    Causal LM (logits ``(B, L, V)``): the label at position ``t + 1`` is drawn from ``softmax(logits[:, t])``,
    since the model predicts ``labels[:, t + 1]`` from position ``t``; position 0 keeps the data label (the
    model never scores it). Classification (logits ``(B, C)``): one label per row. Positions whose data
    label is -100 stay -100, so padding stays ignored. Returns a tensor shaped like ``batch["labels"]``.
    """
    causal_lm = is_causal_lm(model) if causal_lm is None else causal_lm
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.detach().float()
    if causal_lm:
        B, L, V = logits.shape
        probs = logits[:, :-1].softmax(-1).reshape(-1, V)
        drawn = torch.multinomial(probs, 1, generator=generator).view(B, L - 1)
        out = labels.clone()
        out[:, 1:] = torch.where(labels[:, 1:] == -100, labels[:, 1:], drawn)
        return out
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or labels.is_floating_point():
        raise ValueError(f'kind="true" needs a causal LM or single-label classification; got logits '
                         f"{tuple(logits.shape)} and labels {tuple(labels.shape)} ({labels.dtype})")
    drawn = torch.multinomial(logits.softmax(-1), 1, generator=generator).view(-1)
    return torch.where(labels == -100, labels, drawn)


def _scored_rows(labels: torch.Tensor, causal_lm: bool) -> torch.Tensor:
    """``(B,)`` bool: rows with at least one label the loss counts (others have no loss, hence no gradient)."""
    if labels.is_floating_point():  # regression / multi-label targets: every row counts
        return torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    flat = labels.reshape(labels.shape[0], -1)
    return (flat[:, 1:] if causal_lm else flat).ne(-100).any(1)


def _per_row(batch: Batch) -> list[str]:
    """Keys of the tensors with one entry per row (first dimension = number of labels rows)."""
    B = batch["labels"].shape[0]
    return [k for k, v in batch.items() if torch.is_tensor(v) and v.ndim and v.shape[0] == B]


def _take_rows(batch: Batch, limit: int | None) -> Batch:
    """Check the batch and keep its first ``limit`` rows (None: all)."""
    if not isinstance(batch, Mapping) or "labels" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"every batch must be a dict with 'labels' (the loss is the model's own); got {keys}")
    if limit is None:
        return batch
    per_row = _per_row(batch)
    return {k: v[:limit] if k in per_row else v for k, v in batch.items()}


def _with_4d_mask(chunk: Batch, *, causal: bool, dtype: torch.dtype) -> Batch:
    """The chunk with ``attention_mask`` made ``(n, 1, L, L)`` (from all ones when the rows have no padding)."""
    if "attention_mask" in chunk:
        return {**chunk, "attention_mask": additive_mask(chunk["attention_mask"], causal=causal, dtype=dtype)}
    if "input_ids" in chunk:  # no padding, but the model must still get a 4-D mask
        return {**chunk, "attention_mask": additive_mask(torch.ones_like(chunk["input_ids"]), causal=causal,
                                                         dtype=dtype)}
    return chunk


def _scored_chunks(model: torch.nn.Module, batches: Iterable[Batch], step: int, *, kind: str,
                   max_examples: int | None, generator: torch.Generator | None, causal_lm: bool,
                   device: torch.device):
    """What both engines read: the scored rows of ``batches`` (at most ``max_examples`` in all), on ``device``,
    their labels drawn from the model for ``kind="true"`` (batch by batch), ``step`` rows at a time, as
    ``(per-row tensors, the batch's other entries)``."""
    seen = 0
    for batch in batches:
        batch = move(_take_rows(batch, None if max_examples is None else max_examples - seen), device)
        if kind == "true":
            batch = {**batch, "labels": sample_labels(model, batch, generator, causal_lm=causal_lm)}
        keep = _scored_rows(batch["labels"], causal_lm)
        per_row = _per_row(batch)
        constants = {k: v for k, v in batch.items() if k not in per_row}
        rows = {k: batch[k][keep] for k in per_row}
        n = rows["labels"].shape[0]
        for start in range(0, n, step):
            yield {k: v[start:start + step] for k, v in rows.items()}, constants
        seen += n
        if max_examples is not None and seen >= max_examples:
            return


def _sparse_embedding(model: torch.nn.Module, trainable: dict[str, torch.nn.Parameter],
                      sparse: bool | None) -> tuple[str, int | None] | None:
    """``(parameter name, padding_idx)`` of the input embedding when its Fisher is taken sparsely, else None."""
    if sparse is None:
        sparse = bool(getattr(model, "fisher_sparse_embeddings", False))
    if not sparse:
        return None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, torch.nn.Embedding) or emb.max_norm is not None or emb.scale_grad_by_freq:
        raise ValueError(f"sparse_embeddings=True needs a plain nn.Embedding as input embedding, got {type(emb)}")
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is emb.weight]
    if len(names) != 1:
        raise ValueError(f"sparse_embeddings=True: the input embedding is shared (tied) as {names}; its gradient is "
                         "not only the lookup's, so use the dense path (sparse_embeddings=False)")
    return (names[0], emb.padding_idx) if names[0] in trainable else None


def _tokens_per_row(labels: torch.Tensor, causal_lm: bool) -> torch.Tensor:
    """``(B,)`` float: each row's weight, its predicted tokens for a causal LM, else 1."""
    if causal_lm:
        return predicted_tokens_per_row(labels).float()
    return torch.ones(labels.shape[0], device=labels.device)


def _add_embedding_rows(acc: torch.Tensor, ids: torch.Tensor, g: torch.Tensor, padding_idx: int | None,
                        weight: torch.Tensor) -> None:
    """``acc[v] += sum_b w_b (sum_{t: ids[b, t] = v} g[b, t])^2``: weighted squared per-example embedding gradients.

    ``ids`` ``(n, L)``, ``g`` ``(n, L, d)`` the per-example gradients of the looked-up vectors, ``weight``
    ``(n,)``; ``padding_idx`` gets no gradient (as in ``nn.Embedding``).
    """
    V = acc.shape[0]
    keys = ids + V * torch.arange(ids.shape[0], device=ids.device)[:, None]  # one key per (example, token id)
    keep = ids != padding_idx if padding_idx is not None else torch.ones_like(ids, dtype=torch.bool)
    unique, inverse = torch.unique(keys[keep], return_inverse=True)
    summed = torch.zeros(unique.shape[0], g.shape[-1], dtype=acc.dtype, device=g.device)
    summed.index_add_(0, inverse, g[keep].to(acc.dtype))
    acc.index_add_(0, unique % V, summed.square_().mul_(weight.to(acc.dtype)[unique // V, None]))


def _restore_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training


def diagonal_fisher(model: torch.nn.Module, batches: Iterable[Batch], *, kind: str = "empirical",
                    max_examples: int | None = None, chunk_size: int = 16, seed: int = 0,
                    parameter_names: Iterable[str] | None = None,
                    sparse_embeddings: bool | None = None, engine: str = "auto") -> dict[str, torch.Tensor]:
    """Diagonal Fisher ``F_i = mean_x n_x (d loss_x / d theta_i)^2`` over the rows of ``batches``.

    ``n_x`` is 1 for classification and the number of predicted tokens of row ``x`` for a causal LM, which
    makes the latter a Fisher per token, independent of the block length (see the module docstring).

    Args:
        model: a transformers model, ``model(**batch).loss`` being its mean loss over the batch. It runs in
            ``eval()`` mode (no dropout); every module's train/eval mode is restored afterwards.
        batches: dicts of ``(B, ...)`` tensors with ``labels`` (e.g. ``input_ids``/``attention_mask``/``labels``
            of shape ``(B, L)``, or ``labels`` of shape ``(B,)`` for classification). One row is one example;
            its loss is ``model(**row).loss`` for that row alone. Rows the loss does not score at all (every
            label -100) are skipped and not counted.
        kind: ``"empirical"`` (data labels) or ``"true"`` (labels sampled from the model, see :func:`sample_labels`).
        max_examples: stop after this many examples in total (None: every row of ``batches``).
        chunk_size: rows per ``vmap`` call; bounds memory at ``chunk_size`` copies of the gradient. Lowered
            (to 1 at least) so that the copies take at most ``VMAP_BYTES``: 1 row for a 135M-parameter model.
        seed: seeds the ``torch.Generator`` that samples the labels for ``kind="true"``.
        parameter_names: only these trainable parameters (None: all of them), e.g. all but the task heads.
        sparse_embeddings: ``vmap`` only: take the input embedding's Fisher from the looked-up vectors (see the
            module docstring); None: when the model sets ``fisher_sparse_embeddings = True``. The hooks always do.
        engine: ``"hooks"`` (per-layer rules inside one batched backward, :mod:`cl_utils.grad_squares`: each
            batch in one forward, fewer rows when tied parameters' copies would pass ``SHARED_BYTES``),
            ``"vmap"`` (``torch.func``, ``chunk_size`` rows per call), or ``"auto"``: the hooks when every
            trained parameter sits in a layer they have a rule for, else vmap.

    Returns:
        ``{name: F}`` for every trainable parameter (``named_parameters()`` with ``requires_grad``; those of
        ``parameter_names`` when given), each ``F``
        shaped like its parameter, on the model's device, in float32 (float64 for a float64 model).

    Example::

        fisher = diagonal_fisher(model, benchmark.loader(task.train, 16), max_examples=256)
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 (or None for every row), got {max_examples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if isinstance(batches, Mapping):
        raise ValueError("batches must be an iterable of batch dicts (e.g. a DataLoader or [batch]), not one dict")
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    if "flash" in attn:
        raise ValueError(f"attention implementation {attn!r} takes no 4-D additive mask; load the model with "
                         "attn_implementation='sdpa' or 'eager' to compute a Fisher")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if parameter_names is not None:
        wanted = set(parameter_names)
        unknown = sorted(wanted - set(trainable))
        if unknown:
            raise ValueError(f"parameter_names {unknown[:5]} are not trainable parameters of the model; e.g. "
                             f"{list(trainable)[:3]}")
        trainable = {n: p for n, p in trainable.items() if n in wanted}
    params = {n: p.detach() for n, p in trainable.items()}
    if not params:
        raise ValueError("the model has no trainable parameter (requires_grad) to compute a Fisher for")
    first = next(iter(params.values()))
    device, dtype = first.device, first.dtype
    acc = {n: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for n, p in params.items()}
    causal_lm = is_causal_lm(model)
    generator = torch.Generator(device=device).manual_seed(seed) if kind == "true" else None
    why_not = supported(model, trainable) if engine != "vmap" else "vmap was asked for"
    if engine == "hooks" and why_not:
        raise ValueError(f"engine='hooks' cannot compute this Fisher: {why_not}; use engine='vmap' (or 'auto')")
    if not why_not:
        seen = _fisher_hooks(model, batches, trainable, acc, kind=kind, max_examples=max_examples,
                             chunk_size=chunk_size, generator=generator, causal_lm=causal_lm)
        return {name: a.div_(seen) for name, a in acc.items()}
    embedding = _sparse_embedding(model, trainable, sparse_embeddings)
    emb_weight = None if embedding is None else params.pop(embedding[0])
    causal = _causal_attention(model)
    row_bytes = sum(p.numel() * p.element_size() for p in params.values())
    chunk_size = max(1, min(chunk_size, VMAP_BYTES // row_bytes))

    def row_loss(p: dict[str, torch.Tensor], row: Batch, constants: dict) -> torch.Tensor:
        inputs = {k: v.unsqueeze(0) for k, v in row.items()}  # each row as a batch of one
        return functional_call(model, p, args=(), kwargs={**inputs, **constants}).loss

    def row_loss_embedded(p: dict[str, torch.Tensor], embeds: torch.Tensor, row: Batch,
                          constants: dict) -> torch.Tensor:
        inputs = {k: v.unsqueeze(0) for k, v in row.items()}
        return functional_call(model, p, args=(), kwargs={**inputs, "inputs_embeds": embeds.unsqueeze(0),
                                                          **constants}).loss

    per_example = vmap(grad(row_loss), in_dims=(None, 0, None))
    per_example_embedded = vmap(grad(row_loss_embedded, argnums=(0, 1)), in_dims=(None, 0, 0, None))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    seen = 0
    try:
        # SDPA has no vmap batching rule (it loops over the chunk for that one op); the notice is expected.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*performance drop.*", category=UserWarning)
            for chunk, constants in _scored_chunks(model, batches, chunk_size, kind=kind, max_examples=max_examples,
                                                   generator=generator, causal_lm=causal_lm, device=device):
                weight = _tokens_per_row(chunk["labels"], causal_lm)
                seen += chunk["labels"].shape[0]
                chunk = _with_4d_mask(chunk, causal=causal, dtype=dtype)
                try:
                    if embedding is None:
                        grads = per_example(params, chunk, constants)
                    else:  # the lookup outside vmap; gradients w.r.t. the looked-up vectors (n, L, d)
                        ids = chunk.pop("input_ids")
                        grads, g_embeds = per_example_embedded(params, F.embedding(ids, emb_weight), chunk,
                                                               constants)
                        _add_embedding_rows(acc[embedding[0]], ids, g_embeds, embedding[1], weight)
                except Exception as e:  # noqa: BLE001 -- re-raised with the likely cause
                    raise RuntimeError(
                        f"per-example gradients failed for {type(model).__name__}: under torch.func.vmap the "
                        "model must accept a 4-D additive attention_mask of shape (1, 1, L, L) and return "
                        f".loss ({type(e).__name__}: {e})") from e
                for name, g in grads.items():  # (chunk, *shape) -> (*shape), at once: no grads are kept
                    w = weight.to(acc[name].dtype).view(-1, *[1] * (g.dim() - 1))
                    acc[name].add_(g.to(acc[name].dtype).square_().mul_(w).sum(0))
    finally:
        _restore_modes(modes)
    _check_seen(seen)
    return {name: a.div_(seen) for name, a in acc.items()}


def _check_seen(seen: int) -> None:
    if seen == 0:
        raise ValueError("batches gave no example with a scored label: the Fisher needs at least one row")


def _shared_bytes(model: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> int:
    """Bytes of one row's copies of the parameters held by more than one module (tied), 0 without."""
    holders: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    return sum(4 * p.numel() for p in params.values() if holders.get(id(p), 0) > 1)


def _fisher_hooks(model: torch.nn.Module, batches: Iterable[Batch], params: dict[str, torch.nn.Parameter],
                  acc: dict[str, torch.Tensor], *, kind: str, max_examples: int | None, chunk_size: int,
                  generator: torch.Generator | None, causal_lm: bool) -> int:
    """The hooks engine (:mod:`cl_utils.grad_squares`): per batch, one forward and one backward of the summed loss
    ``sum_x n_x loss_x`` (``n_x * loss_x`` is row ``x``'s summed NLL), each row's squared gradient weighted by
    ``1 / n_x``. Returns the number of rows seen."""
    device = next(iter(params.values())).device
    squares = GradSquares(model, params, acc)
    shared = _shared_bytes(model, params)
    step = max(1, min(chunk_size, SHARED_BYTES // shared)) if shared else chunk_size
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    seen = 0
    try:
        for chunk, constants in _scored_chunks(model, batches, step, kind=kind, max_examples=max_examples,
                                               generator=generator, causal_lm=causal_lm, device=device):
            tokens = _tokens_per_row(chunk["labels"], causal_lm)
            seen += chunk["labels"].shape[0]
            with squares.recording(1.0 / tokens.double()):
                loss = model(**chunk, **constants).loss
                if not loss.requires_grad:
                    raise RuntimeError(f"the hooks saw no gradient path in {type(model).__name__} (no "
                                       "nn.Embedding output reaches the loss); use engine='vmap'")
                (loss * tokens.sum()).backward()
    finally:
        _restore_modes(modes)
    _check_seen(seen)
    return seen
