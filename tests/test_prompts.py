"""Progressive Prompts: frozen base and earlier prompts (bit for bit), exact BWT = 0, token counts, validation."""
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

import cl_utils.stream as stream
from cl_utils.benchmark import Benchmark, Task
from cl_utils.config import TrainSpec
from cl_utils.evaluation import lm_score, predicted_tokens
from cl_utils.methods.prompts import ProgressivePrompts, max_positions
from cl_utils.stream import run_stream

from .conftest import make_tiny_model

# weight_decay > 0: freezing by zeroing gradients would still let AdamW's decay move the frozen tensors.
SPEC = TrainSpec(steps=6, batch_size=4, lr=1e-1, warmup_steps=1, weight_decay=0.5)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recording(ProgressivePrompts):
    """Checks, after each task's training, that the model and every earlier prompt are bit-identical."""

    def prepare(self, model, benchmark):
        model = super().prepare(model, benchmark)
        self.base, self.checks, self.lengths = snapshot(model), [], []
        return model

    def begin_task(self, model, task_id, task):
        super().begin_task(model, task_id, task)
        self.earlier = [self.prompts.frozen(i).clone() for i in range(self.prompts.n_frozen)]
        self.init = self.prompts.embedding.detach().clone()

    def end_task(self, model, task_id, task, benchmark):
        after = snapshot(model)
        self.checks.append({
            "base": all(torch.equal(after[k], v) for k, v in self.base.items()),
            "earlier": all(torch.equal(self.prompts.frozen(i), p) for i, p in enumerate(self.earlier)),
            "frozen_flags": not any(p.requires_grad for p in model.parameters())
                            and not any(b.requires_grad for b in self.prompts.buffers()),
            "trained": not torch.equal(self.prompts.embedding, self.init),
        })
        super().end_task(model, task_id, task, benchmark)
        self.lengths.append(self.prompt_stack_length)


def assert_no_forgetting(result):
    R, T = result.R, len(result.tasks)
    for i in range(T):
        for j in range(i):
            assert R[i, j] == R[j, j], (i, j)  # exactly: same prompts, same frozen model
    assert result.metrics()["BWT"] == 0.0 and result.metrics()["forgetting"] == 0.0
    extra = result.scores[:, T:]
    assert (extra == extra[0]).all()  # task_id None: the frozen base model, before and after every task


def test_earlier_prompts_and_base_are_bit_identical_and_bwt_is_exactly_zero(tiny_tokenizer, tiny_benchmark):
    P, T = 3, len(tiny_benchmark.tasks)
    method = Recording(P, reparam_hidden=8)
    r = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, method, SPEC, seed=0, progress=False)
    assert method.checks == [{"base": True, "earlier": True, "frozen_flags": True, "trained": True}] * T
    assert method.lengths == [P * (k + 1) for k in range(T)]
    assert_no_forgetting(r)
    assert r.trainable_params == T * method.trainable_params_per_task == T * (P * 16 + 16 * 8 + 8 + 8 * 16 + 16)
    assert r.hparams["prompt_length"] == P and r.hparams["prompt_order"].startswith("newest first")


def test_prompt_order_and_which_prompts_each_task_sees(tiny_tokenizer, tiny_benchmark):
    model, P = make_tiny_model(tiny_tokenizer), 2
    method = ProgressivePrompts(P, reparam_hidden=4)
    method.prepare(model, tiny_benchmark)
    batch = tiny_benchmark.tasks[0].test[:3]
    L = batch["input_ids"].shape[1]
    assert method.forward(model, batch, 0).logits.shape[1] == L  # no prompt yet: the plain model
    for k in range(2):
        method.begin_task(model, k, tiny_benchmark.tasks[k])
        assert method.forward(model, batch, k).logits.shape[1] == P * (k + 1) + L
        method.end_task(model, k, tiny_benchmark.tasks[k], tiny_benchmark)
    p0, p1 = method.prompts.frozen(0), method.prompts.frozen(1)
    assert torch.equal(method.prompts.stack(2), torch.cat([p1, p0]))  # the paper's order: newest first
    assert method.forward(model, batch, 0).logits.shape[1] == P + L  # task 0: prompt 0 only
    assert method.forward(model, batch, 7).logits.shape[1] == 2 * P + L  # a future task: all prompts so far
    model.eval()
    assert torch.equal(method.forward(model, batch, None).logits, model(**batch).logits)


def test_smoke_profile_run_has_no_forgetting():
    from cl_utils.experiment import setup

    exp = setup("smoke", seed=0, progress=False)
    method = Recording(4)  # 3 tasks x 4 + blocks of 32 <= n_positions 64
    r = exp.run(method, lr=1e-1, weight_decay=0.1)
    assert r.R.shape == (3, 3) and np.isfinite(r.scores).all()
    assert_no_forgetting(r)
    assert method.checks == [{"base": True, "earlier": True, "frozen_flags": True, "trained": True}] * 3
    assert method.lengths == [4, 8, 12]
    assert r.trainable_params == 3 * method.trainable_params_per_task
    # No loss assertion here: the smoke base model (20 pretraining steps) hardly uses its context, so a
    # prompt moves its loss by ~1e-3 nats, less than the loss varies between batches. See the next test.


def test_the_training_loss_falls_when_the_model_listens_to_its_context(tiny_tokenizer, tiny_benchmark):
    """A random GPT-2 with large weights (initializer_range 0.2) reacts strongly to its prefix."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                     initializer_range=0.2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tiny_tokenizer.eos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"
    spec = TrainSpec(steps=20, batch_size=4, lr=1e-1, warmup_steps=1)
    r = run_stream(model, tiny_benchmark, ProgressivePrompts(4, reparam_hidden=16), spec, seed=0, progress=False)
    for losses in r.losses:
        assert np.mean(losses[:3]) > np.mean(losses[-3:]) + 0.05, losses
    assert (np.diag(r.R) > r.b + 0.05).all()  # each task's own prompt helps on its held-out split
    assert_no_forgetting(r)


def test_scores_exactly_the_tokens_of_the_base_model(tiny_tokenizer, tiny_benchmark):
    """The virtual tokens and the first real token are not scored: same count as ``lm_score`` takes."""
    model, P = make_tiny_model(tiny_tokenizer), 5
    method = ProgressivePrompts(P)
    method.prepare(model, tiny_benchmark)
    method.begin_task(model, 0, tiny_benchmark.tasks[0])
    model.eval()
    evals = tiny_benchmark.tasks[0].test
    assert evals.attention_mask[-1].sum() < evals.input_ids.shape[1]  # the last block is padded
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in tiny_benchmark.loader(evals, 4):
            out = method.forward(model, batch, 0)
            logp = torch.log_softmax(out.logits[:, P:].double(), -1)  # logits of the real positions
            labels = batch["labels"]
            target = labels[:, 1:]
            keep = target != -100
            nll = -logp[:, :-1].gather(-1, target.clamp(min=0)[..., None])[..., 0][keep].sum()
            n = predicted_tokens(labels)
            assert int(keep.sum()) == n
            assert float(out.loss.double()) * n == pytest.approx(float(nll), rel=1e-5)
            total, count = total + float(nll), count + n
    score = lm_score(lambda b: method.forward(model, b, 0), tiny_benchmark.loader(evals, 4))
    assert score == pytest.approx(-total / count, rel=1e-6)
    assert count == predicted_tokens(evals.labels)


def test_rejects_a_non_positive_prompt_length():
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="prompt_length must be a positive int"):
            ProgressivePrompts(bad)


def test_prompt_stack_longer_than_the_positions_fails_before_any_training(tiny_tokenizer, tiny_benchmark,
                                                                          monkeypatch):
    model = make_tiny_model(tiny_tokenizer, n_positions=64)
    before = snapshot(model)
    largest = (64 - 16) // 2  # 2 tasks, blocks of 16 tokens

    def no_training(*a, **k):
        raise AssertionError("training started although the prompts cannot fit")

    monkeypatch.setattr(stream, "train_steps", no_training)
    with pytest.raises(ValueError, match=rf"use prompt_length <= {largest}\b"):
        run_stream(model, tiny_benchmark, ProgressivePrompts(largest + 1), SPEC, seed=0, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # not even frozen
    assert max_positions(model) == 64
    ProgressivePrompts(largest).prepare(model, tiny_benchmark)  # the largest one fits


def _bert_benchmark(L=8, n=4):
    items = [{"input_ids": torch.randint(5, 50, (L,)), "attention_mask": torch.ones(L, dtype=torch.long),
              "token_type_ids": torch.zeros(L, dtype=torch.long), "labels": torch.tensor(i % 3)} for i in range(n)]
    task = Task("cls", items, items, items)
    return Benchmark("classification", [task, task], [], lambda f, b: 0.0, "accuracy")


def test_bert_classifier_gets_prompts_and_only_prompts_train():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=24, num_labels=3)
    model, bench, P = BertForSequenceClassification(cfg), _bert_benchmark(), 5
    method = ProgressivePrompts(P, reparam_hidden=4)
    with pytest.raises(ValueError, match=r"use prompt_length <= 8\b"):  # (24 - 8) // 2
        ProgressivePrompts(9).prepare(model, bench)
    method.prepare(model, bench)
    method.begin_task(model, 0, bench.tasks[0])
    batch = {k: torch.stack([it[k] for it in bench.tasks[0].train]) for k in bench.tasks[0].train[0]}
    batch["attention_mask"][0, -2:] = 0  # a padded row
    out = method.forward(model, batch, 0)
    assert out.logits.shape == (4, 3) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in model.parameters())
    trained = method.parameters(model, 0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert sum(p.numel() for p in trained) == method.trainable_params_per_task == P * 16 + 16 * 4 + 4 + 4 * 16 + 16
