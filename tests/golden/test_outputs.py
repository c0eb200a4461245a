"""Runs after the golden notebooks in the nbval session (files are collected in name order): what they left behind."""
from cl_utils.paths import figures_dir

from tests.test_notebooks import COMPARISON_FIGURES, EXPECTED, check_outputs


def test_lm_notebooks_left_their_results_and_figures():
    for notebook in EXPECTED:
        check_outputs(notebook, "lm")
    for name in COMPARISON_FIGURES:
        assert (figures_dir("smoke") / f"lm__{name}.png").stat().st_size > 10_000
