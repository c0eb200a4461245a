"""EWC: the penalty and its gradient, online mode, anchors, the stream (Fisher after training), persistence."""
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from cl_utils.config import TrainSpec
from cl_utils.methods.ewc import EWC
from cl_utils.methods.quadratic import check_importance_matches as check_fisher_matches, weights_checksum
from cl_utils.fisher import diagonal_fisher
from cl_utils.stream import run_stream

from .conftest import make_tiny_model


def small_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def random_like(model, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.rand(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}


def perturb(model, seed):
    with torch.no_grad():
        for p, d in zip(model.parameters(), random_like(model, seed).values()):
            p.add_(0.1 * (d - 0.5))


def consolidated(model, mode="separate", tasks=2, lam=3.0, gamma=0.5):
    """EWC with ``tasks`` (Fisher, anchor) pairs; the model moves between consolidations."""
    ewc = EWC(lam, mode=mode, gamma=gamma)
    fishers, anchors = [], []
    for k in range(tasks):
        fishers.append(random_like(model, seed=10 + k))
        anchors.append(weights(model))
        ewc.consolidate(fishers[-1], anchors[-1], task_id=k)
        perturb(model, seed=20 + k)
    return ewc, fishers, anchors


def grad_of_penalty(ewc, model):
    model.zero_grad(set_to_none=True)
    value = ewc.penalty(model, task_id=1)
    value.backward()
    ewc.after_backward(model, 1)  # the penalty's gradient goes into p.grad here
    return value, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_penalty_is_exactly_zero_at_the_anchor(mode):
    model = small_net()
    ewc = EWC(2.0, mode=mode)
    assert ewc.penalty(model, 0) is None  # nothing consolidated yet
    ewc.consolidate(random_like(model, 1), weights(model))
    if mode == "online":  # a second consolidation moves the single anchor to the current weights
        perturb(model, 2)
        ewc.consolidate(random_like(model, 3), weights(model))
    assert ewc.penalty(model, 1).item() == 0.0
    perturb(model, 4)
    assert ewc.penalty(model, 1).item() > 0


def test_separate_penalty_and_gradient_sum_over_tasks():
    model = small_net()
    ewc, fishers, anchors = consolidated(model, "separate", tasks=2, lam=3.0)
    value, grads = grad_of_penalty(ewc, model)
    theta = weights(model)
    expected = 0.5 * 3.0 * sum((f[n] * (theta[n] - a[n]) ** 2).sum() for f, a in zip(fishers, anchors) for n in f)
    assert_close(value, expected, rtol=1e-10, atol=0)
    for n in theta:
        formula = 3.0 * sum(f[n] * (theta[n] - a[n]) for f, a in zip(fishers, anchors))
        assert_close(grads[n], formula, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("mode", ["separate", "online"])
@pytest.mark.parametrize("lam", [0.0, 123.4])
def test_fused_penalty_gives_autograds_gradient_bit_for_bit(tiny_tokenizer, mode, lam):
    """The fused penalty (torch._foreach_*, its gradient added by after_backward) against autograd through (lam/2) sum
    S (θ - m)^2, on a float32 GPT-2 whose word embedding is tied to its output layer. Bit for bit on every weight that
    one gradient of the loss reaches; the tied one gets three, which autograd sums penalty first (its node is the
    newest) and after_backward last: equal to rounding there."""
    model = make_tiny_model(tiny_tokenizer).float().eval()
    ids = torch.randint(5, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    ewc = EWC(lam, mode=mode, gamma=0.9)
    g = torch.Generator().manual_seed(1)
    for task in range(3):
        fisher = {n: torch.rand(p.shape, generator=g) * 10.0 ** (task - 2) for n, p in model.named_parameters()}
        anchor = {n: p.detach() + 1e-3 * (task + 1) * torch.randn(p.shape, generator=g)
                  for n, p in model.named_parameters()}
        ewc.consolidate(fisher, anchor)
        runs = []
        for penalty in (ewc.penalty_autograd, ewc.penalty):
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss + penalty(model, task + 1)
            loss.backward()
            ewc.after_backward(model, task + 1)  # nothing to add after penalty_autograd
            runs.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        (ref_loss, ref_grads), (loss, grads) = runs
        tied = model.transformer.wte.weight
        for p, a, b in zip(model.parameters(), ref_grads, grads):
            if p is tied:
                assert_close(b, a, rtol=1e-6, atol=1e-6 * a.abs().max().item())
            else:
                assert torch.equal(a, b)
        assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)  # the value: summed in another order


def test_fused_penalty_gradient_scales_and_is_never_lost(tiny_tokenizer):
    """A scaled penalty adds the scaled gradient; a backward whose gradient was never added (no after_backward) makes
    the next penalty raise instead of training without it."""
    net = torch.nn.Linear(3, 2).double()
    ewc = EWC(2.0)
    ewc.consolidate(random_like(net, 1), {n: p.detach() - 0.1 for n, p in net.named_parameters()})
    (3.0 * ewc.penalty(net, 1)).backward()
    ewc.after_backward(net, 1)
    fused = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    (3.0 * ewc.penalty_autograd(net, 1)).backward()
    for n, p in net.named_parameters():
        assert_close(fused[n], p.grad, rtol=1e-12, atol=0, msg=n)
    ewc.penalty(net, 1).backward()  # after_backward forgotten
    with pytest.raises(RuntimeError, match="after_backward"):
        ewc.penalty(net, 1)


def test_online_fisher_decays_and_keeps_a_single_anchor():
    model = small_net()
    ewc, fishers, anchors = consolidated(model, "online", tasks=3, lam=2.0, gamma=0.5)
    assert ewc.name == "online_ewc" and len(ewc.fishers) == 1 and len(ewc.anchors) == 1
    for n, f in ewc.fishers[0].items():
        assert_close(f, 0.25 * fishers[0][n] + 0.5 * fishers[1][n] + fishers[2][n], rtol=1e-12, atol=0)
        assert torch.equal(ewc.anchors[0][n], anchors[2][n])  # the latest weights
    value, grads = grad_of_penalty(ewc, model)
    theta = weights(model)
    for n in theta:
        assert_close(grads[n], 2.0 * ewc.fishers[0][n] * (theta[n] - anchors[2][n]), rtol=1e-9, atol=1e-12)


def test_anchor_is_a_clone_and_new_parameters_are_left_out(tiny_tokenizer, tiny_benchmark):
    model = make_tiny_model(tiny_tokenizer)
    ewc = EWC(1.0, fisher_examples=8)
    ewc.end_task(model, 0, tiny_benchmark.tasks[0], tiny_benchmark)
    stored = {n: a.clone() for n, a in ewc.anchors[0].items()}
    assert all(a.data_ptr() != p.data_ptr() for a, p in zip(ewc.anchors[0].values(), model.parameters()))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # in place: a view or `.data` anchor would follow and the penalty would stay 0
    assert all(torch.equal(ewc.anchors[0][n], stored[n]) for n in stored)
    before = ewc.penalty(model, 1)
    assert before > 0
    model.extra_head = torch.nn.Linear(16, 3)  # added after consolidation: no Fisher, no penalty
    after = ewc.penalty(model, 1)
    assert after.item() == before.item()
    after.backward()
    assert model.extra_head.weight.grad is None


def test_fisher_of_each_task_uses_the_weights_trained_on_it(tiny_tokenizer, tiny_benchmark):
    """The Fisher and anchor of task k equal those recomputed when the runner hands over the trained model,
    and differ from those at the weights before training task k (so the test fails if computed too early)."""

    class Spy(EWC):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.before, self.after, self.expected, self.checksums, self.penalties = {}, {}, {}, {}, []

        def begin_task(self, model, task_id, task):
            self.before[task_id] = weights(model)
            super().begin_task(model, task_id, task)

        def penalty(self, model, task_id):
            out = super().penalty(model, task_id)
            self.penalties.append((task_id, out is None))
            return out

        def end_task(self, model, task_id, task, benchmark):
            self.after[task_id] = weights(model)
            self.checksums[task_id] = weights_checksum(model)
            loader = benchmark.loader(task.train, self.fisher_batch_size, shuffle=True, seed=task_id)
            self.expected[task_id] = diagonal_fisher(model, loader, max_examples=self.fisher_examples)
            super().end_task(model, task_id, task, benchmark)

    model = make_tiny_model(tiny_tokenizer)
    spy = Spy(10.0, fisher_examples=4, fisher_batch_size=4)
    result = run_stream(model, tiny_benchmark, spy, TrainSpec(steps=4, batch_size=4, lr=3e-3, warmup_steps=1),
                        seed=0, progress=False)
    assert np.isfinite(result.scores).all() and result.hparams["lam"] == 10.0
    assert spy.task_ids == [0, 1] and len(spy.fishers) == 2
    assert {t for t, none in spy.penalties if none} == {0} and any(t == 1 for t, _ in spy.penalties)
    for k in (0, 1):
        assert [e["checksum"] for e in spy.fisher_log][k] == spy.checksums[k]
        assert spy.checksums[k] != pytest.approx(weights_checksum_of(spy.before[k]), rel=1e-12)
        for n, f in spy.fishers[k].items():
            assert_close(f, spy.expected[k][n], rtol=1e-5, atol=1e-12)
            assert torch.equal(spy.anchors[k][n], spy.after[k][n])
        untrained = make_tiny_model(tiny_tokenizer)
        untrained.load_state_dict(spy.before[k], strict=False)
        early = diagonal_fisher(untrained, tiny_benchmark.loader(tiny_benchmark.tasks[k].train, 4, shuffle=True,
                                                                 seed=k), max_examples=4)
        assert not torch.allclose(early["transformer.wte.weight"], spy.fishers[k]["transformer.wte.weight"])
        assert not torch.equal(spy.anchors[k]["transformer.h.0.mlp.c_fc.weight"],
                               spy.before[k]["transformer.h.0.mlp.c_fc.weight"])


def weights_checksum_of(state):
    return float(sum(t.double().sum() + t.double().square().sum() for t in state.values()))


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_save_load_round_trip(tmp_path, mode):
    model = small_net()
    ewc, _, _ = consolidated(model, mode, tasks=3)
    ewc.save(tmp_path / "ewc.pt")
    loaded = EWC.load(tmp_path / "ewc.pt")
    assert loaded.describe() == ewc.describe() and loaded.name == ewc.name and loaded.task_ids == ewc.task_ids
    assert torch.equal(loaded.penalty(model, 3), ewc.penalty(model, 3))
    perturb(model, 99)
    assert torch.equal(loaded.penalty(model, 3), ewc.penalty(model, 3))


@pytest.mark.parametrize("kwargs,match", [
    ({"lam": -1.0}, "lam"), ({"lam": 1.0, "gamma": 0.0}, "gamma"), ({"lam": 1.0, "gamma": 1.5}, "gamma"),
    ({"lam": 1.0, "mode": "offline"}, "mode"), ({"lam": 1.0, "fisher_examples": 0}, "fisher_examples"),
    ({"lam": 1.0, "kind": "exact"}, "kind")])
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EWC(**kwargs)


def test_empty_train_split_and_mismatched_fisher(tiny_tokenizer, tiny_benchmark):
    model = make_tiny_model(tiny_tokenizer)
    task = tiny_benchmark.tasks[0]
    empty = type(task)(task.name, task.train.subset(0), task.valid, task.test)
    with pytest.raises(ValueError, match="at least one"):
        EWC(1.0).end_task(model, 0, empty, tiny_benchmark)
    net = small_net()
    ewc = EWC(1.0)
    ewc.consolidate({"nope.weight": torch.ones(2)}, {"nope.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="nope.weight"):
        ewc.penalty(net, 1)
    with pytest.raises(ValueError, match="shapes differ"):
        check_fisher_matches({"0.weight": torch.ones(4, 3)}, net)
    check_fisher_matches({"0.weight": torch.ones(3, 4)}, net)  # a subset of the parameters is fine
    assert EWC(1.0).name == "ewc" and set(EWC(1.0).describe()) == {"lam", "mode", "gamma", "fisher_examples", "kind"}
