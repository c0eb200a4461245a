"""ER, A-GEM, LwF, SI and MAS on both benchmarks, the replay buffer, the hooks and the method registry."""
import inspect

import numpy as np
import pytest
import torch

from cl_utils.config import TrainSpec
from cl_utils.methods import (AGEM, ER, EWC, MAS, METHODS, SI, LwF, Method, Naive, make_method, method_parameters)
from cl_utils.methods.agem import project
from cl_utils.methods.buffer import REPLAY_BUFFER, ReplayBuffer, rows_of
from cl_utils.methods.lwf import distillation_kl
from cl_utils.methods.mas import output_sensitivity
from cl_utils.saving import load_trained, save_trained
from cl_utils.stream import evaluate_columns, run_stream

from .classification_data import small_benchmark, tiny_classifier, tokenizer
from .conftest import make_tiny_model

SPEC = TrainSpec(steps=4, batch_size=8, lr=3e-3, warmup_steps=1)
CPU = torch.device("cpu")


def _run(model, bench, method, spec=SPEC):
    return run_stream(model, bench, method, spec, seed=0, eval_batch_size=16, progress=False)


# -- the buffer ----------------------------------------------------------------------------------------------------
def test_reservoir_keeps_a_uniform_sample_of_everything_offered():
    counts = np.zeros(100)
    for seed in range(400):
        buffer = ReplayBuffer(10, seed=seed)
        buffer.reservoir([{"input_ids": torch.tensor([i])} for i in range(100)])
        assert len(buffer) == 10 and buffer.seen == 100
        for r in buffer.rows:
            counts[int(r["input_ids"])] += 1
    # each of the 100 rows is held with probability 0.1: 40 times in 400 draws, binomial sd 6
    assert counts.min() > 15 and counts.max() < 65 and abs(counts[:50].sum() - counts[50:].sum()) < 300


def test_rows_of_cuts_a_texts_padding_and_the_collate_restores_it():
    bench = small_benchmark()
    batch = next(iter(bench.loader(bench.tasks[1].train, 6)))
    rows = rows_of(batch)
    assert [r["input_ids"].shape[0] for r in rows] == batch["attention_mask"].sum(1).tolist()
    again = bench.collate(rows)
    assert all(torch.equal(again[k], batch[k]) for k in batch)


def test_buffer_saves_and_reloads_exactly(tmp_path):
    buffer = ReplayBuffer(5, seed=3)
    buffer.reservoir([{"input_ids": torch.arange(4) + i, "labels": torch.tensor(i)} for i in range(20)])
    buffer.save(tmp_path / "b.pt")
    loaded = ReplayBuffer.load(tmp_path / "b.pt")
    assert loaded.seen == buffer.seen and len(loaded) == len(buffer)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(loaded.rows, buffer.rows) for k in a)
    assert [int(r["labels"]) for r in loaded.sample(3)] == [int(r["labels"]) for r in buffer.sample(3)]


# -- A-GEM's projection --------------------------------------------------------------------------------------------
def test_agem_projection_removes_the_conflict_and_leaves_agreement_alone():
    torch.manual_seed(0)
    for _ in range(20):
        g = [torch.randn(5, 3), torch.randn(7)]
        ref = [torch.randn(5, 3), torch.randn(7)]
        dot = sum((a * b).sum() for a, b in zip(g, ref))
        before = [t.clone() for t in g]
        projected = project(g, ref)
        after = sum((a * b).sum() for a, b in zip(g, ref))
        if dot < 0:
            assert projected and abs(float(after)) < 1e-5 and after >= -1e-5
        else:
            assert not projected and all(torch.equal(a, b) for a, b in zip(g, before))


def test_agem_projects_during_training_and_fills_its_memory_per_task(tiny_tokenizer, tiny_benchmark):
    method = AGEM(0.25)
    _run(make_tiny_model(tiny_tokenizer), tiny_benchmark, method)
    info = method.describe()
    # two tasks: only the first fills the memory (the last's would never be used)
    assert info["rows_held"] == method.per_task == info["memory_rows"]
    assert method.steps == SPEC.steps and 0 <= method.projected <= SPEC.steps  # the second task had a memory


def test_agem_memory_saves_with_the_model_and_reloads_as_agem(tmp_path):
    method = AGEM(0.5)
    result = _run(tiny_classifier(), small_benchmark(24, 40), method)
    path = save_trained(tmp_path / "agem", result.model, tokenizer(), method=method)
    _, _, loaded = load_trained(path, CPU)
    assert isinstance(loaded, AGEM) and len(loaded.buffer) == len(method.buffer) == method.per_task
    assert all(torch.equal(a[k], b[k]) for a, b in zip(loaded.buffer.rows, method.buffer.rows) for k in a)


# -- ER ------------------------------------------------------------------------------------------------------------
class SpyER(ER):
    """ER that records, per training forward, the task being trained and the task ids of the batch's rows."""

    def __init__(self, memory):
        super().__init__(memory)
        self.seen = []

    def forward(self, model, batch, task_id):
        if model.training:
            self.seen.append((task_id, sorted(set(batch["task_ids"].tolist()))))
        return super().forward(model, batch, task_id)


def test_er_memory_holds_both_tasks_texts_and_replays_them_through_their_own_heads():
    bench = small_benchmark(n_train=40)
    method = SpyER(0.5)
    result = _run(tiny_classifier(), bench, method, TrainSpec(steps=6, batch_size=8, lr=3e-3, warmup_steps=1))
    held = method.buffer.tasks()
    assert sum(held.values()) == method.buffer.capacity == 20 and set(held) == {0, 1}
    assert len(method.seen) == 2 * 6  # one forward per step: the current rows and the replayed ones together
    assert any(task == 1 and 0 in ids for task, ids in method.seen)  # task 0's texts come back during task 1
    assert result.state_bytes == method.buffer.nbytes > 0


def test_er_state_saves_with_the_model_and_reloads_exactly(tmp_path):
    bench = small_benchmark(24, 40)
    method = ER(0.5)
    result = _run(tiny_classifier(), bench, method)
    path = save_trained(tmp_path / "er", result.model, tokenizer(), method=method)
    assert (path / REPLAY_BUFFER).exists()
    model, _, loaded = load_trained(path, CPU)
    assert isinstance(loaded, ER) and loaded.buffer.seen == method.buffer.seen
    assert all(torch.equal(a[k], b[k]) for a, b in zip(loaded.buffer.rows, method.buffer.rows) for k in a)
    assert evaluate_columns(model, Naive(), bench, batch_size=16, device=CPU) == result.scores[-1].tolist()
    a, b = loaded.buffer.sample(4), method.buffer.sample(4)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))


def test_er_reduces_forgetting_of_the_first_lm_task(tiny_tokenizer, tiny_benchmark):
    spec = TrainSpec(steps=30, batch_size=8, lr=1e-2, warmup_steps=2)
    naive = _run(make_tiny_model(tiny_tokenizer), tiny_benchmark, Naive(), spec)
    er = _run(make_tiny_model(tiny_tokenizer), tiny_benchmark, ER(1.0), spec)
    assert er.metrics()["BWT"] > naive.metrics()["BWT"] + 0.05


# -- LwF -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("benchmark", ["lm", "classification"])
def test_lwf_with_weight_zero_gives_naives_R_exactly(benchmark, tiny_tokenizer, tiny_benchmark):
    if benchmark == "lm":
        bench, model = tiny_benchmark, lambda: make_tiny_model(tiny_tokenizer)
    else:
        bench, model = small_benchmark(), tiny_classifier
    naive = _run(model(), bench, Naive())
    lwf = _run(model(), bench, LwF(0.0))
    assert np.array_equal(naive.scores, lwf.scores) and naive.losses == lwf.losses
    # a positive weight changes the training (from the first task on for the LM, the second for classification)
    method = LwF(10.0)
    result = _run(model(), bench, method)
    assert result.losses[1] != naive.losses[1]
    # the teacher (one model copy) is counted, and freed once no task needs it
    assert method.teacher is None and result.state_bytes == sum(p.numel() * 4 for p in result.model.parameters()) + \
        sum(b.numel() * b.element_size() for b in result.model.buffers())


def test_distillation_is_zero_against_itself_and_counts_real_tokens_only(tiny_tokenizer, tiny_benchmark):
    x = torch.randn(6, 9)
    assert distillation_kl(x, x, 2.0).abs().item() < 1e-6 and distillation_kl(x, x + 1, 2.0).abs().item() < 1e-6
    assert distillation_kl(x, torch.randn(6, 9), 2.0) > 0
    model = make_tiny_model(tiny_tokenizer)
    method = LwF(1.0)
    method.begin_task(model, 0, tiny_benchmark.tasks[0])
    batch = next(iter(tiny_benchmark.loader(tiny_benchmark.tasks[0].test, 4)))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(0.5)
        out = model(**batch)
        kd = method.distillation(model, out, batch, 0)
        padded = dict(batch)
        padded["labels"] = batch["labels"].clone()
        padded["labels"][:, 8:] = -100  # fewer scored tokens: a different mean
        assert kd > 0 and not torch.isclose(method.distillation(model, out, padded, 0), kd)


# -- SI and MAS ----------------------------------------------------------------------------------------------------
def test_si_path_integral_matches_a_hand_computed_sgd_step():
    """One SGD step on loss = sum(w * c): g = c, Δw = -lr c, so ω = lr c², and Ω = ω / (Δw² + ξ)."""
    net = torch.nn.Linear(3, 1, bias=False)
    method = SI(2.0, xi=0.5)
    method.begin_task(net, 0, None)
    c = torch.tensor([[1.0, -2.0, 3.0]])
    (net.weight * c).sum().backward()
    method.after_backward(net, 0)
    with torch.no_grad():
        net.weight.sub_(0.1 * net.weight.grad)
    method.after_step(net, 0)
    omega = method.importance(net, 0, None, None, ["weight"])["weight"]
    torch.testing.assert_close(omega, 0.1 * c ** 2 / ((0.1 * c) ** 2 + 0.5))


@pytest.mark.parametrize("autograd", [False, True])
def test_si_reads_the_task_gradient_without_the_penalty(autograd, monkeypatch):
    net = torch.nn.Linear(2, 1, bias=False)
    method = SI(4.0)
    method.consolidate({"weight": torch.tensor([[1.0, 2.0]])}, {"weight": torch.zeros(1, 2)})
    if autograd:  # the fallback for mixed dtypes: the penalty's gradient arrives through autograd, and is subtracted
        monkeypatch.setattr(method, "penalty", method.penalty_autograd)
    method.begin_task(net, 1, None)
    task = net.weight.sum()
    net.weight.data.fill_(0.5)
    (task + method.penalty(net, 1)).backward()
    method.after_backward(net, 1)
    torch.testing.assert_close(method._grad["weight"], torch.ones(1, 2))  # the task loss's gradient alone
    torch.testing.assert_close(net.weight.grad, torch.ones(1, 2) + 4.0 * torch.tensor([[1.0, 2.0]]) * 0.5)


def test_mas_importance_is_the_mean_of_absolute_per_example_gradients(tiny_tokenizer, tiny_benchmark):
    model = make_tiny_model(tiny_tokenizer)
    method = MAS(1.0, examples=4, batch_size=2)
    names = ["transformer.h.0.mlp.c_fc.weight"]
    omega = method.importance(model, 0, tiny_benchmark.tasks[0], tiny_benchmark, names)[names[0]]
    loader = tiny_benchmark.loader(tiny_benchmark.tasks[0].train, 2, shuffle=True, seed=0)
    rows = [{k: v[i:i + 1] for k, v in b.items()} for b in loader for i in range(2)][:4]
    p = dict(model.named_parameters())[names[0]]
    model.eval()
    grads = []
    for row in rows:
        logits = model(input_ids=row["input_ids"], attention_mask=row["attention_mask"]).logits[0]
        real = row["attention_mask"][0].bool()
        grads.append(torch.autograd.grad(logits[real].square().sum(-1).mean(), p)[0])
    torch.testing.assert_close(omega, torch.stack(grads).abs().mean(0), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(omega, torch.stack(grads).mean(0).abs())  # per example, not of the mean


@pytest.mark.parametrize("benchmark", ["lm", "classification"])
def test_mas_hooks_give_the_loops_importance(tiny_tokenizer, tiny_benchmark, benchmark):
    """Every parameter, padded rows, a tied word embedding (GPT-2) or a task head read twice (classification)."""
    if benchmark == "lm":
        model, bench, task_id = make_tiny_model(tiny_tokenizer), tiny_benchmark, 0
    else:
        model, bench, task_id = tiny_classifier(), small_benchmark(24, 40), 1
    names = [n for n, p in model.named_parameters() if not n.startswith("heads.")]
    task = bench.tasks[task_id]
    kept = {}
    for engine in ("hooks", "loop"):
        kept[engine] = output_sensitivity(model, bench.loader(task.train, 5, shuffle=True, seed=0), names, task_id,
                                          max_examples=12, engine=engine)
    scale = max(float(o.abs().max()) for o in kept["loop"].values())  # the key bias's true gradient is 0: noise
    for n in names:
        torch.testing.assert_close(kept["hooks"][n], kept["loop"][n], rtol=1e-4, atol=1e-6 * scale, msg=n)
    assert sum(float(o.sum()) for o in kept["hooks"].values()) > 0


@pytest.mark.parametrize("make", [lambda: SI(10.0), lambda: MAS(10.0, examples=8)], ids=["si", "mas"])
def test_si_and_mas_leave_the_heads_out_and_save_and_reload(make, tmp_path):
    bench = small_benchmark(24, 40)
    method = make()
    result = _run(tiny_classifier(), bench, method)
    assert method.importances and not any(n.startswith("heads.") for n in method.importances[0])
    assert all((v >= 0).all() for v in method.importances[0].values())
    assert result.state_bytes > 0
    path = save_trained(tmp_path / method.name, result.model, tokenizer(), method=method)
    model, _, loaded = load_trained(path, CPU)
    assert type(loaded) is type(method) and loaded.describe() == method.describe()
    assert torch.equal(loaded.penalty(model, 2), method.penalty(result.model, 2))


# -- every new method on both benchmarks ---------------------------------------------------------------------------
NEW = {"er": lambda: ER(0.5), "agem": lambda: AGEM(0.5), "lwf": lambda: LwF(1.0), "si": lambda: SI(10.0),
       "mas": lambda: MAS(10.0, examples=8)}


@pytest.mark.parametrize("name", sorted(NEW))
@pytest.mark.parametrize("benchmark", ["lm", "classification"])
def test_every_new_method_runs_both_benchmarks(name, benchmark, tiny_tokenizer, tiny_benchmark):
    bench, model = (tiny_benchmark, make_tiny_model(tiny_tokenizer)) if benchmark == "lm" else \
        (small_benchmark(), tiny_classifier())
    result = _run(model, bench, NEW[name]())
    assert result.method == name and np.isfinite(result.scores).all()
    assert all(np.isfinite(loss).all() and len(loss) == SPEC.steps for loss in result.losses)
    assert not result.task_identity or benchmark == "classification"  # told the task only through the heads


# -- the registry --------------------------------------------------------------------------------------------------
def test_registry_builds_every_method_by_name_and_refuses_bad_input():
    assert make_method("er", memory=0.05).label == "er M=0.05"
    assert make_method("online_ewc", lam=3.0).name == "online_ewc"
    assert make_method("olora_no_penalty").name == "olora_no_penalty"
    for name in METHODS:
        required = {k for k, d in method_parameters(name).items() if d is inspect.Parameter.empty}
        method = make_method(name, **{k: 1.0 for k in required})
        assert isinstance(method, Method) and method.name == name
    with pytest.raises(ValueError, match=r"unknown method 'replay'.*'er'"):
        make_method("replay")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['memry'\]; valid: memory=0.05"):
        make_method("er", memry=0.1)
    with pytest.raises(ValueError, match=r"missing parameter\(s\) \['lam'\]"):
        make_method("si")
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        make_method("er", memory=5)
    assert "mode" not in method_parameters("online_ewc") and isinstance(make_method("ewc", lam=1.0), EWC)


def test_a_results_file_from_before_state_bytes_reads_as_unknown_not_zero(tiny_tokenizer, tiny_benchmark, tmp_path,
                                                                          monkeypatch):
    import math

    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path))  # not the session's runs folder, which other tests read

    from cl_utils.config import get_profile
    from cl_utils.results import result_from_dict, result_row, save_results

    result = _run(make_tiny_model(tiny_tokenizer), tiny_benchmark, ER(0.5))
    path = save_results(result, profile=get_profile("smoke"), benchmark="lm", seed=0)
    import json
    data = json.loads(path.read_text())
    assert result_row(result_from_dict(data))["state MB"] == result.state_bytes / 2**20 > 0
    del data["state_bytes"]
    assert math.isnan(result_row(result_from_dict(data))["state MB"])
