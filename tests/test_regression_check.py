"""The regression check of the golden run: structure compared exactly, numbers with a tolerance."""
import json

import numpy as np

from cl_utils.results import summary_text
from cl_utils.stream import StreamResult
from tests.golden.results_check import ATOL, GOLDEN_RESULTS, compare_folders, deviations, result_files


def _data(R, **changes):
    data = {"profile": "smoke", "benchmark": "lm", "method": "naive", "seed": 0, "tasks": ["a", "b"],
            "extra_columns": ["wiki"], "R": R, "b": [-6.0, -6.1], "extra_scores": {"wiki": [-5.0, -5.2, -5.3]},
            "metrics": {"ACC": -5.6, "BWT": -0.4}, "losses": [[6.0, 5.5], [6.1, 5.6]],
            "hparams": {"lam": 300.0}, "train_seconds": 1.0, "versions": {"torch": "2.13.0"}}
    return {**data, **changes}


def _write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def test_last_bit_differences_pass_and_real_changes_fail(tmp_path):
    golden, run = tmp_path / "golden", tmp_path / "run"
    _write(golden, "lm__naive.json", _data([[-5.5, -6.2], [-5.9, -5.4]]))
    _write(run, "lm__naive.json", _data([[-5.5 + ATOL / 10, -6.2], [-5.9, -5.4 - ATOL / 10]]))
    assert compare_folders(golden, run, ATOL) == []
    _write(run, "lm__naive.json", _data([[-5.5, -6.2], [-5.9 + 3 * ATOL, -5.4]], train_seconds=99.0))
    problems = compare_folders(golden, run, ATOL)
    assert len(problems) >= 1 and all("R[1][0]" in p or "metrics" in p for p in problems)


def test_structure_is_compared_exactly(tmp_path):
    golden, run = tmp_path / "golden", tmp_path / "run"
    _write(golden, "lm__naive.json", _data([[-5.5, -6.2], [-5.9, -5.4]]))
    _write(run, "lm__naive.json", _data([[-5.5, -6.2], [-5.9, -5.4]], hparams={"lam": 3000.0}))
    _write(run, "lm__ewc.json", _data([[-5.5, -6.2], [-5.9, -5.4]]))
    problems = compare_folders(golden, run, ATOL)
    assert any(p.startswith("lm__naive.json: hparams") for p in problems)
    assert any(p.startswith("lm__ewc.json: not in the golden copy") for p in problems)
    structural, _ = deviations(_data([[None, None], [-5.9, -5.4]]), _data([[-5.5, None], [-5.9, -5.4]]))
    assert structural == ["R[0][0]: None != -5.5"]
    structural, _ = deviations(_data([[-5.5, -6.2], [-5.9, -5.4]]), _data([[-5.5, -6.2]]))
    assert structural == ["R: length 2 != 1"]


def test_summary_text_is_the_same_for_nearly_equal_results_and_shows_what_was_scored():
    scores = np.array([[-6.0, -6.1, -5.0], [-5.5, -6.2, -5.2], [-5.9, -5.4, -5.3]])
    a = StreamResult("naive", ["a", "b"], ["wiki"], scores, 1.0, 10, 10)
    b = StreamResult("naive", ["a", "b"], ["wiki"], scores + 4e-4, 2.0, 10, 10)
    assert summary_text([a]) == summary_text([b])
    joint = scores.copy()
    joint[1] = np.nan
    text = summary_text([StreamResult("joint", ["a", "b"], ["wiki"], joint, 1.0, 10, 10)])
    assert "R 2x2 [.. xx]" in text and "metrics ACC" in text and "BWT" not in text


def test_golden_results_exist_for_every_method_notebook():
    names = set(result_files(GOLDEN_RESULTS))
    for method in ("naive", "joint", "ewc", "online_ewc", "progressive_prompts", "lora_sequential", "lora_per_task",
                   "olora"):
        assert f"lm__{method}.json" in names
    assert any(n.startswith("sweeps/lm__ewc__lam") for n in names)
