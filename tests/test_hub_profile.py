"""The gpt2 profile's exact loading code, pointed at local copies written in the hub's formats.

The hub can't be reached here, so the model is a tiny GPT-2 written with ``save_pretrained`` and each
dataset is a local directory of JSON-lines files with the same splits and columns as the hub dataset.
"""
import json
import time

import pytest

import cl_utils.hub as hub
from cl_utils.config import get_profile
from cl_utils.data import lm_benchmark
from cl_utils.hub import HubUnavailableError
from cl_utils.models import load_base

from .conftest import DOMAINS, _docs, make_tiny_model


def _write_dataset(root, column, splits):
    root.mkdir()
    for split, docs in splits.items():
        with open(root / f"{split}.jsonl", "w") as fh:
            for d in docs:
                fh.write(json.dumps({column: d, "label": 0}) + "\n")
    return str(root)


@pytest.fixture
def local_gpt2_profile(tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "gpt2"
    make_tiny_model(tiny_tokenizer, n_positions=64).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    words = list(DOMAINS.values())
    paths = {
        "wiki": _write_dataset(tmp_path / "wikitext", "text", {"train": _docs(words[0], 80, 1),
                                                               "test": _docs(words[0], 10, 2)}),
        "news": _write_dataset(tmp_path / "ag_news", "text", {"train": _docs(words[1], 80, 3),
                                                              "test": _docs(words[1], 10, 4)}),
        "social": _write_dataset(tmp_path / "tweet_eval", "text", {"train": _docs(words[2], 40, 5),
                                                                   "validation": _docs(words[2], 8, 8),
                                                                   "test": _docs(words[2], 10, 6) + ["cat."]}),
        "technical": _write_dataset(tmp_path / "arxiv", "abstract", {"train": _docs(words[0] + words[1], 80, 7)}),
    }
    overrides = {"model.hub_name": str(model_dir), "pretrain_corpus.hub_path": paths["wiki"],
                 "pretrain_corpus.hub_config": None, "stream.social.hub_config": None, "block_size": 16,
                 **{f"stream.{k}.hub_path": v for k, v in paths.items() if k != "wiki"}}
    return get_profile("gpt2", overrides)


def test_gpt2_profile_loads_model_and_datasets_through_the_hub_code(local_gpt2_profile):
    p = local_gpt2_profile
    assert p.stream[2].text_column == "abstract" and p.stream[2].test_split is None  # as on the hub
    base = load_base(p, progress=False)
    model = base.fresh()
    assert type(model).__name__ == "GPT2LMHeadModel"
    bench = lm_benchmark(p, base.tokenizer, base.tokenizer_key)
    assert [t.name for t in bench.tasks] == ["news", "social", "technical"]
    assert [t.name for t in bench.extra] == ["wikitext103"]
    for task in bench.columns:
        assert len(task.train) > 0 and len(task.valid) > 0 and len(task.test) > 0
        assert task.info["train_docs"] > task.info["test_docs"] > 0 and task.info["valid_docs"] > 0


def test_gpt2_profile_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HUB_HOST", "unreachable.invalid")  # no DNS answer, like this machine's hub
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"PROFILE='embedded'"):
        load_base(get_profile("gpt2"), progress=False)
    assert time.perf_counter() - start < 10


def test_gpt2_profile_offline_dataset_fails_fast_with_advice(monkeypatch):
    from cl_utils.corpora import load_documents

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HUB_HOST", "unreachable.invalid")
    with pytest.raises(HubUnavailableError, match="dataset 'ag_news'"):
        load_documents(get_profile("gpt2").stream[0])
