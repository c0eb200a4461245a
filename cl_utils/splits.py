"""Train / valid / test splits that do not leak: whole documents, near-duplicates in one split, no shared paragraph.

Every choice (a λ, a learning rate) is made on ``valid``; every reported number comes from ``test``.

How a split is decided, for every offline source and the hash-split hub ones:
    1. a text is compared by its *normalised* form (:func:`normalise`: lower case; URLs, @mentions, "RT" and
       punctuation removed; whitespace collapsed), so a retweet, or the same post with another link, is one text;
    2. a whole document (an article, a tweet) goes to one split, by a hash: the paragraphs of an article never
       straddle two splits. Near-duplicates go together: documents that share a normalised sentence of 8 or more
       words form one group, split as one (:func:`group_keys`); exact normalised duplicates are kept once;
    3. a paragraph of a ``valid`` or ``test`` document whose normalised text occurs in a ``train`` document (a
       shared boilerplate paragraph), or of a ``test`` document that occurs in ``valid``, is removed from it; a
       held-out document that still shares a long sentence with an earlier split (possible where a dataset brings
       its own test split) is dropped.

Which split a key falls into depends only on its hash and the split fractions, never on a seed: the same text is in
the same split in every run, and in both classification tasks that use it (the tweets of the topic and the sentiment
task).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = ["SPLITS", "SPLIT_VERSION", "Splits", "normalise", "key_hash", "split_of", "check_fractions", "assign", "group_keys",
           "clean_splits",
           "split_documents", "cross_split_overlap"]

SPLITS = ("train", "valid", "test")

_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+")
_RT = re.compile(r"\brt\b")
_NOT_WORD = re.compile(r"[\W_]+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n")
MIN_SHARED_WORDS = 8  # a shared sentence this long makes two documents near-duplicates (one group, one split)
SPLIT_VERSION = 2  # bump when how documents are split changes: part of every cache key and results file


class Splits(NamedTuple):
    """Documents of one corpus, per split, each in hash order (a fixed pseudo-random order, so a prefix of a
    split is an unbiased sample even when the source is sorted)."""

    train: list[str]
    valid: list[str]
    test: list[str]


def normalise(text: str) -> str:
    """The form two texts are compared in: ``"RT @bob: Great NEWS!! http://t.co/x"`` -> ``"great news"``."""
    text = _URL.sub(" ", text.lower())
    text = _RT.sub(" ", _MENTION.sub(" ", text))
    return " ".join(_NOT_WORD.sub(" ", text).split())


def key_hash(key: str) -> int:
    """A 64-bit hash of ``key`` (sha1, so the same on every machine and Python version)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


def check_fractions(valid_fraction: float, test_fraction: float, what: str) -> None:
    """Raise ``ValueError`` unless both fractions are in (0, 1) and leave some training data."""
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{what}: {name} must be in (0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"{what}: valid_fraction + test_fraction must be < 1 (the rest is train), got "
                         f"{valid_fraction} + {test_fraction}")


def split_of(key: str, valid_fraction: float, test_fraction: float) -> str:
    """``"test"`` for the first ``test_fraction`` of the hash range, then ``"valid"``, then ``"train"``."""
    h = key_hash(key) / 2**64
    return "test" if h < test_fraction else "valid" if h < test_fraction + valid_fraction else "train"


def assign(items: Sequence, keys: Sequence[str], valid_fraction: float, test_fraction: float) -> dict[str, list]:
    """``{split: items}``: each item goes where :func:`split_of` puts its key (items and keys in step; a fraction of
    0 leaves that split empty, for a dataset that brings the split itself)."""
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for item, key in zip(items, keys, strict=True):
        parts[split_of(key, valid_fraction, test_fraction)].append(item)
    return parts


def _paragraphs(doc: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", doc) if p.strip()]


def clean_splits(train: Iterable[str], valid: Iterable[str], test: Iterable[str], *, what: str = "corpus") -> Splits:
    """Documents already assigned to splits (by :func:`split_documents`, or a dataset's own splits), cleaned:
    a document whose normalised text an earlier split (train, then valid) already has is dropped, duplicates kept
    once, shared paragraphs removed (steps 1 and 3); each split in hash order. Raises if a split ends up empty."""
    seen_docs: set[str] = set()
    ordered: dict[str, list[str]] = {}
    for split, docs in zip(SPLITS, (train, valid, test)):
        first: dict[str, str] = {}
        for doc in docs:
            key = normalise(doc)
            if key and key not in seen_docs:
                first.setdefault(key, doc)
        seen_docs |= set(first)
        ordered[split] = [first[k] for k in sorted(first, key=key_hash)]
    seen = {normalise(p) for doc in ordered["train"] for p in _paragraphs(doc)}
    said = set().union(*(_sentences(doc) for doc in ordered["train"]))
    for split in ("valid", "test"):  # step 3: drop paragraphs an earlier split already has
        kept = []
        for doc in ordered[split]:
            paras = _paragraphs(doc)
            new = [p for p in paras if normalise(p) not in seen]
            if new:
                kept.append(doc if len(new) == len(paras) else "\n\n".join(new))
        ordered[split] = [doc for doc in kept if not _sentences(doc) & said]  # a near-duplicate left: dropped
        seen |= {normalise(p) for doc in ordered[split] for p in _paragraphs(doc)}
        said |= set().union(*(_sentences(doc) for doc in ordered[split]))
    splits = Splits(**ordered)
    empty = [s for s in SPLITS if not getattr(splits, s)]
    if empty:
        raise ValueError(f"{what}: the {empty} split(s) came out empty ({[len(x) for x in splits]} documents in "
                         f"train/valid/test); raise valid_fraction/test_fraction or use more documents")
    return splits


def _sentences(doc: str) -> set[str]:
    """The normalised sentences of ``doc`` long enough to identify it (>= ``MIN_SHARED_WORDS`` words)."""
    out = set()
    for piece in _SENTENCE_BREAK.split(doc):
        norm = normalise(piece)
        if norm.count(" ") + 1 >= MIN_SHARED_WORDS:
            out.add(norm)
    return out


def group_keys(docs: Sequence[str]) -> list[str]:
    """Per document, the key its split is decided by: documents that share a normalised sentence of at least
    ``MIN_SHARED_WORDS`` words are one group (a tweet and its retweet with a comment, a news article and its
    edited reprint, a reference section and the section that includes it), and every document of a group gets the
    group's key (the normalised text of its member with the smallest hash, so the key does not depend on order)."""
    norms = [normalise(d) for d in docs]
    parent = list(range(len(docs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, doc in enumerate(docs):
        for sentence in _sentences(doc) | {norms[i]}:
            j = owner.setdefault(sentence, i)
            if j != i:
                parent[find(i)] = find(j)
    best: dict[int, str] = {}
    for i, norm in enumerate(norms):
        root = find(i)
        if root not in best or key_hash(norm) < key_hash(best[root]):
            best[root] = norm
    return [best[find(i)] for i in range(len(docs))]


def split_documents(docs: Iterable[str], valid_fraction: float, test_fraction: float, *,
                    what: str = "corpus") -> Splits:
    """Split ``docs`` by a hash of their group (:func:`group_keys`) and clean the result (steps 1-3 of the module
    docstring).

    >>> s = split_documents([f"doc {i}" for i in range(1000)], 0.1, 0.2)
    >>> 150 < len(s.test) < 250 and 50 < len(s.valid) < 150
    True
    """
    check_fractions(valid_fraction, test_fraction, what)
    docs = list(docs)
    parts = assign(docs, group_keys(docs), valid_fraction, test_fraction)
    return clean_splits(*(parts[s] for s in SPLITS), what=what)


def cross_split_overlap(splits: Splits) -> dict[tuple[str, str], int]:
    """How many normalised paragraphs each pair of splits shares (0 everywhere for a clean split; for tests)."""
    keys = {s: {normalise(p) for doc in getattr(splits, s) for p in _paragraphs(doc)} - {""} for s in SPLITS}
    return {(a, b): len(keys[a] & keys[b]) for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]}
