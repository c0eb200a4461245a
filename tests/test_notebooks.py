"""Notebooks executed with papermill on the smoke profile, exactly as `make reproduce` runs them.

The `lm` benchmark of every notebook runs in the nbval regression check (tests/golden, second step of
`make test`), which also checks what those runs leave behind. Here: the `classification` benchmark of 01-04 and 06,
then 05_evaluation, which must show classification and say that the lm results are missing, then
07_attention_and_context, which has no benchmark (it measures attention and extends a RoPE twin's context).
"""
import json
import math
import time
from pathlib import Path

import papermill as pm
import pytest

from cl_utils.paths import figures_dir, results_dir
from cl_utils.report import ONLY_FOR

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# What each method notebook must leave behind: results files and figures (benchmark name prefixed).
EXPECTED = {
    "01_baseline_forgetting": (["naive", "joint", "linear_probe"], ["naive"]),
    "02_ewc": (["ewc", "online_ewc", "si", "mas"], ["ewc", "ewc_lambda_sweep", "importance_estimates"]),
    "03_progressive_prompts": (["progressive_prompts"], ["progressive_prompts"]),
    "04_lora": (["lora_sequential", "lora_per_task", "olora", "olora_no_penalty"], ["lora"]),
    "06_replay_and_distillation": (["er", "agem", "lwf"], ["er_memory_sweep", "replay_and_distillation"]),
}
COMPARISON_FIGURES = ["comparison_matrices", "comparison_trajectories", "comparison_transfer"]
ONCE = ["05_evaluation", "07_attention_and_context"]  # notebooks run once per profile, not per benchmark and seed


def check_outputs(notebook: str, benchmark: str, profile: str = "smoke", n_tasks: int = 3) -> None:
    """The results files and figures ``notebook`` must have written for ``benchmark`` (shared with tests/golden)."""
    methods, figures = EXPECTED[notebook]
    for method in [m for m in methods if benchmark in ONLY_FOR.get(m, (benchmark,))]:
        data = json.loads((results_dir(profile) / f"{benchmark}__{method}.json").read_text())
        T = len(data["tasks"])
        assert data["profile"] == profile and data["seed"] == 0 and data["benchmark"] == benchmark and T == n_tasks
        assert len(data["R"]) == T and all(len(row) == T for row in data["R"])
        assert data["R"][-1][0] is not None and len(data["b"]) == T
    for name in figures:
        assert (figures_dir(profile) / f"{benchmark}__{name}.png").stat().st_size > 10_000


def execute(nb: Path, out: Path, **parameters) -> float:
    start = time.perf_counter()
    pm.execute_notebook(str(nb), str(out), parameters={"PROFILE": "smoke", "SEED": 0, **parameters},
                        cwd=str(nb.parent), kernel_name="python3", progress_bar=False)
    return time.perf_counter() - start


def test_every_notebook_is_covered():
    assert NOTEBOOKS, "no notebooks found"
    assert {nb.stem for nb in NOTEBOOKS} == {*EXPECTED, *ONCE}


@pytest.mark.notebook
@pytest.mark.parametrize("nb", [nb for nb in NOTEBOOKS if nb.stem in EXPECTED], ids=lambda p: p.stem)
def test_method_notebook_runs_classification_on_smoke(nb, tmp_path):
    elapsed = execute(nb, tmp_path / nb.name, BENCHMARK="classification")
    check_outputs(nb.stem, "classification", n_tasks=2)
    # The smoke budget is under 60 s on 2 cores; twice that catches a budget that drifted, not noise.
    assert elapsed < 120, f"{nb.stem} took {elapsed:.0f} s on the smoke profile"


@pytest.mark.notebook
def test_evaluation_notebook_compares_what_exists(tmp_path):
    """Runs after the classification notebooks above (same runs folder): shows them, names the missing lm ones."""
    nb = ROOT / "notebooks" / "05_evaluation.ipynb"
    execute(nb, tmp_path / nb.name)
    cells = json.loads((tmp_path / nb.name).read_text())["cells"]
    printed = lambda call: "".join("".join(o.get("text", "")) for c in cells  # noqa: E731
                                   if call in "".join(c["source"]) for o in c.get("outputs", []))
    assert printed("coverage_text(").splitlines() == [  # lm has no results at all: one line, with the command
        "classification: comparing 15 methods (the table lists them), seed 0.",
        "No results yet for lm: run notebooks 01–04 and 06 with PROFILE='smoke' and BENCHMARK='lm', "
        "or `make reproduce PROFILE=smoke BENCHMARKS=lm`."]
    note = [o for c in cells if "takeaways_note(" in "".join(c["source"]) for o in c.get("outputs", [])]
    assert len(note) == 1 and "this notebook ran on `smoke`" in "".join(note[0]["data"]["text/markdown"])
    for name in COMPARISON_FIGURES:
        assert (figures_dir("smoke") / f"classification__{name}.png").stat().st_size > 10_000
        assert not (figures_dir("smoke") / f"lm__{name}.png").exists()


@pytest.mark.notebook
def test_attention_and_context_notebook_on_smoke(tmp_path):
    """07 on smoke: both results files with the keys the issue names and values that can fail, and its figures."""
    nb = ROOT / "notebooks" / "07_attention_and_context.ipynb"
    elapsed = execute(nb, tmp_path / nb.name)
    scaling = json.loads((results_dir("smoke") / "attention_scaling.json").read_text())
    n = len(scaling["lengths"])
    assert scaling["lengths"] == [32, 64, 128, 256]
    for name in ("eager", "sdpa", "sdpa_math", "sdpa_flash"):
        assert len(scaling[name]["seconds"]) == n and len(scaling[name]["peak_memory"]) == n
        assert scaling[name]["seconds"][0] > 0 and set(scaling["exponents"][name]) >= {"seconds", "peak_memory"}
    # eager holds heads x n x n float scores at the longest length; the fused kernel does not
    assert scaling["eager"]["peak_memory"][-1] >= 2 * 256 ** 2 * 4 > scaling["sdpa_flash"]["peak_memory"][-1]
    assert scaling["exponents"]["eager"]["peak_memory"] > 1.5 > scaling["exponents"]["sdpa_flash"]["peak_memory"]
    assert scaling["kernels"]["sdpa_math"] == ["math"] and scaling["kernels"]["sdpa_flash"] == ["flash (CPU)"]
    assert scaling["crossover"]["analytic (FLOPs)"] == pytest.approx(6 * 32)
    context = json.loads((results_dir("smoke") / "context_extension.json").read_text())
    L = context["train_context"]
    assert L == 32 and context["lengths"] == [32, 64, 128, 256] and context["heldout_split"] == "test"
    assert set(context["ppl"]) == {"none", "linear", "dynamic", "yarn", "ntk_trained"}
    assert set(context["finetuned"]) == {"linear", "yarn"}
    for values in (*context["ppl"].values(), *context["finetuned"].values(), context["control"]):
        assert len(values) == len(context["lengths"]) and all(1 < v < 2 * 512 for v in values)  # vocabulary 512
    assert context["ppl"]["dynamic"][0] == pytest.approx(context["ppl"]["none"][0], rel=1e-6)  # no scaling up to L
    for name in ("linear", "yarn"):
        assert context["short_context"][name] == {"before": context["ppl"][name][0],
                                                  "after": context["finetuned"][name][0]}
        R = context["R"][f"extend_{name}"]["R"]
        assert len(R) == 2 and all(len(row) == 2 and all(math.isfinite(x) for x in row) for row in R)
        assert R[1][0] == pytest.approx(-math.log(context["finetuned"][name][0]))
    for name in ("attention__layer_scaling", "attention__model_scaling", "attention__crossover", "context__perplexity",
                 "context__position_nll", "context__extension_matrices"):
        assert (figures_dir("smoke") / f"{name}.png").stat().st_size > 10_000
    assert elapsed < 120, f"07 took {elapsed:.0f} s on the smoke profile"


def test_golden_copies_match_the_notebooks():
    """nbval runs tests/golden/*.ipynb, not notebooks/: code edited without `make golden` would go unchecked
    (markdown may differ: it is not executed)."""
    golden = ROOT / "tests" / "golden"
    for nb in NOTEBOOKS:
        copy = golden / nb.name
        assert copy.exists(), f"tests/golden/{nb.name} is missing: run `make golden`"
        cells = lambda path: ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]  # noqa: E731
                              if c["cell_type"] == "code"
                              and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
        assert cells(copy) == cells(nb), f"tests/golden/{nb.name} is stale: run `make golden` and review the diff"


def test_each_notebook_has_exactly_one_regression_cell():
    """nbval only recognises the marker as a whole comment line (`# NBVAL_CHECK_OUTPUT`, nothing after it)."""
    for nb in NOTEBOOKS:
        marked = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"
                  and any(line.strip() == "# NBVAL_CHECK_OUTPUT" for line in "".join(c["source"]).splitlines())]
        assert len(marked) == 1, f"{nb.name}: {len(marked)} cells marked for the regression check"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_lists_every_parameter(nb):
    """`papermill --help-notebook` silently skips a parameter whose annotation it cannot parse (e.g. `int | None`)."""
    import re

    cells = json.loads(nb.read_text())["cells"]
    source = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
    declared = re.findall(r"^([A-Z][A-Z0-9_]*)\s*:", source, re.M)
    assert declared and list(pm.inspect_notebook(str(nb))) == declared
