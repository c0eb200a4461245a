"""The stream runner, results files and the base-model cache."""
import json

import numpy as np
import pytest

from cl_utils.config import TrainSpec, get_profile
from cl_utils.methods import Naive
from cl_utils.models import load_base
from cl_utils.results import (load_result, load_results, result_from_dict, results_path, same_profile, save_results,
                              sweep_tag)
from cl_utils.stream import run_joint, run_stream, score_split

from .conftest import make_tiny_model

SPEC = TrainSpec(steps=6, batch_size=4, lr=3e-3, warmup_steps=1)


def test_stream_shapes_and_rows(tiny_tokenizer, tiny_benchmark):
    r = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Naive(), SPEC, seed=0, progress=False)
    T, E = len(tiny_benchmark.tasks), len(tiny_benchmark.extra)
    assert r.scores.shape == (T + 1, T + E) and r.R.shape == (T, T) and r.b.shape == (T,)
    assert np.isfinite(r.scores).all()
    assert r.R[0, 0] > r.b[0]  # training task 0 improved it
    assert len(r.losses) == T and all(len(l) == SPEC.steps for l in r.losses)
    assert r.trainable_params == r.total_params
    assert set(r.metrics()) == {"ACC", "BWT", "FWT", "forgetting"}


def test_same_seed_same_matrix_other_seed_other_matrix(tiny_tokenizer, tiny_benchmark):
    run = lambda seed: run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Naive(), SPEC, seed=seed,
                                  progress=False).scores
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_joint_has_only_a_final_row(tiny_tokenizer, tiny_benchmark):
    r = run_joint(make_tiny_model(tiny_tokenizer), tiny_benchmark, SPEC, seed=0, progress=False)
    assert np.isnan(r.R[:-1]).all() and np.isfinite(r.R[-1]).all()
    m = r.metrics()
    assert m["ACC"] == pytest.approx(r.R[-1].mean()) and m["BWT"] is None and m["forgetting"] is None
    assert r.hparams["steps"] == SPEC.steps * len(tiny_benchmark.tasks)


def test_valid_is_scored_once_at_the_end_only_when_asked_and_saved(tiny_tokenizer, tiny_benchmark, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path))
    r = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Naive(), SPEC, seed=0, progress=False, valid=True)
    cpu = next(r.model.parameters()).device
    expected = [score_split(r.model, Naive(), tiny_benchmark, t.valid, j, batch_size=32, device=cpu)
                for j, t in enumerate(tiny_benchmark.tasks)]
    assert r.valid == expected and r.valid_acc == pytest.approx(np.mean(expected))
    assert not np.allclose(r.valid, r.R[-1])  # another split than the test columns
    path = save_results(r, profile=get_profile("smoke"), benchmark="lm", seed=0)
    assert result_from_dict(json.loads(path.read_text())).valid == r.valid
    plain = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Naive(), SPEC, seed=0, progress=False)
    np.testing.assert_array_equal(plain.scores, r.scores)  # scoring valid changes nothing else
    assert plain.valid is None
    with pytest.raises(ValueError, match="valid=True"):
        plain.valid_acc
    joint = run_joint(make_tiny_model(tiny_tokenizer), tiny_benchmark, SPEC, seed=0, progress=False, valid=True)
    assert len(joint.valid) == len(tiny_benchmark.tasks)


def test_results_round_trip_and_schema(tiny_tokenizer, tiny_benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path))
    profile = get_profile("smoke")
    r = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Naive(), SPEC, seed=3, progress=False)
    path = save_results(r, profile=profile, benchmark="lm", seed=3)
    assert path == results_path("smoke", "lm", "naive", 3) and path.name == "lm__naive__seed3.json"
    data = json.loads(path.read_text())
    for key in ("profile", "benchmark", "method", "tasks", "R", "b", "metrics", "trainable_params",
                "train_seconds", "seed", "versions"):
        assert key in data
    assert data["seed"] == 3 and data["versions"]["torch"].startswith("2.13.0")
    np.testing.assert_allclose(result_from_dict(data).scores, r.scores)
    assert [d["seed"] for d in load_results("smoke", "lm", "naive")] == [3]
    assert same_profile(data, profile) and not same_profile(data, get_profile("smoke", {"finetune.steps": 3}))
    data["splits_version"] = 1  # a file scored on older splits is left out, with a warning
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="older splits"):
        assert load_results("smoke", "lm", "naive") == []
    assert load_result("smoke", "lm", "naive", 3) is None
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="lower-case"):
        results_path("smoke", "lm", "Naive EWC", 0)


def test_base_model_is_pretrained_once_then_loaded_from_cache(monkeypatch):
    profile = get_profile("smoke", {"pretrain.steps": 3, "finetune.steps": 2})
    first = load_base(profile, progress=False)
    import cl_utils.models as models

    def boom(*a, **k):
        raise AssertionError("pretraining ran again although the base model is cached")

    monkeypatch.setattr(models, "train_steps", boom)
    second = load_base(profile, progress=False)
    assert second.source == first.source and second.info == first.info
    assert first.info["steps"] == 3
    assert second.tokenizer.pad_token is None


def test_smoke_profile_same_seed_gives_identical_R():
    from cl_utils.experiment import setup

    exp = setup("smoke", seed=0, progress=False)
    first, second = exp.run(Naive()), exp.run(Naive())
    np.testing.assert_array_equal(first.scores, second.scores)
    assert first.R.shape == (3, 3)


def test_setup_rejects_unknown_benchmark():
    from cl_utils.experiment import setup

    with pytest.raises(ValueError, match=r"unknown benchmark 'vision'; valid: \['lm', 'classification'\]"):
        setup("smoke", seed=0, benchmark="vision")


@pytest.mark.parametrize("value, tag", [(300, "lam300"), (1e5, "lam100000"), (1e6, "lam1e6"), (3e-3, "lam0p003"),
                                        (2.5e-5, "lam2p5em5"), (-1.5, "lamm1p5")])
def test_sweep_tag_is_a_valid_file_name_for_any_value(value, tag):
    """The tuned classification λ 1e6 formats as '1e+06' with :g, which is not a valid results name."""
    assert sweep_tag("lam", value) == tag
    assert results_path("smoke", "lm", "ewc", 0, sweep=tag).name == f"lm__ewc__{tag}.json"


def test_sweep_points_are_filed_apart_and_load_result_finds_saved_runs(tiny_tokenizer, tiny_benchmark, tmp_path,
                                                                       monkeypatch):
    from cl_utils.results import load_result

    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path))
    profile = get_profile("smoke")
    r = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Naive(), SPEC, seed=0, progress=False)
    assert load_result("smoke", "lm", "naive", 0) is None
    sweep = save_results(r, profile=profile, benchmark="lm", seed=0, sweep="lam10")
    assert sweep.parent.name == "sweeps" and sweep.name == "lm__naive__lam10.json"
    assert load_results("smoke") == [] and len(load_results("smoke", sweeps=True)) == 1
    save_results(r, profile=profile, benchmark="lm", seed=0)
    np.testing.assert_array_equal(load_result("smoke", "lm", "naive", 0).scores, r.scores)


def test_the_last_tasks_end_of_task_work_is_counted_apart(tiny_tokenizer, tiny_benchmark, monkeypatch):
    """EWC's Fisher after the last task serves only a continuation of the stream: not in train_seconds.

    The runner's clock is replaced by one that only end_task moves (10 s per task, 100 s for the last), so the
    test does not depend on how fast this machine trains."""
    import types

    import cl_utils.stream as stream_module

    clock = [0.0]
    monkeypatch.setattr(stream_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    T = len(tiny_benchmark.tasks)

    class Slow(Naive):
        def end_task(self, model, task_id, task, benchmark):
            clock[0] += 100.0 if task_id == T - 1 else 10.0

    r = run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Slow(), SPEC, seed=0, progress=False)
    assert r.closing_seconds == 100.0
    assert 10.0 * (T - 1) <= r.train_seconds < 10.0 * (T - 1) + 50.0  # the training steps' own (real) seconds
    assert not r.task_identity and not r.task_heads
