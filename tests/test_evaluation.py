"""Perplexity: shifted labels, padding masked, per-token average over the whole split."""
import math

import pytest
import torch
from torch.utils.data import DataLoader

from cl_utils.data import pack_documents
from cl_utils.evaluation import lm_score, perplexity


def manual_nll(model, blocks):
    """Brute force: sum of -log p(token t+1 | tokens <= t) over real next tokens, and their count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(blocks)):
            row = blocks[i]
            logits = model(input_ids=row["input_ids"][None], attention_mask=row["attention_mask"][None]).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            for t in range(len(row["input_ids"]) - 1):
                target = int(row["labels"][t + 1])
                if target != -100:
                    total -= float(logp[t, target])
                    count += 1
    return total, count


@pytest.fixture
def eval_blocks(tiny_tokenizer):
    docs = [" ".join(["cat dog one red"] * (i + 1)) + "." for i in range(12)]
    blocks = pack_documents(docs, tiny_tokenizer, 16, keep_last=True)
    if blocks.attention_mask[-1].all():  # make sure the last block is padded
        blocks = pack_documents(docs + ["cat."], tiny_tokenizer, 16, keep_last=True)
    return blocks


def test_lm_score_equals_brute_force_per_token_mean(tiny_model, eval_blocks):
    tiny_model.eval()
    total, count = manual_nll(tiny_model, eval_blocks)
    assert eval_blocks.attention_mask[-1].sum() < 16  # the last block is padded: the test covers padding
    for batch_size in (1, 3, len(eval_blocks)):
        score = lm_score(lambda b: tiny_model(**b), DataLoader(eval_blocks, batch_size=batch_size))
        assert score == pytest.approx(-total / count, rel=1e-5)
    assert perplexity(score) == pytest.approx(math.exp(total / count), rel=1e-5)


def test_lm_score_is_not_a_mean_of_batch_means(tiny_model, eval_blocks):
    tiny_model.eval()
    loader = DataLoader(eval_blocks, batch_size=len(eval_blocks) - 1)  # a full batch, then the padded block
    with torch.no_grad():
        batch_means = [float(tiny_model(**b).loss) for b in loader]
    score = lm_score(lambda b: tiny_model(**b), loader)
    assert -score != pytest.approx(sum(batch_means) / len(batch_means), rel=1e-4)


def test_padding_content_does_not_change_the_score(tiny_model, eval_blocks):
    tiny_model.eval()
    before = lm_score(lambda b: tiny_model(**b), DataLoader(eval_blocks, batch_size=4))
    pad = eval_blocks.attention_mask == 0
    eval_blocks.input_ids[pad] = torch.randint(0, 50, (int(pad.sum()),))
    after = lm_score(lambda b: tiny_model(**b), DataLoader(eval_blocks, batch_size=4))
    assert after == pytest.approx(before, rel=1e-6)


def test_lm_score_rejects_an_empty_split(tiny_model, eval_blocks):
    with pytest.raises(ValueError, match="no tokens"):
        lm_score(lambda b: tiny_model(**b), [])
