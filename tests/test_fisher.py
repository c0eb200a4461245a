"""diagonal_fisher against a brute-force per-example loop, on a tiny GPT-2 and a tiny BERT classifier."""
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM)

from cl_utils.data import pack_documents
from cl_utils.fisher import additive_mask, diagonal_fisher, sample_labels
from cl_utils.grad_squares import supported

from .conftest import DOMAINS, _docs, make_tiny_model

V, LENS, L = 50, [12, 7, 3, 10, 1], 12  # the row of length 1 has no predicted token for the LM: skipped


def tiny_gpt2(seed=0, tied=True):
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied))
    model.loss_type = "ForCausalLM"
    return model.double()


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3,
                                                    max_position_embeddings=32)).double()


def padded_rows(lm: bool):
    """Right-padded rows of lengths LENS: pad inputs under attention_mask 0 and labels -100."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (len(LENS), L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(LENS)[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100) if lm else torch.tensor([0, 2, 1, 2, 1])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def split(batch, *sizes):
    out, start = [], 0
    for s in sizes:
        out.append({k: v[start:start + s] for k, v in batch.items()})
        start += s
    return out


def brute_force(model, batch, labels=None, lens=LENS):
    """Mean over rows of n * grad(loss of the row alone)^2, n its predicted tokens (1 for classification);
    each row fed UNPADDED (trimmed to its length)."""
    labels = batch["labels"] if labels is None else labels
    model.eval()
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    used = 0
    for i, n_real in enumerate(lens):
        row_labels = labels[i:i + 1, :n_real] if labels.ndim == 2 else labels[i:i + 1]
        tokens = int((row_labels[:, 1:] != -100).sum()) if labels.ndim == 2 else 1
        if tokens == 0:
            continue  # no token to predict: the row has no loss
        model.zero_grad(set_to_none=True)
        model(input_ids=batch["input_ids"][i:i + 1, :n_real], labels=row_labels).loss.backward()
        for n in acc:
            acc[n] += tokens * model.get_parameter(n).grad.square()
        used += 1
    return {n: a / used for n, a in acc.items()}


def assert_fisher_equal(actual, expected, scaled=False):
    """Elementwise to 1e-5; ``scaled``: to 1e-6 of each tensor's largest entry too, for models that round to float32
    inside (Llama's RMSNorm does, even in a float64 model: a batch and a lone row then differ by float32 rounding)."""
    assert actual.keys() == expected.keys()
    for n in expected:
        atol = 1e-6 * float(expected[n].abs().max()) if scaled else 1e-12
        assert_close(actual[n], expected[n], rtol=1e-5, atol=max(atol, 1e-12), msg=n)


def tiny_llama(seed=0, tied=True):
    """SmolLM2's architecture in miniature: RMSNorm, rotary positions (no position embedding), grouped KV heads."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                         tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0))
    model.loss_type = "ForCausalLM"
    with torch.no_grad():  # RMSNorm weights start at 1: make them differ, so that their gradients are not symmetric
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.uniform_(0.5, 1.5)
    return model.double()


MODELS = {"gpt2": (tiny_gpt2, True), "gpt2-untied": (lambda: tiny_gpt2(tied=False), True), "bert": (tiny_bert, False),
          "llama": (tiny_llama, True), "llama-untied": (lambda: tiny_llama(tied=False), True)}


@pytest.mark.parametrize("engine", ["hooks", "vmap"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_brute_force_with_padding_and_chunks(name, engine):
    make, lm = MODELS[name]
    model = make()
    batch = padded_rows(lm)
    sparse = engine == "vmap" and name == "gpt2-untied"  # vmap's sparse input embedding (the hooks always are)
    fisher = diagonal_fisher(model, split(batch, 2, 3), chunk_size=2,  # chunks cross the batches unevenly
                             sparse_embeddings=sparse, engine=engine)
    expected = brute_force(model, batch)
    assert_fisher_equal(fisher, expected, scaled=name.startswith("llama"))
    assert all(f.shape == p.shape and f.device == p.device for f, p in
               zip(fisher.values(), (model.get_parameter(n) for n in fisher)))
    assert sum(f.sum() for f in fisher.values()) > 0


class TwiceUsed(torch.nn.Module):
    """An embedding, then one Linear applied twice, then an output layer: a parameter used twice in one forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.mid, self.out = torch.nn.Embedding(V, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

    def forward(self, input_ids, labels=None, **_):
        h = self.mid(torch.tanh(self.mid(self.emb(input_ids)))).mean(1)
        logits = self.out(h)
        return type("Out", (), {"loss": F.cross_entropy(logits, labels), "logits": logits})()


def test_a_parameter_used_twice_sums_its_gradients_before_squaring():
    model = TwiceUsed().double()
    ids = torch.randint(1, V, (5, 6), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "labels": torch.tensor([0, 2, 1, 2, 1])}
    fisher = diagonal_fisher(model, [batch], engine="hooks")
    assert_fisher_equal(fisher, brute_force(model, batch, lens=[6] * 5))


def test_auto_falls_back_to_vmap_for_a_layer_without_a_rule():
    class Scaled(torch.nn.Module):  # a parameter outside any layer the hooks know
        def __init__(self, inner):
            super().__init__()
            self.inner, self.scale = inner, torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def forward(self, input_ids, attention_mask=None, labels=None):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            logits = out.logits * self.scale
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
            return type("Out", (), {"loss": loss, "logits": logits})()

    model = Scaled(tiny_gpt2(tied=False))
    params = {n: p for n, p in model.named_parameters()}
    assert "Scaled.scale" in supported(model, params)
    with pytest.raises(ValueError, match="engine='hooks' cannot.*Scaled.scale"):
        diagonal_fisher(model, [padded_rows(lm=True)], engine="hooks")
    rows = padded_rows(lm=True)
    auto = diagonal_fisher(model, [rows])
    assert_fisher_equal(auto, diagonal_fisher(model, [rows], engine="vmap"))
    assert auto["scale"] > 0


def test_hooks_leave_the_model_as_they_found_it():
    model = tiny_gpt2()
    model.transformer.wpe.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    hooks = [len(m._forward_hooks) for m in model.modules()]
    diagonal_fisher(model, [padded_rows(lm=True)], engine="hooks")
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [len(m._forward_hooks) for m in model.modules()] == hooks
    assert all(p.grad is None for p in model.parameters())  # no ordinary gradient is ever formed


def test_max_examples_and_frozen_parameters():
    model = tiny_gpt2()
    model.transformer.wpe.weight.requires_grad_(False)
    batch = padded_rows(lm=True)
    fisher = diagonal_fisher(model, split(batch, 2, 3), max_examples=3)
    assert "transformer.wpe.weight" not in fisher
    assert_fisher_equal(fisher, brute_force(model, batch, lens=LENS[:3]))


def test_is_not_the_square_of_the_batch_gradient():
    """The known bug: (batch gradient)^2 = (mean_x g_x)^2, or (sum_x g_x)^2 / N, instead of mean_x g_x^2
    (each times the 9 predicted tokens per row here, as the per-token Fisher is)."""
    model = tiny_gpt2().eval()
    ids = torch.randint(1, V, (8, 10), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": ids, "labels": ids}  # equal lengths: the batch loss is the mean of row losses
    fisher = diagonal_fisher(model, [batch])
    assert_fisher_equal(fisher, brute_force(model, batch, lens=[10] * 8))
    model.zero_grad()
    model(**batch).loss.backward()
    mean_sq = {n: 9 * p.grad.square() for n, p in model.named_parameters()}
    flat = torch.cat([f.flatten() for f in fisher.values()])
    for bug in (mean_sq, {n: 8 * s for n, s in mean_sq.items()}):
        flat_bug = torch.cat([bug[n].flatten() for n in fisher])
        assert (flat - flat_bug).norm() > 0.2 * flat.norm()
    for n in fisher:  # Jensen: F >= (mean g)^2 elementwise
        assert (fisher[n] >= mean_sq[n] * (1 - 1e-6) - 1e-15).all(), n
    assert sum(f.sum() for f in fisher.values()) > 2 * sum(s.sum() for s in mean_sq.values())


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_lm_fisher_does_not_depend_on_the_block_length(tiny_tokenizer, kind):
    """Per token, sum F stays within 20 % of its mean at blocks of 32, 64 and 128 tokens of the same text.

    The per-example Fisher of a mean-token loss fell as 1 / block length (the issue: 27.5, 13.5, 7.5), so one
    lambda meant a 4x weaker penalty at 512 tokens than at 128. The model is first fitted to text of the same
    kind, as a pretrained model is: untrained, its tokens' gradients share a large mean, which the empirical
    Fisher adds up over a block; fitted to these very blocks, that blocking's empirical Fisher drops.
    """
    model = make_tiny_model(tiny_tokenizer, n_positions=128)
    train = pack_documents(_docs(DOMAINS["animals"], 400, seed=7), tiny_tokenizer, 64, max_tokens=4096)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        model(input_ids=train.input_ids, labels=train.labels).loss.backward()
        opt.step()
    docs = _docs(DOMAINS["animals"], 400, seed=8)
    tokens = 2048  # the same tokens for every estimate: 64, 32 and 16 blocks
    totals = []
    for block in (32, 64, 128):
        blocks = pack_documents(docs, tiny_tokenizer, block, max_tokens=tokens)
        assert len(blocks) == tokens // block
        fisher = diagonal_fisher(model, [blocks[:]], kind=kind, seed=1)
        totals.append(float(sum(f.double().sum() for f in fisher.values())))
    mean = sum(totals) / 3
    assert all(abs(t / mean - 1) < 0.2 for t in totals), totals


@pytest.mark.parametrize("make,lm", [(tiny_gpt2, True), (tiny_bert, False)], ids=["gpt2", "bert"])
def test_true_fisher_matches_brute_force_with_the_same_samples(make, lm):
    model = make()
    batch = padded_rows(lm)
    batches = split(batch, 2, 3)
    fisher = diagonal_fisher(model, batches, kind="true", seed=5)
    model.eval()
    gen = torch.Generator().manual_seed(5)  # the same draws, batch by batch, as diagonal_fisher makes
    labels = torch.cat([sample_labels(model, b, gen) for b in batches])
    assert (labels == -100).equal(batch["labels"] == -100)  # padding stays ignored
    assert not labels.equal(batch["labels"])
    assert_fisher_equal(fisher, brute_force(model, batch, labels))
    empirical = diagonal_fisher(model, batches)
    head = "transformer.wte.weight" if lm else "classifier.weight"  # GPT-2's lm_head is tied to wte
    assert not torch.allclose(fisher[head], empirical[head])
    again = diagonal_fisher(model, batches, kind="true", seed=5)
    other = diagonal_fisher(model, batches, kind="true", seed=6)
    assert all(torch.equal(fisher[n], again[n]) for n in fisher)
    assert not all(torch.equal(fisher[n], other[n]) for n in fisher)


def test_true_labels_respect_the_causal_shift():
    """The label at t + 1 is drawn from the logits at t: here those put all the mass on token 3 * t."""

    class Peaked(torch.nn.Module):
        def forward(self, input_ids, **_):
            B, T = input_ids.shape
            logits = torch.full((B, T, V), -1e4)
            logits[:, torch.arange(T), 3 * torch.arange(T)] = 0.0
            return type("Out", (), {"logits": logits})()

    labels = torch.tensor([[7, 8, 9, 10, -100, -100]])
    out = sample_labels(Peaked(), {"input_ids": torch.zeros(1, 6, dtype=torch.long), "labels": labels},
                        torch.Generator().manual_seed(0), causal_lm=True)
    assert out.tolist() == [[7, 0, 3, 6, -100, -100]]


def test_additive_mask_is_causal_and_hides_padding():
    mask = additive_mask(torch.tensor([[1, 1, 0]]), causal=True, dtype=torch.float32)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert mask.shape == (1, 1, 3, 3) and allowed == [[1, 0, 0], [1, 1, 0], [1, 1, 0]]
    enc = additive_mask(torch.tensor([[1, 1, 0]]), causal=False, dtype=torch.float32)
    assert (enc[0, 0] == 0).int().tolist() == [[1, 1, 0]] * 3
    assert mask.min() == torch.finfo(torch.float32).min


def test_restores_train_and_eval_modes_even_on_errors():
    model = tiny_gpt2().train()
    model.transformer.h[0].eval()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    diagonal_fisher(model, [padded_rows(lm=True)])
    assert [m.training for m in model.modules()] == before
    with pytest.raises(ValueError, match="labels"):
        diagonal_fisher(model, [{"input_ids": torch.ones(2, 4, dtype=torch.long)}])
    assert [m.training for m in model.modules()] == before


def test_errors():
    model = tiny_gpt2()
    batch = padded_rows(lm=True)
    with pytest.raises(ValueError, match="at least one"):
        diagonal_fisher(model, [])
    with pytest.raises(ValueError, match="at least one"):
        diagonal_fisher(model, [{**batch, "labels": torch.full_like(batch["labels"], -100)}])
    with pytest.raises(ValueError, match="kind must be one of"):
        diagonal_fisher(model, [batch], kind="fisher")
    with pytest.raises(ValueError, match="max_examples"):
        diagonal_fisher(model, [batch], max_examples=0)
    with pytest.raises(ValueError, match="iterable of batch"):
        diagonal_fisher(model, batch)
