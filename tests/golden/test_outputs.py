"""Runs after the golden notebooks in the nbval session (files are collected in name order): what they left behind,
and their numbers against the golden run's, with the tolerance that tests/golden/results_check.py explains."""
from cl_utils.paths import figures_dir, results_dir

from tests.golden.results_check import GOLDEN_RESULTS, compare_folders
from tests.test_notebooks import COMPARISON_FIGURES, EXPECTED, check_outputs


def test_lm_notebooks_left_their_results_and_figures():
    for notebook in EXPECTED:
        check_outputs(notebook, "lm")
    for name in COMPARISON_FIGURES:
        assert (figures_dir("smoke") / f"lm__{name}.png").stat().st_size > 10_000


def test_results_match_the_golden_run_within_tolerance():
    problems = compare_folders(GOLDEN_RESULTS, results_dir("smoke"))
    assert not problems, "the golden run's results changed:\n" + "\n".join(problems[:40])
