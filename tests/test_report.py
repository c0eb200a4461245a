"""05_evaluation's comparison: grouping over seeds, mean ± std, missing results, score views and figures."""
import math

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from cl_utils.config import get_profile
from cl_utils.report import Comparison, format_table
from cl_utils.results import metrics_table, save_results
from cl_utils.scores import view
from cl_utils.stream import StreamResult

PROFILE = get_profile("smoke")
TASKS = ["a", "b"]


def _result(method, shift, benchmark="lm", joint=False):
    base = np.array([[-5.0, -6.0, -4.0], [-3.0, -5.5, -4.2], [-3.5, -3.0, -4.4]]) if benchmark == "lm" else \
        np.array([[0.25, 0.33, np.nan], [0.9, 0.4, np.nan], [0.7, 0.8, np.nan]])[:, :2]
    scores = base + shift
    if joint:
        scores[1] = np.nan
    extra = ["wiki"] if benchmark == "lm" else []
    return StreamResult(method, TASKS, extra, scores, 10.0 + shift, 100, 1000, benchmark=benchmark)


def _save(result, seed):
    save_results(result, profile=PROFILE, benchmark=result.benchmark, seed=seed)


def test_mean_and_std_over_seeds_and_missing_notebooks():
    for seed, shift in [(0, 0.0), (1, 0.1), (2, 0.2)]:
        _save(_result("naive", shift), seed)
    _save(_result("joint", 0.0, joint=True), 0)
    _save(_result("ewc", 0.05), 0)
    c = Comparison.load("smoke", "lm")
    assert list(c.groups) == ["joint", "naive", "ewc"]
    assert [r.hparams["seed"] for r in c.groups["naive"]] == [0, 1, 2]
    mean, std = c.stats()
    # naive ACC per seed: mean of the last row over the tasks = -3.25 + shift
    assert mean.loc["naive", "ACC"] == pytest.approx(-3.25 + 0.1)
    assert std.loc["naive", "ACC"] == pytest.approx(0.1)  # sample std of 0, 0.1, 0.2
    assert mean.loc["naive", "seeds"] == 3 and math.isnan(std.loc["ewc", "ACC"])
    assert mean.loc["naive", "BWT"] == pytest.approx(-0.5)
    assert math.isnan(mean.loc["joint", "BWT"]) and mean.loc["joint", "role"].startswith("multitask reference")
    assert mean.loc["naive", "final perplexity wiki"] == pytest.approx(np.mean(np.exp([4.4, 4.3, 4.2])))
    table = format_table(mean, std)
    assert table.loc["naive", "ACC"] == "-3.150 ± 0.100" and table.loc["ewc", "ACC"] == "-3.200"
    assert table.loc["joint", "BWT"] == "–"
    assert c.missing == {"02_ewc": ["online_ewc", "si", "mas"], "03_progressive_prompts": ["progressive_prompts"],
                         "04_lora": ["lora_sequential", "lora_per_task", "olora", "olora_no_penalty"],
                         "06_replay_and_distillation": ["er", "agem", "lwf"]}
    text = c.missing_text()
    assert "lora_sequential" in text and "03_progressive_prompts" in text and "BENCHMARK='lm'" in text
    for fig in (c.heatmaps(seed=1), c.trajectories(), c.transfer()):
        assert len(fig.axes) >= 1
    assert [r.hparams["seed"] for r in c.runs_of_seed(1)] == [0, 1, 0]


def test_classification_reads_as_accuracy_and_empty_benchmark_reports_everything_missing():
    _save(_result("naive", 0.0, benchmark="classification"), 0)
    c = Comparison.load("smoke", "classification")
    table = metrics_table(c.groups["naive"])
    assert table.loc["naive", "final accuracy % a"] == pytest.approx(70.0)
    assert view("classification").limits([c.groups["naive"][0].scores]) == pytest.approx((25.0, 90.0))
    empty = Comparison.load("profile_without_runs", "lm")
    assert empty.empty and set(empty.missing) == {"01_baseline_forgetting", "02_ewc", "03_progressive_prompts",
                                                  "04_lora", "06_replay_and_distillation"}
    with pytest.raises(ValueError, match="known"):
        Comparison.load("smoke", "vision")


def test_heatmaps_wrap_into_rows_share_one_scale_and_one_colour_bar():
    from cl_utils.plotting import plot_matrices

    runs = [_result(f"m{k}", 0.1 * k) for k in range(6)]
    fig = plot_matrices(runs, ncols=4)
    heatmaps = [ax for ax in fig.axes if ax.collections and ax.get_title()]
    assert [ax.get_title() for ax in heatmaps] == [f"m{k}" for k in range(6)]
    assert len({ax.get_subplotspec().rowspan.start for ax in heatmaps}) == 2  # 4 + 2
    assert len({(ax.collections[0].norm.vmin, ax.collections[0].norm.vmax) for ax in heatmaps}) == 1
    bars = [ax for ax in fig.axes if ax not in heatmaps and ax.get_visible() and ax.get_ylabel()]
    assert len(bars) == 1 and bars[0].get_ylabel() == "perplexity (log scale)"
    with pytest.raises(ValueError, match="ncols must be >= 1, got 0"):
        plot_matrices(runs, ncols=0)


def test_plasticity_table_reads_the_diagonal_per_method():
    from cl_utils.results import plasticity_table

    table = plasticity_table([_result("naive", 0.0), _result("ewc", 0.5)])
    assert list(table.columns) == ["naive", "ewc"] and list(table.index) == TASKS
    assert table.loc["a", "naive"] == pytest.approx(np.exp(3.0)) and table.loc["b", "ewc"] == pytest.approx(np.exp(2.5))


def test_regression_summary_names_methods_and_defined_metrics_but_no_numbers(tmp_path, monkeypatch):
    """The nbval check compares this text exactly on every CPU, so it holds no score, only what was compared."""
    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path / "runs"))
    _save(_result("joint", 0.0, joint=True), 0)
    for seed, shift in [(0, 0.0), (1, 0.1234567)]:
        _save(_result("naive", shift), seed)
    text = Comparison.load("smoke", "lm").regression_summary()
    assert text.splitlines() == ["lm:", "  joint: 1 seed(s); metrics ACC",
                                 "  naive: 2 seed(s); metrics ACC, BWT, FWT, forgetting"]
    _save(_result("naive", 0.1234568), 1)  # a last-bit change of one score: the same text
    assert Comparison.load("smoke", "lm").regression_summary() == text


def test_methods_told_the_task_are_listed_apart_and_heads_make_fwt_undefined(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path / "runs"))
    told = _result("progressive_prompts", 0.2)
    told.task_identity = True
    for r in (told, _result("ewc", 0.1), _result("naive", 0.0), _result("joint", 0.0, joint=True)):
        _save(r, 0)
    c = Comparison.load("smoke", "lm")
    assert list(c.groups) == ["joint", "naive", "ewc", "progressive_prompts"]  # references, not told, told
    metrics = next(iter(c.tables().values()))
    assert list(metrics["task id"]) == ["not given", "not given", "not given", "given"]
    # one head per task: every method is told the task, and FWT (a random head before its task) is undefined
    heads = _result("naive", 0.0, benchmark="classification")
    heads.task_heads = heads.task_identity = True
    assert heads.metrics()["FWT"] is None and heads.metrics()["BWT"] == pytest.approx(0.7 - 0.9)
    _save(heads, 0)
    c = Comparison.load("smoke", "classification")
    caption, table = next(iter(c.tables().items()))
    assert "FWT is undefined" in caption and table.loc["naive (baseline)", "FWT"] == "–"
    fig = c.transfer()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["BWT"]


def test_paired_comparison_calls_a_difference_only_where_every_seed_agrees(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path))
    noise = {0: 0.05, 1: -0.04, 2: 0.01}
    for seed, shift in [(0, 0.0), (1, 0.1), (2, 0.2)]:
        _save(_result("naive", shift), seed)
        _save(_result("steady", shift + 0.05), seed)  # +0.05 ACC on every seed
        _save(_result("noisy", shift + noise[seed]), seed)  # +0.007 on average, signs disagree
    _save(_result("single", 0.3), 0)
    paired = Comparison.load("smoke", "lm").paired()
    assert paired.loc["steady", "ΔACC"] == pytest.approx(0.05) and paired.loc["steady", "ACC verdict"] == "better"
    assert paired.loc["noisy", "ACC verdict"] == "within noise" and paired.loc["noisy", "seeds"] == 3
    assert paired.loc["single", "ACC verdict"] == "one seed" and paired.loc["single", "seeds"] == 1
    assert paired.loc["steady", "BWT verdict"] == "same"  # a uniform shift leaves BWT as naive's
    findings = Comparison.load("smoke", "lm").findings()
    assert "steady against naive, paired over 3 seed(s): ACC +0.050 (better)" in findings
    with pytest.raises(ValueError, match="no 'joint' results"):
        Comparison.load("smoke", "lm").paired("joint")
