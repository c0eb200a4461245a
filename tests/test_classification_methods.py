"""Every method on the classification benchmark (smoke size): streams, heads, EWC, prompts, LoRA, save/reload."""
import numpy as np
import pytest
import torch

import cl_utils.experiment as experiment
from cl_utils.methods.ewc import EWC
from cl_utils.methods.lora import OLoRA, PerTaskLoRA, SequentialLoRA
from cl_utils.methods import Naive
from cl_utils.methods.probe import LinearProbe
from cl_utils.methods.prompts import ProgressivePrompts
from cl_utils.saving import EWC_STATE, load_trained, save_trained
from cl_utils.stream import evaluate_columns, run_stream
from cl_utils.config import TrainSpec

from .classification_data import small_benchmark, smoke_benchmark, tiny_classifier, tokenizer
from .conftest import make_tiny_model

SPEC = TrainSpec(steps=3, batch_size=8, lr=1e-3, warmup_steps=1)
CPU = torch.device("cpu")


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _encoder_weights(model):
    """The encoder's own weights, without LoRA adapters (peft keeps the original as ``base_layer``)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return {k.replace(".base_layer", ""): v for k, v in _state(model.bert).items() if "lora_" not in k}


class Snapshots(Naive):
    """Naive fine-tuning that records the heads after each task."""

    def __init__(self):
        self.heads = []

    def end_task(self, model, task_id, task, benchmark):
        self.heads.append(_state(model.heads))


@pytest.fixture
def bench():
    return small_benchmark()


@pytest.mark.parametrize("method", [
    lambda: Naive(), lambda: EWC(100.0, fisher_examples=8), lambda: EWC(100.0, mode="online", fisher_examples=8),
    lambda: ProgressivePrompts(4), lambda: SequentialLoRA(r=2, alpha=4), lambda: PerTaskLoRA(r=2, alpha=4),
    lambda: OLoRA(r=2, alpha=4), lambda: LinearProbe(),
], ids=["naive", "ewc", "online_ewc", "prompts", "lora_sequential", "lora_per_task", "olora", "linear_probe"])
def test_every_method_runs_a_classification_stream(bench, method):
    method = method()
    model = tiny_classifier()
    encoder = _state(model.bert)
    result = run_stream(model, bench, method, SPEC, seed=0, eval_batch_size=16, progress=False)
    assert result.scores.shape == (3, 2) and ((result.scores >= 0) & (result.scores <= 1)).all()
    assert all(np.isfinite(loss).all() and len(loss) == SPEC.steps for loss in result.losses)
    frozen_encoder = method.name in ("progressive_prompts", "lora_sequential", "lora_per_task", "olora", "linear_probe")
    assert _same(_encoder_weights(result.model), encoder) == frozen_encoder  # bit-identical when frozen
    if method.name in ("progressive_prompts", "lora_per_task", "linear_probe"):  # frozen once trained
        assert result.R[1, 0] == result.R[0, 0]
    if frozen_encoder:
        heads = [n for n, _ in result.model.named_parameters() if "heads." in n]
        assert len(heads) == 4 and result.trainable_params < sum(p.numel() for p in tiny_classifier().parameters())


def test_naive_leaves_the_other_tasks_heads_bit_identical(bench):
    method = Snapshots()
    model = tiny_classifier()
    start = _state(model.heads)
    run_stream(model, bench, method, SPEC, seed=0, eval_batch_size=16, progress=False)
    after_0, after_1 = method.heads
    assert not torch.equal(after_0["0.weight"], start["0.weight"])  # head 0 trained on task 0
    assert torch.equal(after_0["1.weight"], start["1.weight"])  # head 1 untouched by task 0
    assert torch.equal(after_1["0.weight"], after_0["0.weight"])  # head 0 untouched by task 1
    assert not torch.equal(after_1["1.weight"], after_0["1.weight"])


def test_heads_train_in_their_own_group_at_head_lr_whatever_the_methods_lr(bench):
    """With a vanishing head lr the heads stay put while the encoder trains at the method's lr; without a head lr
    they train at the method's lr. (If the group were ignored, the first heads would move by ~1e-3.)"""
    model = tiny_classifier()
    heads, encoder = _state(model.heads), _state(model.bert)
    run_stream(model, bench, Naive(), SPEC, seed=0, eval_batch_size=16, progress=False, head_lr=1e-12)
    assert max((model.heads.state_dict()[k] - v).abs().max().item() for k, v in heads.items()) < 1e-9
    assert not _same(_state(model.bert), encoder)
    model = tiny_classifier()
    run_stream(model, bench, Naive(), SPEC, seed=0, eval_batch_size=16, progress=False)
    assert (model.heads[0].weight - heads["0.weight"]).abs().max().item() > 1e-4


def test_linear_probe_trains_only_the_heads_and_needs_them(bench, tiny_tokenizer, tiny_benchmark):
    model = tiny_classifier()
    encoder = _state(model.bert)
    r = run_stream(model, bench, LinearProbe(), SPEC, seed=0, eval_batch_size=16, progress=False, head_lr=1e-2)
    assert _same(_state(r.model.bert), encoder)
    assert r.metrics()["BWT"] == 0.0 and r.trainable_params == sum(p.numel() for p in model.heads.parameters())
    with pytest.raises(ValueError, match="one head per task"):
        LinearProbe().prepare(make_tiny_model(tiny_tokenizer), tiny_benchmark)


def test_prompts_train_the_task_head_and_freeze_everything_else(bench):
    method = ProgressivePrompts(4)
    model = tiny_classifier()
    start = _state(model)
    model = method.prepare(model, bench)
    method.begin_task(model, 0, bench.tasks[0])
    params = method.parameters(model, 0)
    assert {id(p) for p in model.heads[0].parameters()} <= {id(p) for p in params}
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("heads.0."))
    batch = next(iter(bench.loader(bench.tasks[0].train, 4)))
    embeds = model.get_input_embeddings()(batch["input_ids"])
    seen = {}
    handle = model.bert.embeddings.register_forward_hook(lambda m, args, kw, out: seen.update(kw), with_kwargs=True)
    method.forward(model, batch, 0)
    handle.remove()
    x = seen["inputs_embeds"]
    assert x.shape[1] == batch["input_ids"].shape[1] + 4
    torch.testing.assert_close(x[:, 0], embeds[:, 0])  # [CLS] stays first
    torch.testing.assert_close(x[:, 5:], embeds[:, 1:])
    method.end_task(model, 0, bench.tasks[0], bench)
    assert not any(p.requires_grad for p in model.parameters())
    assert _same({k: v for k, v in _state(model).items() if not k.startswith("heads.0.")},
                 {k: v for k, v in start.items() if not k.startswith("heads.0.")})


def test_lora_trains_adapters_and_the_current_head_only(bench):
    method = SequentialLoRA(r=2, alpha=4)
    model = method.prepare(tiny_classifier(), bench)
    method.begin_task(model, 1, bench.tasks[1])
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or ".heads.1." in n for n in names)
    assert any(".heads.1." in n for n in names) and any("query.lora_A" in n for n in names)
    assert not any("key" in n or "heads.0" in n for n in names)
    ids = {id(p) for p in method.parameters(model, 1)}
    assert ids == {id(p) for n, p in model.named_parameters() if n in names}
    method.end_task(model, 1, bench.tasks[1], bench)
    assert not any(".heads." in n for n, p in model.named_parameters() if p.requires_grad)


def test_ewc_leaves_the_heads_out_of_fisher_and_penalty(bench):
    method = EWC(1000.0, fisher_examples=8)
    model = tiny_classifier()
    run_stream(model, bench, method, SPEC, seed=0, eval_batch_size=16, progress=False)
    assert method.fishers and all(not n.startswith("heads.") for f in method.fishers for n in f)
    assert "bert.embeddings.word_embeddings.weight" in method.fishers[0]
    base = method.penalty(model, 2)
    with torch.no_grad():
        model.heads[0].weight.add_(1.0)
    assert torch.equal(method.penalty(model, 2), base)  # moving a head costs nothing
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.add_(0.1)
    assert method.penalty(model, 2) > base


def test_setup_runs_the_classification_benchmark_like_the_lm_one(monkeypatch):
    monkeypatch.setattr(experiment, "classification_benchmark", lambda *a: small_benchmark())
    exp = experiment.setup("smoke", seed=0, benchmark="classification", progress=False)
    assert exp.finetune == exp.profile.classification.finetune and exp.benchmark.name == "classification"
    naive, joint = exp.run(Naive()), exp.run_joint()
    assert naive.tasks == joint.tasks == ["topic", "sentiment"] and naive.extra == []
    assert naive.scores.shape == (3, 2) and np.isnan(joint.scores[1]).all()
    assert naive.scores[0].tolist() == joint.scores[0].tolist()  # the same fresh model before training
    assert 0 <= joint.metrics()["ACC"] <= 1
    with pytest.raises(ValueError, match="unknown benchmark"):
        experiment.setup("smoke", seed=0, benchmark="vision")


def test_saved_model_and_ewc_state_reproduce_the_accuracy(tmp_path):
    bench = small_benchmark(24, 40)
    method = EWC(100.0, fisher_examples=8)
    result = run_stream(tiny_classifier(), bench, method, SPEC, seed=0, eval_batch_size=16, progress=False)
    path = save_trained(tmp_path / "ewc", result.model, tokenizer(), method=method)
    assert (path / EWC_STATE).exists() and (path / "config.json").exists()
    model, tok, ewc = load_trained(path, CPU)
    assert _same(_state(model), _state(result.model)) and tok.pad_token_id == tokenizer().pad_token_id
    again = evaluate_columns(model, Naive(), bench, batch_size=16, device=CPU)
    assert again == result.scores[-1].tolist()
    assert all(torch.equal(a[k], b[k]) for a, b in zip(ewc.fishers, method.fishers) for k in a)
    assert torch.equal(ewc.penalty(model, 2), method.penalty(result.model, 2))
    save_trained(path, result.model, tokenizer())  # no EWC this time: no stale state left behind
    assert not (path / EWC_STATE).exists()
    with pytest.raises(ValueError, match="PreTrainedModel"):
        save_trained(tmp_path / "x", torch.nn.Linear(2, 2), tokenizer())


def test_real_smoke_stream_scores_are_accuracies():
    bench = smoke_benchmark()
    result = run_stream(tiny_classifier(), bench, Naive(), SPEC, seed=0, eval_batch_size=32, progress=False)
    n_eval = [len(t.test) for t in bench.tasks]
    for row in result.scores:  # every accuracy is a whole number of correct rows
        assert all(abs(a * n - round(a * n)) < 1e-9 for a, n in zip(row, n_eval))
