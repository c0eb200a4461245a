"""Language-modelling data: documents packed into fixed-length blocks, and the ``lm`` benchmark.

Documents are tokenised, each followed by the end-of-text token, concatenated and cut into blocks of
``block_size`` tokens, so no compute goes to padding. Training drops the last partial block; evaluation
keeps it, padded with the end-of-text id under ``attention_mask=0`` and ``labels=-100`` (no pad token is
added to the vocabulary), so every held-out token is scored exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from .benchmark import Benchmark, Task
from .cache import cached_dir
from .config import CorpusSpec, Profile, fingerprint
from .corpora import load_documents
from .evaluation import lm_score
from .paths import cache_dir
from .splits import SPLIT_VERSION, SPLITS

__all__ = ["LMBlocks", "pack_documents", "load_lm_corpus", "lm_benchmark", "MIN_HELD_OUT_DOCUMENTS"]

MIN_HELD_OUT_DOCUMENTS = 64  # valid and test caps are spread over at least this many documents (all, if fewer)
_DATA_VERSION = 3  # bump when packing or corpus cleaning changes, to invalidate cached tensors


@dataclass
class LMBlocks(Dataset):
    """Packed blocks. All tensors are ``(n_blocks, block_size)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.attention_mask.sum())

    def subset(self, n: int) -> "LMBlocks":
        return LMBlocks(self.input_ids[:n], self.attention_mask[:n], self.labels[:n])


def pack_documents(docs: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, *,
                   max_tokens: int | None = None, keep_last: bool = False,
                   min_documents: int | None = None) -> LMBlocks:
    """Tokenise ``docs`` and pack them into blocks of ``block_size`` tokens.

    Args:
        max_tokens: keep only the first ``max_tokens`` tokens of the concatenation.
        keep_last: keep the final partial block, padded and masked (for evaluation).
        min_documents: with ``max_tokens``, spread the cap over at least this many documents (all of them, if
            fewer): each document is cut to ``max_tokens / min(len(docs), min_documents)`` tokens (its beginning, then
            its end-of-text token, which is not scored: ``labels = -100`` there, since the text did not end), so a
            few long documents cannot fill the whole cap. For valid and test splits: a score averaged over more
            documents is more precise (cl_utils.spread).
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer needs an end-of-text (eos) token to separate packed documents")
    per_doc = None
    if max_tokens is not None and min_documents is not None and docs:
        per_doc = max(1, -(-max_tokens // min(len(docs), min_documents)) - 1)  # the eos takes one more
    ids: list[int] = []
    cut_ends: list[int] = []  # positions of end-of-text tokens that follow a cut document: never scored
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc if per_doc is None else enc[:per_doc])
        if per_doc is not None and len(enc) > per_doc:
            cut_ends.append(len(ids))
        ids.append(eos)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_full, rest = divmod(len(ids), block_size)
    flat = torch.tensor(ids, dtype=torch.long)
    flat_labels = flat.clone()
    flat_labels[[i for i in cut_ends if i < len(ids)]] = -100  # the text did not end there: nothing to predict
    input_ids = flat[: n_full * block_size].view(n_full, block_size)
    mask = torch.ones_like(input_ids)
    labels = flat_labels[: n_full * block_size].view(n_full, block_size).clone()
    if keep_last and rest:
        last = torch.full((1, block_size), eos, dtype=torch.long)
        last[0, :rest] = flat[n_full * block_size:]
        last_mask = torch.zeros_like(last)
        last_mask[0, :rest] = 1
        last_labels = torch.full((1, block_size), -100, dtype=torch.long)
        last_labels[0, :rest] = flat_labels[n_full * block_size:]
        input_ids, mask, labels = (torch.cat([a, b]) for a, b in
                                   ((input_ids, last), (mask, last_mask), (labels, last_labels)))
    if len(input_ids) == 0:
        raise ValueError(f"{len(docs)} documents gave fewer than one block of {block_size} tokens")
    return LMBlocks(input_ids, mask, labels)


def load_lm_corpus(spec: CorpusSpec, tokenizer: PreTrainedTokenizerBase, block_size: int,
                   tokenizer_key: str) -> Task:
    """Load, split (train / valid / test, :mod:`cl_utils.splits`), tokenise and pack one corpus, cached under
    ``runs/cache/data-<name>-<hash>/``. ``task.info`` has the documents and real tokens of each split."""
    key = fingerprint(spec, block_size, tokenizer_key, _DATA_VERSION, SPLIT_VERSION)

    def build(tmp) -> None:
        docs = load_documents(spec)
        caps = {"train": spec.max_train_tokens, "valid": spec.max_valid_tokens, "test": spec.max_test_tokens}
        blocks, info = {}, {}
        for split in SPLITS:
            # train drops its last partial block; valid and test keep it (padded, masked): every token is scored
            blocks[split] = pack_documents(getattr(docs, split), tokenizer, block_size, max_tokens=caps[split],
                                           keep_last=split != "train",
                                           min_documents=None if split == "train" else MIN_HELD_OUT_DOCUMENTS)
            info[f"{split}_docs"] = _documents_in(blocks[split], tokenizer.eos_token_id, len(getattr(docs, split)))
            info[f"{split}_tokens"] = blocks[split].n_tokens
        torch.save({**{s: vars(b) for s, b in blocks.items()}, "info": info}, tmp / "blocks.pt")

    path = cached_dir(cache_dir() / f"data-{spec.name}-{key}", build)
    saved = torch.load(path / "blocks.pt")
    return Task(spec.name, *(LMBlocks(**saved[s]) for s in SPLITS), saved["info"])


def _documents_in(blocks: LMBlocks, eos: int, available: int) -> int:
    """Documents that reached ``blocks`` (whole or cut by the token cap): the end-of-text tokens, plus one for a
    document cut before its end."""
    ids = blocks.input_ids[blocks.attention_mask.bool()]
    ends = int((ids == eos).sum())
    return min(available, ends + int(len(ids) > 0 and int(ids[-1]) != eos))


def lm_benchmark(profile: Profile, tokenizer: PreTrainedTokenizerBase, tokenizer_key: str) -> Benchmark:
    """The language-modelling stream of ``profile``; the pretraining corpus is the extra column."""
    load = lambda spec: load_lm_corpus(spec, tokenizer, profile.block_size, tokenizer_key)  # noqa: E731
    return Benchmark(name="lm", tasks=[load(s) for s in profile.stream], extra=[load(profile.pretrain_corpus)],
                     score=lm_score, score_name="-NLL (nats/token)")
