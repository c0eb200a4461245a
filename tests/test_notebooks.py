"""Every notebook, executed with papermill on the smoke profile, exactly as `make reproduce` runs it."""
import json
import time
from pathlib import Path

import papermill as pm
import pytest

from cl_utils.paths import figures_dir, results_dir

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# What each notebook must leave behind on the smoke profile: results files and figures.
EXPECTED = {
    "01_baseline_forgetting": (["lm__naive.json", "lm__joint.json"], ["lm__naive.png"]),
    "02_ewc": (["lm__ewc.json", "lm__online_ewc.json"], ["lm__ewc.png", "lm__ewc_lambda_sweep.png"]),
    "03_progressive_prompts": (["lm__progressive_prompts.json"], ["lm__progressive_prompts.png"]),
    "04_lora": (["lm__lora_sequential.json", "lm__lora_per_task.json", "lm__olora.json"], ["lm__lora.png"]),
}


def test_every_notebook_is_covered():
    assert NOTEBOOKS, "no notebooks found"
    assert {nb.stem for nb in NOTEBOOKS} <= set(EXPECTED)


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_smoke(nb, tmp_path):
    start = time.perf_counter()
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"PROFILE": "smoke", "SEED": 0},
                        cwd=str(nb.parent), kernel_name="python3", progress_bar=False)
    elapsed = time.perf_counter() - start
    results, figures = EXPECTED[nb.stem]
    for name in results:
        data = json.loads((results_dir("smoke") / name).read_text())
        T = len(data["tasks"])
        assert data["profile"] == "smoke" and data["seed"] == 0 and T == 3
        assert len(data["R"]) == T and all(len(row) == T for row in data["R"])
        assert data["R"][-1][0] is not None and len(data["b"]) == T
    for name in figures:
        assert (figures_dir("smoke") / name).stat().st_size > 10_000
    # The smoke budget is under 60 s on 2 cores; twice that catches a budget that drifted, not noise.
    assert elapsed < 120, f"{nb.stem} took {elapsed:.0f} s on the smoke profile"
