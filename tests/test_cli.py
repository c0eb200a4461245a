"""python -m cl_utils run: bad input stops before any work with one line; a run writes the notebooks' results file."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from cl_utils.cli import BadInput, build_parser, main, parse_sets, plan
from cl_utils.experiment import setup
from cl_utils.methods import EWC


def test_help_lists_profiles_benchmarks_methods_and_their_parameters():
    text = build_parser().format_help()
    for word in ("embedded", "smoke", "smollm2", "gpt2", "classification", "online_ewc", "lam=required",
                 "memory=0.05", "joint", "finetune.steps"):
        assert word in text, word


def test_sets_are_literals_and_strings():
    assert parse_sets(["lam=3e3", "mode=online", "finetune.steps=4", "x=[1, 2]"]) == {
        "lam": 3000.0, "mode": "online", "finetune.steps": 4, "x": [1, 2]}
    for bad, match in ((["lam"], "expected key=value"), (["=3"], "expected key=value"),
                       (["lam=1", "lam=2"], "given twice")):
        with pytest.raises(BadInput, match=match):
            parse_sets(bad)


@pytest.mark.parametrize("argv, says", [
    (["--profile", "nope", "--benchmark", "lm", "--method", "naive"], "unknown profile 'nope'; valid: embedded"),
    (["--profile", "smoke", "--benchmark", "vision", "--method", "naive"], "valid: lm, classification"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "ewk"], "unknown method 'ewk'; valid: agem"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "ewc"], "missing parameter(s) ['lam']"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "ewc", "--set", "lam=-1"], "lam"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "er", "--set", "memory=2"], "in (0, 1]"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "er", "--set", "memroy=0.1"],
     "'memroy' is not a parameter of 'er'"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "naive", "--set", "finetune.stepz=3"], "stepz"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "naive", "--set", "steps=0"], "steps"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "linear_probe"], "--benchmark classification"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "joint", "--set", "lr=1"], "dotted override"),
    (["--profile", "smoke", "--benchmark", "lm", "--method", "naive", "--seed", "-1"], "--seed"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, says, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", *argv, "--results-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and says in captured.err, captured.err
    assert not out.exists()


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--profile", "smoke"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--benchmark" in err


def test_plan_fills_the_notebooks_values():
    p = plan("smoke", "lm", "si", 3, {})
    assert p.method_kwargs == {"lam": 1e3} and p.seed == 3  # cl_utils.tuned's si_lambda for lm
    p = plan("smoke", "classification", "er", 2, {"memory": 0.2, "finetune.steps": 3})
    assert p.method_kwargs == {"memory": 0.2, "seed": 2} and p.profile_overrides == {"finetune.steps": 3}
    assert plan("smoke", "lm", "progressive_prompts", 0, {}).train_overrides == {"lr": 0.1}
    assert plan("smoke", "lm", "lora_sequential", 0, {"lr": 1e-2}).train_overrides == {"lr": 1e-2}
    # EWC's Fisher size as 02 sets it: SmolLM2's 32 examples, not the class default of 256
    assert plan("smollm2", "lm", "ewc", 0, {"lam": 157.5}).method_kwargs == {"lam": 157.5, "fisher_examples": 32}
    assert plan("smoke", "lm", "online_ewc", 0, {"lam": 1.0}).method_kwargs["fisher_examples"] == 256
    assert plan("smollm2", "lm", "mas", 0, {}).method_kwargs["examples"] == 32  # 02 gives MAS the same rows


def test_a_run_writes_the_results_file_the_notebooks_would(tmp_path):
    """The command in a subprocess (the entry point, stdout, stderr) against the same stream run in-process."""
    out = tmp_path / "results"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cl_utils", "run", "--profile", "smoke", "--benchmark", "lm",
                           "--method", "ewc", "--seed", "1", "--set", "lam=10", "--set", "fisher_examples=8",
                           "--results-dir", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    path = out / "lm__ewc__seed1.json"
    assert done.stdout.strip() == str(path) and "task 3/3" in done.stderr  # progress on stderr
    data = json.loads(path.read_text())
    exp = setup("smoke", seed=1, progress=False)
    here = exp.run(EWC(10.0, fisher_examples=8))
    assert np.array_equal(np.array(data["R"]), here.R) and data["hparams"]["lam"] == 10.0
    assert time.perf_counter() - start < 600
