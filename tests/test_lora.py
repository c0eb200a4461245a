"""LoRA through peft: frozen base, per-task isolation, O-LoRA's penalty, its λ₁ = 0 ablation and adapter sum, merging,
architectures."""
import types
import warnings

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import BertConfig, BertForSequenceClassification

from cl_utils.config import TrainSpec
from cl_utils.evaluation import lm_score
from cl_utils.methods.lora import (OLoRA, PerTaskLoRA, SequentialLoRA, adapter_name, adapter_parameters,
                           adapter_size_on_disk, lora_config, lora_targets, merged_model, orthogonality_penalty,
                           trainable_parameter_report)
from cl_utils.results import results_path
from cl_utils.stream import run_stream

from .conftest import make_tiny_model

SPEC = TrainSpec(steps=4, batch_size=4, lr=1e-2, warmup_steps=1)


def _spy(cls, **kwargs):
    """``cls`` recording the wrapped model, what each optimiser gets (and that the rest is frozen then), and
    each task's adapter when that task ends."""
    class Spy(cls):
        def prepare(self, model, benchmark):
            self.model, self.trained, self.others_frozen, self.snapshots = super().prepare(model, benchmark), {}, {}, {}
            return self.model

        def parameters(self, model, task_id):
            params = super().parameters(model, task_id)
            self.trained[task_id] = ids = {id(p) for p in params}
            self.others_frozen[task_id] = not any(p.requires_grad for p in model.parameters() if id(p) not in ids)
            return params

        def end_task(self, model, task_id, task, benchmark):
            super().end_task(model, task_id, task, benchmark)
            name = self.ADAPTER if cls is SequentialLoRA else adapter_name(task_id)
            self.snapshots[task_id] = [p.detach().clone() for p in adapter_parameters(model, name)]
    return Spy(**kwargs)


@pytest.fixture(scope="module")
def runs(tiny_tokenizer, tiny_benchmark):
    """One short stream per variant, keyed by method name: (result, method spy, base weights before the stream)."""
    out = {}
    for cls, kwargs in ((SequentialLoRA, {}), (PerTaskLoRA, {}), (OLoRA, {"lambda_orth": 0.5, "lambda_l2": 1e-3}),
                        (OLoRA, {"lambda_orth": 0.0, "lambda_l2": 1e-3})):
        model = make_tiny_model(tiny_tokenizer)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        method = _spy(cls, r=4, alpha=8, **kwargs)
        out[method.name] = (run_stream(model, tiny_benchmark, method, SPEC, seed=0, progress=False), method, before)
    return out


@pytest.mark.parametrize("name", ["lora_sequential", "lora_per_task", "olora", "olora_no_penalty"])
def test_base_weights_bit_identical_and_only_adapters_train(runs, name):
    result, method, before = runs[name]
    model = method.model
    base = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters() if "lora_" not in n}
    assert base.keys() == before.keys()
    assert all(torch.equal(base[n], before[n]) and not base[n].requires_grad for n in before)
    assert all(method.others_frozen.values())  # while a task trains, nothing else has requires_grad
    assert not any(p.requires_grad for p in model.parameters())  # everything frozen after the last task
    assert model.get_base_model().loss_type == "ForCausalLM"
    assert np.isfinite(result.scores).all() and result.R[0, 0] > result.b[0]  # the adapter learned task 0
    assert result.hparams["r"] == 4 and result.trainable_params < result.total_params / 5


def test_sequential_has_one_adapter_that_keeps_training(runs, tiny_benchmark):
    result, method, _ = runs["lora_sequential"]
    assert list(method.model.peft_config) == ["sequential"]
    assert method.trained[0] == method.trained[1] and len(method.trained[0]) == 6  # A, B of 3 Conv1D layers
    assert not all(torch.equal(a, b) for a, b in zip(method.snapshots[0], method.snapshots[1]))
    T = len(tiny_benchmark.tasks)
    assert (result.scores[1:, T:] != result.scores[0, T:]).all()  # the extra column is scored with the adapter


def test_per_task_scores_never_change_and_old_adapters_stay_frozen(runs, tiny_benchmark):
    result, method, _ = runs["lora_per_task"]
    R, T = result.R, len(tiny_benchmark.tasks)
    for i in range(T):
        for j in range(i):
            assert R[i, j] == R[j, j]  # exactly: the same frozen adapter, the same data
    assert R[0, 1] == result.b[1]  # a task not begun yet is scored on the base model
    assert (result.scores[:, T:] == result.scores[0, T:]).all()  # extra columns: base model, every row
    old = adapter_parameters(method.model, adapter_name(0))
    assert not {id(p) for p in old} & method.trained[1]
    assert all(torch.equal(p, q) and not p.requires_grad for p, q in zip(old, method.snapshots[0]))
    assert sorted(method.model.peft_config) == ["task_0", "task_1"]


def test_merged_adapter_scores_like_the_unmerged_one(runs, tiny_benchmark):
    result, method, _ = runs["lora_per_task"]
    model, task = method.model, tiny_benchmark.tasks[0]
    merged = merged_model(model, 0).eval()
    assert not isinstance(merged, PeftModel) and not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert merged.loss_type == "ForCausalLM" and sorted(model.peft_config) == ["task_0", "task_1"]  # untouched
    model.eval()
    loader = tiny_benchmark.loader(task.test, 32)  # the runner's eval batch size: same sums, same bits
    unmerged = lm_score(lambda b: method.forward(model, b, 0), loader)
    assert lm_score(lambda b: merged(**b), loader) == pytest.approx(unmerged, abs=1e-5)
    assert unmerged == pytest.approx(result.R[-1, 0], abs=1e-12)
    assert abs(unmerged - result.b[0]) > 1e-3  # the merge really carries a trained adapter
    with pytest.raises(ValueError, match="task_7"):
        merged_model(model, 7)


def test_orthogonality_penalty_is_the_official_l1_sum_of_entries():
    a_new = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]])  # (r=2, in=3)
    a_old = torch.tensor([[2.0, 1.0, -1.0]])  # a_new @ a_old.T = [[0], [-2]]
    a_two = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # a_new @ a_two.T = [[-1, 0], [3.5, 3]]
    assert orthogonality_penalty(a_new, [a_old]).item() == pytest.approx(2.0)
    assert orthogonality_penalty(a_new, [a_old, a_two]).item() == pytest.approx(2.0 + 7.5)  # squared: 4 + 22.25
    # the official code stacks the old A's into one lora_A: the same number
    assert orthogonality_penalty(a_new, [torch.cat([a_old, a_two])]).item() == pytest.approx(9.5)
    assert orthogonality_penalty(a_new, []).item() == 0.0


def test_orthogonality_penalty_zero_iff_rows_orthogonal():
    q, _ = torch.linalg.qr(torch.randn(32, 12, dtype=torch.float64))  # 12 orthonormal columns in R^32
    a_old, a_other, a_new = q[:, :4].T, q[:, 4:8].T, 3.0 * q[:, 8:].T  # (r=4, in=32) each
    assert orthogonality_penalty(a_new, [a_old, a_other]).item() == pytest.approx(0.0, abs=1e-12)
    assert orthogonality_penalty(a_old, [a_old]).item() == pytest.approx(4.0)  # sum |I_4|
    mixed = a_new + 0.1 * a_old
    assert orthogonality_penalty(mixed, [a_old]).item() == pytest.approx(4 * 0.1)  # sum |0.1 I_4|


def test_olora_penalty_on_the_model_and_its_gradient(tiny_tokenizer, tiny_benchmark):
    method = OLoRA(r=2, lambda_orth=2.0, lambda_l2=0.0)
    model = method.prepare(make_tiny_model(tiny_tokenizer), tiny_benchmark)
    method.begin_task(model, 0, tiny_benchmark.tasks[0])
    assert method.penalty(model, 0) is None  # nothing to be orthogonal to yet, no L2
    method.end_task(model, 0, tiny_benchmark.tasks[0], tiny_benchmark)
    method.begin_task(model, 1, tiny_benchmark.tasks[1])
    assert model.active_adapters == ["task_0", "task_1"]
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():  # make every new A orthogonal to the old one, layer by layer
        for layer in layers:
            a_old, a_new = layer.lora_A["task_0"].weight, layer.lora_A["task_1"].weight
            a_new -= (a_new @ a_old.T) @ torch.linalg.pinv(a_old.T)
    assert method.penalty(model, 1).item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        layers[0].lora_A["task_1"].weight.copy_(layers[0].lora_A["task_0"].weight)
    expected = 2.0 * (layers[0].lora_A["task_0"].weight @ layers[0].lora_A["task_0"].weight.T).abs().sum()
    penalty = method.penalty(model, 1)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5) and penalty.item() > 0
    penalty.backward()
    assert layers[0].lora_A["task_1"].weight.grad is not None and layers[0].lora_A["task_0"].weight.grad is None
    ids = {id(p) for p in method.parameters(model, 1)}
    assert ids == {id(p) for p in adapter_parameters(model, "task_1")}
    report = trainable_parameter_report(model)
    assert report["trainable"] == sum(p.numel() for p in adapter_parameters(model, "task_1"))
    assert report["percent"] == pytest.approx(100 * report["trainable"] / report["total"])


def test_olora_l2_term_is_the_unsquared_norm_of_each_new_parameter(tiny_tokenizer, tiny_benchmark):
    method = OLoRA(r=2, lambda_orth=0.0, lambda_l2=0.1)
    model = method.prepare(make_tiny_model(tiny_tokenizer), tiny_benchmark)
    method.begin_task(model, 0, tiny_benchmark.tasks[0])
    params = adapter_parameters(model, "task_0")
    penalty = method.penalty(model, 0)
    expected = 0.1 * sum(p.detach().pow(2).sum().sqrt() for p in params)  # B = 0 adds nothing yet
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6) and penalty.item() > 0
    penalty.backward()  # the norm of the zero B: gradient 0, not NaN
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().max() > 0 for p in params)


def test_lambda_zero_is_the_no_penalty_ablation_by_name():
    ablation, olora = OLoRA(lambda_orth=0.0), OLoRA()
    assert (ablation.name, olora.name, OLoRA.name) == ("olora_no_penalty", "olora", "olora")
    assert ablation.label == "olora_no_penalty r=8 λ₁=0" and olora.label == "olora r=8 λ₁=0.5"
    assert ablation.describe()["lambda_orth"] == 0.0 and olora.describe()["lambda_orth"] == 0.5
    assert results_path("smoke", "lm", ablation.name, 0).name == "lm__olora_no_penalty.json"
    with pytest.raises(ValueError, match="olora: lambda_orth must be a number >= 0"):
        OLoRA(lambda_orth=-0.1)


def test_ablation_trains_as_olora_minus_the_penalty(runs, tiny_tokenizer, tiny_benchmark):
    result, method, _ = runs["olora_no_penalty"]
    assert result.method == "olora_no_penalty" and not result.task_identity
    assert result.hparams["lambda_orth"] == 0.0 and result.hparams["lambda_l2"] == 1e-3
    model = method.model
    assert model.active_adapters == ["task_0", "task_1"]  # summed at inference, as O-LoRA
    old = adapter_parameters(model, "task_0")
    assert not {id(p) for p in old} & method.trained[1]
    assert all(torch.equal(p, q) and not p.requires_grad for p, q in zip(old, method.snapshots[0]))
    # while task 1 trains, the loss is O-LoRA's with the orthogonality term left out: only L2 remains
    l2 = 1e-3 * sum(p.detach().norm() for p in adapter_parameters(model, "task_1"))
    assert method.penalty(model, 1).item() == pytest.approx(l2.item(), rel=1e-6)

    class NoOrthogonality(OLoRA):  # O-LoRA at λ₁ = 0.5 with only the orthogonality term removed
        def orthogonality(self, model, task_id):
            return torch.zeros(())

    zeroed = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark,
                        NoOrthogonality(r=4, alpha=8, lambda_orth=0.5, lambda_l2=1e-3), SPEC, seed=0, progress=False)
    np.testing.assert_array_equal(zeroed.scores, result.scores)  # nothing else depends on lambda_orth
    assert not np.array_equal(runs["olora"][0].scores, result.scores)  # while the penalty does change training


def test_olora_old_adapter_frozen_and_inference_sums_adapters(runs, tiny_benchmark):
    _, method, _ = runs["olora"]
    model = method.model.eval()
    assert model.active_adapters == ["task_0", "task_1"]
    old = adapter_parameters(model, "task_0")
    assert not {id(p) for p in old} & method.trained[1]
    assert all(torch.equal(p, q) and not p.requires_grad for p, q in zip(old, method.snapshots[0]))
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        deltas = [layer.scaling[n] * x @ layer.lora_A[n].weight.T @ layer.lora_B[n].weight.T
                  for n in ("task_0", "task_1")]
        assert all(d.abs().max() > 1e-6 for d in deltas)  # both adapters trained (B is no longer zero)
        torch.testing.assert_close(layer(x), layer.base_layer(x) + deltas[0] + deltas[1])
        batch = next(iter(tiny_benchmark.loader(tiny_benchmark.tasks[0].test, 4)))
        logits = method.forward(model, batch, None).logits
        torch.testing.assert_close(merged_model(model, [0, 1]).eval()(**batch).logits, logits, atol=1e-5, rtol=0)
        assert (merged_model(model, 0).eval()(**batch).logits - logits).abs().max() > 1e-4


def test_adapter_size_on_disk_is_its_float32_weights(runs, tmp_path):
    model = runs["lora_per_task"][1].model
    n = sum(p.numel() for p in adapter_parameters(model, "task_1"))
    size = adapter_size_on_disk(model, "task_1", tmp_path)
    assert 4 * n <= size <= 4 * n + 4096  # weights plus the safetensors header


def test_gpt2_conv1d_gets_fan_in_fan_out_and_all_targets(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    config = lora_config(model)
    assert config.fan_in_fan_out and sorted(config.target_modules) == ["c_attn", "c_proj"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = get_peft_model(model, config)
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    names = sorted(n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer))
    assert [n.split("h.0.")[1] for n in names] == ["attn.c_attn", "attn.c_proj", "mlp.c_proj"]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")  # peft 0.21 reading a transformers-5 name
def test_bert_gets_lora_on_query_and_value_only():
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(cfg)
    model = get_peft_model(bert, lora_config(bert))
    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(names) == 4 and all(n.endswith((".query", ".value")) for n in names)
    assert not isinstance(model.get_base_model().classifier, LoraLayer)  # per-task heads: not LoRA's business
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    ids = torch.randint(0, 64, (2, 8))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


def test_unknown_architecture_is_refused_naming_the_supported_ones(tiny_benchmark):
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="mamba"))
    with pytest.raises(ValueError, match=r"'mamba'; supported: \['bert', 'gpt2', 'llama'\]"):
        lora_targets(fake)
    with pytest.raises(ValueError, match="supported"):
        PerTaskLoRA().prepare(fake, tiny_benchmark)


@pytest.mark.parametrize("kwargs, match", [({"r": 0}, "r .*>= 1"), ({"alpha": 0}, "alpha"),
                                           ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
                                           ({"lambda_orth": -1.0}, "lambda_orth must be a number >= 0"),
                                           ({"lambda_l2": float("nan")}, "lambda_l2")])
def test_invalid_hyper_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OLoRA(**kwargs)


def test_one_method_object_runs_two_streams_alike(tiny_tokenizer, tiny_benchmark):
    method = PerTaskLoRA(r=2)
    first, second = (run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, method, SPEC, seed=1,
                                progress=False).scores for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_prepare_twice_is_refused(tiny_tokenizer, tiny_benchmark):
    method = SequentialLoRA()
    model = method.prepare(make_tiny_model(tiny_tokenizer), tiny_benchmark)
    with pytest.raises(ValueError, match="PeftModel"):
        SequentialLoRA().prepare(model, tiny_benchmark)
