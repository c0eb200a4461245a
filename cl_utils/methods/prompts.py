"""Progressive Prompts (Razdaibiedina et al., "Progressive Prompts: Continual Learning for Language Models",
ICLR 2023, arXiv:2301.12314).

The base model stays frozen. Each task ``k`` learns a new soft prompt ``P_k`` of ``prompt_length``
virtual tokens, and the input of task ``k`` is its prompt followed by the frozen prompts of every earlier
task, then the token embeddings::

    inputs_embeds = [P_k; P_{k-1}; ...; P_0; embed(x)]        (B, k * P + P + L, d)

This is the paper's order: its objective conditions on ``[P_k, ..., P_1, x]``, and the official code
(``T5_codebase/t5_continual.py``) builds ``concat([prompt, previous_prompts])`` and, when a task ends,
``previous_prompts = concat([new_prompt, previous_prompts])``: the newest prompt comes first, the oldest
sits next to the input.

While task ``k`` trains, its prompt goes through a residual MLP, as in the paper: ``P_k = E + MLP(E)`` with
``MLP = Linear(d, h) -> ReLU -> Linear(h, d)``. The official code can end the MLP with a ``LayerNorm(d)``
(``layer_norm=True``); it is off by default here, because a LayerNorm output has unit scale per element,
about 20 times the embeddings of this project's small GPT-2 (T5's embeddings are much larger). ``E``
starts as the embeddings of random vocabulary tokens, as in the official code. When the task ends,
``E + MLP(E)`` is computed once, stored as a frozen buffer, and ``E`` and the MLP are dropped.

Task identity is given at inference, as in the paper: column ``j`` is scored with ``[P_j; ...; P_0; x]``,
exactly the input task ``j`` was trained with, so its score never changes afterwards (BWT = 0 by
construction). Columns without a task (``task_id=None``, e.g. the pretraining corpus) see the frozen base
model with no prompt.

Encoders (a model that is not a causal LM, e.g. :class:`cl_utils.classifier.MultiHeadClassifier`): the prompts go
right after the first token, ``[CLS]; P_k; ...; P_0; x``, so ``[CLS]`` keeps position 0; and when the model has
one head per task (``task_head``), task ``k``'s head trains with ``P_k`` and is frozen with it, while the
encoder stays frozen throughout.

Perplexity stays comparable with the base model: the virtual tokens get ``labels=-100``, and so does the
first real token of a causal LM, which the base model never scores (nothing precedes it) but the last
virtual token could predict. The mean loss therefore runs over exactly the tokens that
:func:`cl_utils.evaluation.lm_score` counts on the original batch.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..benchmark import Benchmark, Task
from .base import Method, train_head
from ..models import is_causal_lm

__all__ = ["ProgressivePrompts", "PromptStack", "max_positions"]



def _longest(dataset) -> int:
    """Tokens in the longest item: ``dataset.longest`` when it says (variable-length items), else item 0's."""
    longest = getattr(dataset, "longest", None)
    return int(longest) if longest is not None else int(dataset[0]["input_ids"].shape[-1])


def _insert(x: torch.Tensor, new: torch.Tensor, at: int) -> torch.Tensor:
    """``new`` ``(B, n, ...)`` inserted into ``x`` ``(B, L, ...)`` before position ``at`` (dim 1)."""
    return torch.cat([new, x], dim=1) if at == 0 else torch.cat([x[:, :at], new, x[:, at:]], dim=1)


def max_positions(model: nn.Module) -> int | None:
    """Longest input ``model`` can embed (``n_positions`` for GPT-2, ``max_position_embeddings`` for BERT or
    Llama); None when its config names no limit (e.g. T5's relative positions)."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


class PromptStack(nn.Module):
    """The prompts learnt so far: frozen ``(P, d)`` buffers ``prompt_0, prompt_1, ...`` and, while a task
    trains, its ``embedding`` E ``(P, d)`` and residual ``mlp``. ``.to(device)`` moves all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.n_frozen = 0
        self.embedding: nn.Parameter | None = None
        self.mlp: nn.Sequential | None = None

    def __len__(self) -> int:
        """Prompts in use: the frozen ones plus the one in training, if any."""
        return self.n_frozen + (self.embedding is not None)

    def frozen(self, i: int) -> torch.Tensor:
        return getattr(self, f"prompt_{i}")

    def start(self, init: torch.Tensor, hidden: int, layer_norm: bool) -> None:
        """Begin a new prompt from ``init`` ``(P, d)`` (the MLP's layers are created on its device)."""
        d = init.shape[-1]
        self.embedding = nn.Parameter(init.detach().clone())
        layers = [nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d)] + ([nn.LayerNorm(d)] if layer_norm else [])
        self.mlp = nn.Sequential(*layers).to(device=init.device, dtype=init.dtype)

    def current(self) -> torch.Tensor:
        """The prompt in training, ``E + MLP(E)`` ``(P, d)``."""
        return self.embedding + self.mlp(self.embedding)

    @torch.no_grad()
    def fold(self) -> None:
        """Store ``E + MLP(E)`` as the next frozen buffer and drop ``E`` and the MLP."""
        self.mlp.eval()
        self.register_buffer(f"prompt_{self.n_frozen}", self.current().detach().clone())
        self.n_frozen += 1
        self.embedding, self.mlp = None, None

    def stack(self, n: int) -> torch.Tensor:
        """The first ``n`` prompts, newest first: ``[P_{n-1}; ...; P_0]`` ``(n * P, d)``."""
        parts = [self.current() if i == self.n_frozen else self.frozen(i) for i in range(n)]
        return torch.cat(parts[::-1])


class ProgressivePrompts(Method):
    """Progressive Prompts: a new soft prompt per task, concatenated to the frozen earlier ones.

    Args:
        prompt_length: virtual tokens per task (``P``).
        reparam_hidden: width ``h`` of the residual reparameterisation MLP.
        layer_norm: end the MLP with a LayerNorm, an option of the official code (see the module docstring).

    Prompt tuning wants a far higher learning rate than fine-tuning (the official T5 code defaults to 0.3):
    ``exp.run(ProgressivePrompts(10), lr=3e-2)``.
    """

    name = "progressive_prompts"
    needs_task_id = True  # the prompts P_0..P_k of the task are chosen by its id
    label_hparams = {"prompt_length": "P"}

    def __init__(self, prompt_length: int = 10, *, reparam_hidden: int = 64, layer_norm: bool = False) -> None:
        for key, value in (("prompt_length", prompt_length), ("reparam_hidden", reparam_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ProgressivePrompts: {key} must be a positive int, got {value!r}")
        self.prompt_length = prompt_length
        self.reparam_hidden = reparam_hidden
        self.layer_norm = layer_norm
        self.prompts = PromptStack()
        self.dim: int | None = None  # the model's embedding width, known after prepare()
        self.position = 0  # where the prompts go: 0 (front) for a causal LM, 1 (after [CLS]) for an encoder

    @property
    def prompt_stack_length(self) -> int:
        """Virtual tokens the newest task's input starts with now (``P * k`` after ``k`` tasks)."""
        return self.prompt_length * len(self.prompts)

    @property
    def trainable_params_per_task(self) -> int:
        """Elements trained per task: E ``(P, d)`` and the MLP; only ``P * d`` of them are kept afterwards."""
        if self.dim is None:
            raise RuntimeError("ProgressivePrompts.trainable_params_per_task: call prepare first")
        d, h, P = self.dim, self.reparam_hidden, self.prompt_length
        return P * d + (d * h + h) + (h * d + d) + (2 * d if self.layer_norm else 0)

    def prepare(self, model: nn.Module, benchmark: Benchmark) -> nn.Module:
        """Check that every prompt fits the model's positions (``ValueError`` naming the largest
        ``prompt_length`` that does), then freeze the model. Nothing is changed when a check fails."""
        datasets = [d for t in benchmark.tasks for d in (t.train, t.valid, t.test) if len(d)]
        block = max(_longest(d) for d in datasets)
        limit, T = max_positions(model), len(benchmark.tasks)
        if limit is not None and self.prompt_length * T + block > limit:
            fits = (limit - block) // T
            advice = f"use prompt_length <= {fits}" if fits > 0 else "no prompt fits: shorten the blocks"
            raise ValueError(f"ProgressivePrompts: {T} tasks x prompt_length {self.prompt_length} + blocks of "
                             f"{block} tokens = {self.prompt_length * T + block} positions > the model's {limit}; "
                             f"{advice}")
        model.requires_grad_(False)
        self.dim = model.get_input_embeddings().weight.shape[-1]
        self.prompts = PromptStack()
        self.position = 0 if is_causal_lm(model) else 1  # encoders: after [CLS]
        return model

    def begin_task(self, model: nn.Module, task_id: int, task: Task) -> None:
        """Start ``P_k`` from the embeddings of ``P`` random vocabulary tokens."""
        weight = model.get_input_embeddings().weight
        rows = torch.randint(weight.shape[0], (self.prompt_length,)).to(weight.device)
        self.prompts.start(weight[rows], self.reparam_hidden, self.layer_norm)
        train_head(model, task_id, True)

    def parameters(self, model: nn.Module, task_id: int) -> list[nn.Parameter]:
        """Only the new prompt's E and its MLP (and the task's own head, if the model has one per task); the model
        and earlier prompts are not in the optimiser."""
        if self.prompts.embedding is None:
            raise RuntimeError("ProgressivePrompts.parameters: call begin_task first")
        return [self.prompts.embedding, *self.prompts.mlp.parameters(), *train_head(model, task_id, True)]

    def end_task(self, model: nn.Module, task_id: int, task: Task, benchmark: Benchmark) -> None:
        self.prompts.fold()
        train_head(model, task_id, False)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], task_id: int | None) -> Any:
        """``model`` on ``[P_j; ...; P_0; embed(input_ids)]``, ``j = min(task_id, prompts so far - 1)`` (encoders:
        ``[embed(CLS); P_j; ...; P_0; embed(rest)]``).

        ``batch``: ``input_ids`` ``(B, L)`` with optional ``attention_mask`` and ``token_type_ids``
        ``(B, L)``, and ``labels`` either ``(B, L)`` (token-level: prefixed with -100, and for a causal LM
        the first real token set to -100 too) or anything else, e.g. ``(B,)`` class ids (passed unchanged).
        Logits come back with the prompt positions, ``(B, n + L, V)`` for an LM. ``task_id=None``, or no
        prompt yet: the plain model.
        """
        n_prompts = 0 if task_id is None else min(task_id + 1, len(self.prompts))
        if n_prompts == 0:
            return model(**batch)
        batch = dict(batch)
        ids = batch.pop("input_ids")
        B, L = ids.shape
        prompt = self.prompts.stack(n_prompts)
        n = prompt.shape[0]
        at = self.position
        embeds = model.get_input_embeddings()(ids)
        batch["inputs_embeds"] = _insert(embeds, prompt.to(embeds.dtype).expand(B, -1, -1), at)
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        batch["attention_mask"] = _insert(mask, mask.new_ones(B, n), at)
        if "token_type_ids" in batch:
            types = batch["token_type_ids"]
            batch["token_type_ids"] = _insert(types, types.new_zeros(B, n), at)
        labels = batch.get("labels")
        if labels is not None and labels.shape == ids.shape:
            if is_causal_lm(model):
                labels = labels.clone()
                labels[:, 0] = -100
            batch["labels"] = _insert(labels, labels.new_full((B, n), -100), at)
        return model(**batch)

    def state_bytes(self) -> int:
        """The prompts, which the method holds (not the model)."""
        return sum(t.numel() * t.element_size() for t in (*self.prompts.parameters(), *self.prompts.buffers()))

    def describe(self) -> dict[str, Any]:
        order = "newest first: [P_k; ...; P_0; x]"
        if self.position == 1:
            order = "newest first, after the first token: [CLS; P_k; ...; P_0; x]; the task's head trains with P_k"
        return {"prompt_length": self.prompt_length, "reparam_hidden": self.reparam_hidden,
                "layer_norm": self.layer_norm, "prompt_order": order,
                "prompt_init": "random vocabulary embeddings",
                "lr_note": "prompt tuning needs a far higher lr than fine-tuning (e.g. 3e-2)"}
