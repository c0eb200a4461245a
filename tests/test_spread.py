"""Precision of the test columns: per-token NLL with document ids, the document bootstrap, binomial errors."""
import numpy as np
import pytest
import torch

from cl_utils.evaluation import lm_score
from cl_utils.spread import accuracy_se, bootstrap_nll_se, lm_spread, token_nll

from .conftest import make_tiny_model


def test_token_nll_is_what_lm_score_averages_and_knows_each_tokens_document(tiny_tokenizer, tiny_benchmark):
    model = make_tiny_model(tiny_tokenizer).eval()
    blocks = tiny_benchmark.tasks[0].test  # 10 documents, packed into blocks of 16 tokens
    nll, doc = token_nll(model, blocks, tiny_tokenizer.eos_token_id, batch_size=4)
    score = lm_score(lambda b: model(**b), torch.utils.data.DataLoader(blocks, batch_size=32))
    assert len(nll) == int((blocks.labels[:, 1:] != -100).sum())
    assert float(nll.mean()) == pytest.approx(-score, rel=1e-5)
    assert np.unique(doc).tolist() == list(range(10)) and (np.diff(doc) >= 0).all()
    flat = blocks.input_ids[blocks.attention_mask.bool()]
    eos_at = (flat == tiny_tokenizer.eos_token_id).nonzero().flatten().tolist()
    assert len(eos_at) == 10  # each document ends with one


def test_bootstrap_resamples_documents_not_tokens():
    rng = np.random.default_rng(0)

    def corpus(n_docs, doc_sd):
        means = 4.0 + doc_sd * rng.standard_normal(n_docs)
        nll = np.concatenate([m + 0.5 * rng.standard_normal(50) for m in means])
        return nll, np.repeat(np.arange(n_docs), 50)

    assert bootstrap_nll_se(np.full(500, 3.0), np.repeat(np.arange(10), 50)) == 0.0
    nll, doc = corpus(100, 1.0)
    per_doc = bootstrap_nll_se(nll, doc)
    per_token = bootstrap_nll_se(nll, np.arange(len(nll)))  # as if every token were its own document
    assert per_doc > 3 * per_token  # documents differ: tokens of one document are not independent
    assert per_doc == pytest.approx(1.0 / np.sqrt(100), rel=0.3)
    assert bootstrap_nll_se(*corpus(400, 1.0)) == pytest.approx(per_doc / 2, rel=0.3)


def test_lm_spread_reports_documents_tokens_and_an_interval(tiny_tokenizer, tiny_benchmark):
    model = make_tiny_model(tiny_tokenizer)
    out = lm_spread(model, tiny_benchmark.tasks[1].test, tiny_tokenizer.eos_token_id)
    assert out["documents"] == 10 and out["tokens"] > 0 and out["NLL s.e."] > 0
    assert out["ppl 95% low"] < out["perplexity"] < out["ppl 95% high"]


def test_accuracy_se():
    assert accuracy_se(0.9, 160) == pytest.approx(0.0237, abs=1e-4)
    assert accuracy_se(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        accuracy_se(0.5, 0)
