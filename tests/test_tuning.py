"""`make tune`'s sweeps (cl_utils/tuning.py): choose on valid, record every point, resume, flag a winner at the edge."""
import json

import pytest

import cl_utils.experiment as experiment
import cl_utils.tuning as tuning
from cl_utils.methods import LwF, Naive
from cl_utils.tuning import Sweep, run_sweep

from .classification_data import small_benchmark


@pytest.fixture
def exp(monkeypatch):
    monkeypatch.setattr(experiment, "classification_benchmark", lambda *a: small_benchmark())
    return experiment.setup("smoke", seed=0, benchmark="classification", progress=False)


def test_a_sweep_chooses_on_valid_records_every_point_and_resumes(exp, monkeypatch):
    calls = []
    real_run = exp.run

    def run(method, **kw):
        calls.append(kw)
        return real_run(method, **kw)

    monkeypatch.setattr(exp, "run", run)
    sweep = Sweep("head_lr", Naive, (1e-12, 1e-2), arg="head_lr")
    out = run_sweep(exp, sweep)
    assert [c["head_lr"] for c in calls] == [1e-12, 1e-2] and all(c["valid"] for c in calls)
    assert set(out["valid_acc"]) == {1e-12, 1e-2} and out["best"] == max(out["valid_acc"], key=out["valid_acc"].get)
    assert out["at_edge"]  # two points: the winner is always at an edge
    saved = json.loads(tuning._path(exp, "head_lr").read_text())
    assert saved["split"] == "valid" and saved["best"] == out["best"]
    calls.clear()
    wider = Sweep("head_lr", Naive, (1e-12, 1e-3, 1e-2), arg="head_lr")
    again = run_sweep(exp, wider)  # the two points on disk are not run again
    assert [c["head_lr"] for c in calls] == [1e-3]
    assert again["valid_acc"][1e-2] == out["valid_acc"][1e-2]


def test_a_method_hyperparameter_sweep_builds_the_method_at_each_point(exp, monkeypatch):
    built, calls = [], []
    real_run = exp.run
    monkeypatch.setattr(exp, "run", lambda method, **kw: calls.append(kw) or real_run(method, **kw))
    sweep = Sweep("lwf_alpha", lambda alpha: built.append(alpha) or LwF(alpha), (0.0, 5.0), arg="method")
    out = run_sweep(exp, sweep)
    assert built == [0.0, 5.0] and calls == [{"valid": True}, {"valid": True}] and set(out["valid_acc"]) == {0.0, 5.0}


def test_every_sweep_names_a_known_key_and_unknown_keys_are_refused():
    keys = {s.key for sweeps in tuning.SWEEPS.values() for s in sweeps}
    assert keys == {"prompt_lr", "lora_lr", "head_lr", "finetune_lr", "si_lambda", "mas_lambda", "lwf_alpha"}
    with pytest.raises(SystemExit, match="unknown --key"):
        tuning.main(["--benchmark", "lm", "--key", "nope"])


def test_the_lr_ablation_runs_every_pair_and_resumes(exp, monkeypatch):
    calls = []
    real_run = exp.run
    monkeypatch.setattr(tuning, "setup", lambda *a, **k: exp)
    monkeypatch.setattr(exp, "run", lambda method, **kw: calls.append(kw) or real_run(method, **kw))
    pairs = ((1e-3, 1e-2), (1e-3, 1e-3))
    rows = tuning.lr_ablation("smoke", seeds=(0,), pairs=pairs)
    assert [(c["lr"], c["head_lr"]) for c in calls] == list(pairs)
    assert [(r["encoder_lr"], r["head_lr"]) for r in rows] == list(pairs) and all(len(r["R"]) == 2 for r in rows)
    calls.clear()
    assert tuning.lr_ablation("smoke", seeds=(0,), pairs=pairs) == rows and not calls  # resumed from disk
