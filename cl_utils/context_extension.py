"""Extending a RoPE model's context with transformers' own RoPE scaling, and held-out perplexity against length.

A setting is one of :data:`SETTINGS`, written into ``config.rope_parameters`` (transformers 5) by
:func:`rope_setting`; no RoPE code lives here:

    none     plain RoPE, extrapolated past the training context L
    linear   position interpolation (Chen et al. 2023): every angle divided by ``factor``
    dynamic  dynamic NTK (emozilla 2023): the base grows with the current length n, only once n > L
    yarn     YaRN (Peng et al. 2023): interpolates the low frequencies only, and scales the attention logits

Three traps of the transformers API, handled here: ``yarn`` reads ``original_max_position_embeddings`` and, if it is
missing, silently sets it to ``max_position_embeddings`` (so it is always set, to L); ``dynamic`` scales only beyond
``max_position_embeddings`` (so that stays L for it); and ``dynamic`` keeps the base of the longest length it has
seen until a sequence shorter than L resets it, so a model is loaded afresh for every length.

Perplexity is over non-overlapping windows of n tokens cut from the same held-out token stream at every n (the
first ``W * longest`` tokens): ``exp`` of the mean next-token NLL over every predicted position of every window.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .config import TrainSpec
from .data import LMBlocks, pack_documents
from .repro import set_seed
from .stream import StreamResult
from .training import TrainLog, train_steps

__all__ = ["extend_native", "SETTINGS", "rope_setting", "load_with_setting", "heldout_tokens", "check_lengths", "window_nll",
           "evaluate_setting", "extension_finetune", "extension_result"]

SETTINGS = ("none", "linear", "dynamic", "yarn")


def rope_setting(config: PretrainedConfig, setting: str, *, factor: float, train_context: int) -> PretrainedConfig:
    """A copy of the RoPE model ``config`` extended with ``setting`` by ``factor`` from the training context
    ``train_context`` (L). Raises ``ValueError`` for an unknown setting, a factor below 1, or a model without RoPE."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown RoPE setting {setting!r}; valid: {list(SETTINGS)}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
        raise ValueError(f"the RoPE scaling factor must be a number >= 1 (1: no scaling), got {factor!r}")
    if not isinstance(train_context, int) or train_context < 2:
        raise ValueError(f"train_context (L) must be an integer >= 2, got {train_context!r}")
    rope = getattr(config, "rope_parameters", None)
    if not rope or "rope_theta" not in rope:
        positions = getattr(config, "n_positions", None)
        raise ValueError(f"{type(config).__name__} has no rotary position embeddings to scale"
                         + (f": its {positions} positions are learned vectors, with nothing beyond them"
                            if positions else ""))
    params: dict = {"rope_type": "default" if setting == "none" else setting, "rope_theta": rope["rope_theta"]}
    if setting != "none":
        params["factor"] = float(factor)
    if setting == "yarn":
        params["original_max_position_embeddings"] = train_context  # left out, it silently becomes max_positions
    max_positions = train_context if setting in ("none", "dynamic") else int(round(train_context * factor))
    data = {**config.to_dict(), "rope_parameters": params, "max_position_embeddings": max_positions}
    return type(config).from_dict(data)


def load_with_setting(folder: str | Path, setting: str, *, factor: float, train_context: int,
                      device: torch.device | str = "cpu") -> PreTrainedModel:
    """The causal LM saved in ``folder`` with its RoPE extended by ``setting`` (see :func:`rope_setting`)."""
    config = rope_setting(AutoConfig.from_pretrained(folder), setting, factor=factor, train_context=train_context)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config).to(device).eval()
    model.loss_type = "ForCausalLM"
    return model


def heldout_tokens(eval_docs: list[str], tokenizer, longest: int, max_windows: int) -> torch.Tensor:
    """The first ``W * longest`` tokens of the held-out documents (packed with end-of-text between documents),
    ``W = min(max_windows, whole windows available)``: ``(W * longest,)``."""
    blocks = pack_documents(eval_docs, tokenizer, longest)  # raises when not even one window fits
    return blocks.input_ids[:max_windows].reshape(-1)


def check_lengths(config: PretrainedConfig, lengths: list[int], n_tokens: int) -> None:
    """Refuse, before any work, a length below 2, longer than the held-out text, or beyond learned positions."""
    positions = getattr(config, "n_positions", None)  # GPT-2: learned absolute positions
    for n in lengths:
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"lengths must be integers >= 2, got {n!r}")
        if n > n_tokens:
            raise ValueError(f"a window of {n} tokens does not fit the {n_tokens} held-out tokens")
        if positions is not None and n > positions:
            raise ValueError(f"{type(config).__name__} cannot hold {n} tokens: it has {positions} learned positions, "
                             f"and RoPE scaling does not apply to it")


@torch.no_grad()
def window_nll(model: PreTrainedModel, tokens: torch.Tensor, n: int, *, batch_size: int = 8,
               chunk: int = 2048) -> np.ndarray:
    """Mean next-token NLL (nats) at each position of non-overlapping windows of ``n`` tokens cut from ``tokens``
    (the tail that fills no window is dropped): ``(n - 1,)``, averaged over the windows. The LM head runs on
    ``chunk`` positions at a time, so a long window never holds ``(n, vocab)`` logits at once."""
    windows = tokens[: len(tokens) // n * n].view(-1, n)
    if len(windows) == 0:
        raise ValueError(f"{len(tokens)} tokens hold no window of {n}")
    device = next(model.parameters()).device
    body, head = model.base_model, model.get_output_embeddings()
    total = torch.zeros(n - 1, dtype=torch.float64)
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        hidden = body(input_ids=batch, use_cache=False).last_hidden_state
        for start in range(0, n - 1, chunk):
            stop = min(start + chunk, n - 1)
            logits = head(hidden[:, start:stop]).float()
            nll = F.cross_entropy(logits.flatten(0, 1), batch[:, start + 1:stop + 1].flatten(), reduction="none")
            total[start:stop] += nll.view(len(batch), -1).sum(0).double().cpu()
    return (total / len(windows)).numpy()


def evaluate_setting(make_model: Callable[[int], PreTrainedModel], tokens: torch.Tensor, lengths: list[int], *,
                     batch_size: int = 8) -> tuple[list[float], np.ndarray]:
    """Perplexity at each length, and the per-position NLL ``(max(lengths) - 1,)`` at the longest.

    ``make_model(n)`` gives the model to score windows of n tokens with (a fresh load for ``dynamic``). Every
    length is checked (:func:`check_lengths`) before the first forward pass."""
    check_lengths(PretrainedConfig(), lengths, len(tokens))
    ppl, positions = [], np.empty(0)
    for i, n in enumerate(lengths):
        model = make_model(n)
        if i == 0:
            check_lengths(model.config, lengths, len(tokens))
        nll = window_nll(model, tokens, n, batch_size=batch_size)
        ppl.append(math.exp(float(nll.mean())))
        positions = nll
    return ppl, positions


def extension_finetune(model: PreTrainedModel, blocks: LMBlocks, spec: TrainSpec, *, seed: int,
                       desc: str = "extension fine-tune", progress: bool = True) -> TrainLog:
    """Fine-tune ``model`` (already extended, e.g. by :func:`load_with_setting`) on ``blocks`` of the target length,
    in place; returns the loss log."""
    device = next(model.parameters()).device
    set_seed(seed)
    loader = torch.utils.data.DataLoader(blocks, batch_size=spec.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    model.train()
    log = train_steps(lambda b: model(**b).loss, model.parameters(), loader, spec, device=device, desc=desc,
                      progress=progress)
    model.eval()
    return log


def extension_result(setting: str, lengths: tuple[int, int], scores: np.ndarray, log: TrainLog,
                     parameters: int, hparams: dict) -> StreamResult:
    """The extension as a two-task stream, scored like the rest of the series (-NLL, higher is better).

    Tasks: context L (pretraining) then context factor * L (the extension fine-tune). ``scores`` ``(3, 2)``:
    the twin at initialisation (``b``), after pretraining at L and after the fine-tune, each with the setting's
    RoPE scaling and each on held-out windows of L and of factor * L tokens."""
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (3, 2):
        raise ValueError(f"scores must be (3, 2): rows init / after L / after fine-tune, got {scores.shape}")
    tasks = [f"context {lengths[0]}", f"context {lengths[1]}"]
    return StreamResult(method=f"extend_{setting}", tasks=tasks, extra=[], scores=scores, train_seconds=log.seconds,
                        trainable_params=parameters, total_params=parameters, losses=[[], log.losses],
                        hparams=hparams, benchmark="lm")


def extend_native(folder: str | Path, test_docs: list[str], lengths: list[int], *, factor: float, windows: int,
                  device: torch.device | str = "cpu") -> dict:
    """A pretrained RoPE model (SmolLM2 converted from its GGUF) scored with plain RoPE and with YaRN at ``lengths``
    (which may pass its own ``max_position_embeddings``) on held-out ``test_docs``, one window per batch: its own
    context, the lengths, the held-out token count, the factor, the perplexities and the seconds per setting."""
    from transformers import AutoTokenizer

    train_context = AutoConfig.from_pretrained(folder).max_position_embeddings
    tokens = heldout_tokens(test_docs, AutoTokenizer.from_pretrained(folder), max(lengths), windows)
    out = {"train_context": train_context, "lengths": list(lengths), "tokens": len(tokens), "factor": factor,
           "ppl": {}, "seconds": {}}
    for setting in ("none", "yarn"):
        start = time.perf_counter()
        load = lambda n, s=setting: load_with_setting(folder, s, factor=factor,  # noqa: E731
                                                      train_context=train_context, device=device)
        out["ppl"][setting], _ = evaluate_setting(load, tokens, list(lengths), batch_size=1)
        out["seconds"][setting] = time.perf_counter() - start
    return out
