"""What a user sees in a notebook (issue 12): progress bars (widgets or text, as CL_PROGRESS says) labelled with each
method's hyper-parameters, printed paths, a reloaded model without the loss_type warning, figures and tables that fit
the notebook's width, one line for the benchmarks without results, and the note above the takeaways."""
import dataclasses

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from cl_utils import display
from cl_utils.config import TrainSpec, get_profile
from cl_utils.display import progress_bar, progress_mode, takeaways_note
from cl_utils.methods.ewc import EWC
from cl_utils.methods.lora import OLoRA, SequentialLoRA
from cl_utils.methods import Method, Naive, short_number
from cl_utils.paths import project_root, shown_path
from cl_utils.methods.prompts import ProgressivePrompts
from cl_utils.report import Comparison, coverage_text
from cl_utils.results import save_results
from cl_utils.stream import StreamResult

from .conftest import make_tiny_model

# Its own profile name: results saved here must not show up in the smoke runs of tests/test_notebooks.py.
PROFILE = dataclasses.replace(get_profile("smoke"), name="display_test")


# -- progress bars ---------------------------------------------------------------------------------------------------
def test_progress_mode_reads_cl_progress(monkeypatch):
    monkeypatch.delenv("CL_PROGRESS", raising=False)
    assert progress_mode() == "auto"
    monkeypatch.setenv("CL_PROGRESS", " Text ")
    assert progress_mode() == "text"
    monkeypatch.setenv("CL_PROGRESS", "widgets")
    with pytest.raises(ValueError, match="CL_PROGRESS='widgets'.*valid: auto, text, off"):
        progress_mode()


def test_outside_a_kernel_bars_are_text_on_stderr_and_off_hides_them(monkeypatch, capsys):
    monkeypatch.setenv("CL_PROGRESS", "auto")
    bar = progress_bar(range(3), desc="ewc λ=300 · task 1/3")
    assert type(bar).__module__ == "tqdm.std" and list(bar) == [0, 1, 2]
    assert bar.mininterval == display.TEXT_REFRESH_S and bar.ncols == 100
    assert "ewc λ=300 · task 1/3" in capsys.readouterr().err
    monkeypatch.setenv("CL_PROGRESS", "off")
    assert list(progress_bar(range(3), desc="quiet")) == [0, 1, 2]
    assert list(progress_bar(range(2), desc="disabled", enabled=False)) == [0, 1]
    assert capsys.readouterr().err == ""


def test_in_a_kernel_auto_gives_widgets_and_text_mode_gives_text(monkeypatch, capsys):
    from tqdm import auto

    made = []

    class Widget:  # stands in for tqdm.notebook's bar, which needs a running kernel
        def __init__(self, iterable, **kwargs):
            made.append(kwargs)

    monkeypatch.setattr(auto, "notebook_tqdm", Widget)  # what tqdm.auto picks in a kernel with ipywidgets
    monkeypatch.setattr(auto, "tqdm", Widget)
    monkeypatch.setenv("CL_PROGRESS", "auto")
    assert isinstance(progress_bar(range(3), desc="naive · task 1/3"), Widget)
    assert made == [{"desc": "naive · task 1/3", "total": None, "mininterval": display.WIDGET_REFRESH_S}]  # no ncols
    monkeypatch.setenv("CL_PROGRESS", "text")  # what `make` sets for papermill: its log cannot show a widget
    bar = progress_bar(range(3), desc="naive · task 1/3")
    assert type(bar).__module__ == "tqdm.std" and len(made) == 1
    list(bar)
    assert "naive · task 1/3" in capsys.readouterr().err


# -- labels of the bars --------------------------------------------------------------------------------------------
def test_method_labels_show_their_hyper_parameters():
    assert Naive().label == "naive"
    assert EWC(300.0).label == "ewc λ=300" and EWC(3000.0).label == "ewc λ=3000"
    assert EWC(1e5, mode="online", gamma=0.9).label == "online_ewc λ=1e5 γ=0.9"
    assert ProgressivePrompts(10).label == "progressive_prompts P=10"
    assert SequentialLoRA(r=4).label == "lora_sequential r=4"
    assert OLoRA(lambda_orth=0.5).label == "olora r=8 λ₁=0.5"
    assert [short_number(x) for x in (300.0, 1e6, 2.5e-5, 0.03, 12, True)] == ["300", "1e6", "2.5e-5", "0.03", "12",
                                                                                "True"]


def test_stream_bars_are_labelled_with_the_method_label(tiny_tokenizer, tiny_benchmark, monkeypatch):
    """Any method, not only EWC: a new one declares ``label_hparams`` and its sweep bars tell the points apart."""
    import cl_utils.stream as stream

    class Scaled(Method):
        name = "scaled"
        label_hparams = {"alpha": "α"}

        def __init__(self, alpha):
            self.alpha = alpha

        def describe(self):
            return {"alpha": self.alpha}

    descs = []
    real = stream.train_steps
    monkeypatch.setattr(stream, "train_steps", lambda *a, desc, **k: descs.append(desc) or real(*a, desc=desc, **k))
    spec = TrainSpec(steps=2, batch_size=4, lr=1e-3, warmup_steps=1)
    for alpha in (0.5, 2.0):
        stream.run_stream(make_tiny_model(tiny_tokenizer), tiny_benchmark, Scaled(alpha), spec, seed=0, progress=False)
    assert descs == ["scaled α=0.5 · task 1/2 (animals)", "scaled α=0.5 · task 2/2 (numbers)",
                     "scaled α=2 · task 1/2 (animals)", "scaled α=2 · task 2/2 (numbers)"]


# -- what 02 prints and reloads ------------------------------------------------------------------------------------
def test_shown_path_is_relative_inside_the_project_and_absolute_outside(tmp_path):
    inside = project_root() / "runs" / "smoke" / "models" / "lm__online_ewc"
    assert shown_path(inside) == "runs/smoke/models/lm__online_ewc"
    assert shown_path(tmp_path / "models") == str((tmp_path / "models").resolve())


def test_reloaded_language_model_names_its_loss(tiny_tokenizer, tmp_path):
    """transformers 5 warns "`loss_type=None` was set in the config" at the first loss of a GPT-2 loaded without one
    (it derives loss_type from the class name, not from config.json); load_trained names it as the base model does."""
    from transformers.loss.loss_utils import LOSS_MAPPING

    from cl_utils.saving import load_trained, save_trained

    folder = save_trained(tmp_path / "m", make_tiny_model(tiny_tokenizer), tiny_tokenizer)
    model, _, ewc = load_trained(folder, "cpu")
    assert model.loss_type in LOSS_MAPPING and ewc is None


# -- widths --------------------------------------------------------------------------------------------------------
METHODS = ["joint", "naive", "ewc", "online_ewc", "progressive_prompts", "lora_sequential", "lora_per_task", "olora"]


def _lm_result(method, shift=0.0):
    scores = np.array([[-5.7, -5.8, -5.8, -5.7], [-5.5, -5.7, -5.7, -5.5], [-5.4, -5.5, -5.6, -5.5],
                       [-5.4, -5.5, -5.5, -5.4]]) + shift
    return StreamResult(method, ["news", "social", "technical"], ["wikipedia"], scores, 10.0, 31200, 31200)


@pytest.mark.parametrize("n", [3, 4, 8])
def test_comparison_heatmaps_fit_a_notebook_with_readable_numbers(n):
    """A notebook shows inline figures at 100 dpi and scales wider ones down to its ~850 px output area."""
    from cl_utils.plotting import NOTEBOOK_WIDTH, plot_matrices

    fig = plot_matrices([_lm_result(m, 0.01 * k) for k, m in enumerate(METHODS[:n])])
    fig.canvas.draw()
    bbox = fig.get_tightbbox()  # what the inline backend saves, in inches
    assert bbox.width <= NOTEBOOK_WIDTH + 0.1, f"{n} heatmaps are {bbox.width * 100:.0f} px wide"
    annotations = [t for ax in fig.axes for t in ax.texts]
    assert len(annotations) == sum(np.isfinite(_lm_result(m).scores).sum() for m in METHODS[:n])
    heights = [t.get_window_extent().height * 100 / fig.dpi for t in annotations]  # px at 100 dpi, unscaled
    assert min(heights) >= 12


def test_comparison_tables_are_two_narrow_tables_with_roles_in_the_index():
    for method in ("joint", "naive", "ewc"):
        save_results(_lm_result(method), profile=PROFILE, benchmark="lm", seed=0)
    c = Comparison.load(PROFILE.name, "lm")
    metrics, after = c.tables().values()
    assert list(metrics.index) == ["joint (multitask reference)", "naive (baseline)", "ewc"]
    assert list(metrics.columns) == ["task id", "seeds", "ACC", "BWT", "FWT", "forgetting"]
    assert list(after.columns) == ["news", "social", "technical", "wikipedia", "trainable params", "train s", "state MB"]
    assert after.loc["ewc", "wikipedia"] == f"{np.exp(5.4):.1f}" and after.loc["ewc", "trainable params"] == "31,200"
    assert max(len(" ".join(map(str, row))) for row in after.reset_index().to_numpy()) < 90


def test_benchmarks_without_results_take_one_line_with_the_command():
    save_results(_lm_result("naive"), profile=PROFILE, benchmark="lm", seed=0)
    comparisons = {b: Comparison.load(PROFILE.name, b) for b in ("lm", "classification")}
    lines = coverage_text(comparisons).splitlines()
    assert lines[0] == "lm: comparing 3 methods (the table lists them), seed 0."  # joint, naive, ewc
    assert "lm: missing results" in lines[1]  # a benchmark with some results still lists what it lacks, per notebook
    assert lines[-1] == ("No results yet for classification: run notebooks 01–04 and 06 with PROFILE='display_test' and "
                         "BENCHMARK='classification', or "
                         "`make reproduce PROFILE=display_test BENCHMARKS=classification`.")
    assert not any("classification" in line for line in lines[:-1])


# -- the note above the takeaways ------------------------------------------------------------------------------------
def test_takeaways_note_only_when_the_run_is_not_the_one_they_describe():
    assert takeaways_note("embedded", seed=0) is None and takeaways_note("embedded") is None
    assert takeaways_note("embedded", seed=0, overrides={}) is None
    note = takeaways_note("smoke", seed=0).data
    assert "written from the `embedded` run (seed 0)" in note and "ran on `smoke`, so the numbers above differ" in note
    assert "ran with seed 2," in takeaways_note("embedded", seed=2).data
    assert "`finetune.steps=60`" in takeaways_note("embedded", seed=0, overrides={"finetune.steps": 60}).data
    assert "ran on `smoke` and with seed 1," in takeaways_note("smoke", seed=1).data
