"""cl_utils.reuse: the untouched model's scores and naive's first task, kept once, give the same numbers bit for
bit as the work redone; anything that could change them is part of the key."""
import numpy as np
import pytest
import torch

from cl_utils import reuse
from cl_utils.config import TrainSpec
from cl_utils.methods import AGEM, ER, EWC, MAS, SI, LwF, Naive
from cl_utils.stream import run_joint, run_stream

from .classification_data import small_benchmark, tiny_classifier
from .conftest import make_tiny_model

SPEC = TrainSpec(steps=4, batch_size=8, lr=3e-3, warmup_steps=1)
METHODS = {  # every method that says its first task is naive's, and two that say it is not
    "naive": Naive, "ewc": lambda: EWC(10.0, fisher_examples=8),
    "online_ewc": lambda: EWC(10.0, mode="online", gamma=0.9, fisher_examples=8),
    "mas": lambda: MAS(1.0, examples=8), "agem": lambda: AGEM(0.5), "lwf": lambda: LwF(1.0), "si": lambda: SI(1.0),
    "er": lambda: ER(0.5),
}


@pytest.fixture
def kept(tmp_path, monkeypatch):
    """An empty cache folder of its own; reuse on."""
    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CL_REUSE", "1")
    return tmp_path / "runs" / "cache" / "reuse"


def _setting(name, tiny_tokenizer, tiny_benchmark):
    if name == "lm":
        return (lambda: make_tiny_model(tiny_tokenizer)), tiny_benchmark
    # dropout on: the encoder reads the global RNG while training, which reuse must leave where training would
    return (lambda: tiny_classifier(dropout=0.1)), small_benchmark()


def _run(make, bench, method, *, seed=0, spec=SPEC):
    return run_stream(make(), bench, method, spec, seed=seed, eval_batch_size=16, progress=False, valid=True,
                      head_lr=1e-2 if bench.task_heads else None)


def _assert_same(a, b):
    assert np.array_equal(a.scores, b.scores), (a.scores, b.scores)
    assert a.losses == b.losses and a.valid == b.valid
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("bench_name", ["lm", "classification"])
def test_streams_that_reuse_give_the_same_numbers_bit_for_bit(bench_name, kept, monkeypatch, tiny_tokenizer,
                                                               tiny_benchmark):
    make, bench = _setting(bench_name, tiny_tokenizer, tiny_benchmark)
    monkeypatch.setenv("CL_REUSE", "0")
    redone = {name: _run(make, bench, factory()) for name, factory in METHODS.items()}
    assert not kept.exists() and all(r.reused == [] for r in redone.values())  # off: nothing kept, nothing read

    monkeypatch.setenv("CL_REUSE", "1")
    naive = _run(make, bench, Naive())  # the first stream computes and keeps
    assert naive.reused == []
    _assert_same(naive, redone["naive"])
    for name, factory in METHODS.items():
        method = factory()
        shares = method.first_task_as_naive(bench)
        result = _run(make, bench, method)
        assert result.reused == (["before", "first_task", "first_row"] if shares else ["before"]), name
        _assert_same(result, redone[name])
        if shares:  # the claim itself, checked on the stream that recomputed everything
            assert redone[name].losses[0] == redone["naive"].losses[0], name
    assert AGEM().first_task_as_naive(bench) and LwF().first_task_as_naive(bench) == bench.task_heads
    assert not SI(1.0).first_task_as_naive(bench) and not ER().first_task_as_naive(bench)


def test_a_different_seed_budget_or_model_is_recomputed(kept, tiny_tokenizer, tiny_benchmark):
    make = lambda: make_tiny_model(tiny_tokenizer)  # noqa: E731
    assert _run(make, tiny_benchmark, Naive()).reused == []
    assert _run(make, tiny_benchmark, Naive()).reused == ["before", "first_task", "first_row"]
    assert _run(make, tiny_benchmark, Naive(), seed=1).reused == []  # the RNG state is part of both keys
    other_lr = TrainSpec(steps=4, batch_size=8, lr=1e-3, warmup_steps=1)
    assert _run(make, tiny_benchmark, Naive(), spec=other_lr).reused == ["before"]
    other_model = lambda: make_tiny_model(tiny_tokenizer, seed=5)  # noqa: E731
    assert _run(other_model, tiny_benchmark, Naive()).reused == []
    before = run_joint(make(), tiny_benchmark, SPEC, seed=0, eval_batch_size=16, progress=False)
    assert before.reused == ["before"]  # joint training starts from the same untouched scores
    redone = _run(make, tiny_benchmark, Naive(), spec=other_lr)
    assert np.array_equal(redone.b, before.b)


def test_kept_first_task_reports_the_seconds_it_took(kept, tiny_tokenizer, tiny_benchmark):
    make = lambda: make_tiny_model(tiny_tokenizer)  # noqa: E731
    first, again = _run(make, tiny_benchmark, Naive()), _run(make, tiny_benchmark, EWC(1.0, fisher_examples=8))
    assert again.reused == ["before", "first_task", "first_row"]
    files = sorted(p.name.split("-")[0] for p in kept.iterdir())
    assert files == ["after", "before", "first"], files
    assert len(first.losses[0]) == len(again.losses[0]) == SPEC.steps


def test_digest_is_by_content_and_refuses_what_it_does_not_know():
    a = {"w": torch.arange(6.0).reshape(2, 3), "n": [1, 2.5, "x", None]}
    same = {"n": [1, 2.5, "x", None], "w": torch.arange(6.0).reshape(2, 3).clone()}
    assert reuse.digest(a) == reuse.digest(same)
    flipped = {**a, "w": a["w"].clone()}
    flipped["w"][1, 2] = torch.nextafter(flipped["w"][1, 2], torch.tensor(100.0))  # one ulp
    assert reuse.digest(flipped) != reuse.digest(a)
    assert reuse.digest(torch.zeros(3)) != reuse.digest(torch.zeros(3, dtype=torch.float64))
    assert reuse.digest(torch.zeros(2, 3)) != reuse.digest(torch.zeros(3, 2))
    with pytest.raises(reuse.Unhashable, match="object"):
        reuse.digest(object())


def test_unhashable_input_is_recomputed_and_nothing_is_kept(kept, tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    calls = []
    scores, was_kept = reuse.before_scores(model, [object()], 4, lambda: calls.append(1) or [0.5], tag="x")
    scores2, was_kept2 = reuse.before_scores(model, [object()], 4, lambda: calls.append(1) or [0.5], tag="x")
    assert scores == scores2 == [0.5] and not was_kept and not was_kept2 and len(calls) == 2
    assert not kept.exists()
