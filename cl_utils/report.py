"""The comparison of 05_evaluation: every saved result of a profile, grouped by method over seeds.

>>> c = Comparison.load("embedded", "lm")        # doctest: +SKIP
>>> print(coverage_text({"lm": c}))              # doctest: +SKIP
>>> for caption, table in c.tables().items(): display(Markdown(caption), table)   # doctest: +SKIP
>>> c.heatmaps(seed=0)                           # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import load_results, result_from_dict, result_row
from .scores import view
from .stream import StreamResult

__all__ = ["PRODUCERS", "REFERENCES", "Comparison", "collect", "comparison", "format_table", "coverage_text"]

# Which notebook writes which method's results file, in the order the comparison lists them.
PRODUCERS: dict[str, str] = {
    "joint": "01_baseline_forgetting",
    "naive": "01_baseline_forgetting",
    "linear_probe": "01_baseline_forgetting",
    "ewc": "02_ewc",
    "online_ewc": "02_ewc",
    "si": "02_ewc",
    "mas": "02_ewc",
    "progressive_prompts": "03_progressive_prompts",
    "lora_sequential": "04_lora",
    "lora_per_task": "04_lora",
    "olora": "04_lora",
    "olora_no_penalty": "04_lora",
    "er": "06_replay_and_distillation",
    "agem": "06_replay_and_distillation",
    "lwf": "06_replay_and_distillation",
}
# Methods that exist for some benchmarks only (the others never expect their results file).
ONLY_FOR: dict[str, tuple[str, ...]] = {"linear_probe": ("classification",)}
# Rows that are references, not continual-learning methods.
# joint is a reference, not an upper bound: a method of the stream can match or beat it on a task.
REFERENCES: dict[str, str] = {"joint": "multitask reference (all tasks at once)", "naive": "baseline (no protection)",
                              "linear_probe": "probe reference (frozen encoder, heads only)"}


def collect(profile: str, benchmark: str) -> tuple[dict[str, list[StreamResult]], dict[str, list[str]]]:
    """Every result of ``profile`` and ``benchmark``, as ``{method: [result per seed, seeds ascending]}``
    in :data:`PRODUCERS` order (unknown methods last), and what is missing as ``{notebook: [methods]}``.

    A method counts as missing when no seed of it was saved. Methods saved for only some seeds are
    reported with the seeds they have (see ``comparison``'s ``seeds`` column).
    """
    found: dict[str, list[tuple[int, StreamResult]]] = {}
    for data in load_results(profile, benchmark):
        found.setdefault(data["method"], []).append((data["seed"], result_from_dict(data)))
    order = [m for m in PRODUCERS if m in found] + sorted(m for m in found if m not in PRODUCERS)
    # references first, then the methods not told the task at test time, then those told it (stable within each)
    told = lambda m: any(r.task_identity and not r.task_heads for _, r in found[m])  # noqa: E731
    order = sorted(order, key=lambda m: (m not in REFERENCES, told(m)))
    groups: dict[str, list[StreamResult]] = {}
    for m in order:
        groups[m] = [r for _, r in sorted(found[m], key=lambda sr: sr[0])]
        seeds = sorted(s for s, _ in found[m])
        for r, s in zip(groups[m], seeds):
            r.hparams = {**r.hparams, "seed": s}
    missing: dict[str, list[str]] = {}
    for method, notebook in PRODUCERS.items():
        if method not in found and benchmark in ONLY_FOR.get(method, (benchmark,)):
            missing.setdefault(notebook, []).append(method)
    return groups, missing


def comparison(groups: dict[str, list[StreamResult]]):
    """Two tables indexed by method: the mean over seeds and the standard deviation (ddof=1; NaN for one seed).

    Columns: role (reference or method), seeds, ACC, BWT, FWT, forgetting (differences of raw scores),
    the final readable score per column (perplexity or accuracy %), trainable parameters and train seconds
    (optimiser steps plus end-of-task work such as EWC's Fisher). Joint training has no BWT/FWT/forgetting.
    """
    import pandas as pd

    means, stds = [], []
    for method, runs in groups.items():
        table = pd.DataFrame([result_row(r) for r in runs], dtype=float)
        info = {"method": method, "role": REFERENCES.get(method, "method"),
                "task id": "given" if runs[0].task_identity else "not given", "seeds": len(runs)}
        means.append({**info, **table.mean().to_dict()})
        stds.append({**info, **(table.std(ddof=1) if len(runs) > 1 else table.mean() * np.nan).to_dict()})
    mean = pd.DataFrame(means).set_index("method")
    std = pd.DataFrame(stds).set_index("method")
    return mean, std


def format_table(mean, std, *, digits: int = 3):
    """``mean ± std`` strings (just the mean for one seed, "–" where undefined), ready to display."""
    import pandas as pd

    out = pd.DataFrame(index=mean.index)
    for col in mean.columns:
        if col in ("role", "task id", "seeds"):
            out[col] = mean[col]
            continue
        d = 0 if col in ("trainable params",) else (1 if col in ("train s", "state MB") or col.startswith("final")
                                                    else digits)
        out[col] = [_fmt(m, s, d) for m, s in zip(mean[col], std[col])]
    return out


def _verdict(d: np.ndarray) -> str:
    """See :meth:`Comparison.paired`."""
    if len(d) == 0:
        return "–"
    if len(d) == 1:
        return "one seed"
    if np.abs(d).max() < 1e-9:  # equal on every seed (up to float rounding): e.g. two methods that cannot forget
        return "same"
    se = d.std(ddof=1) / np.sqrt(len(d))
    same_sign = bool((d > 0).all() or (d < 0).all())
    if same_sign and abs(d.mean()) > 2 * se:
        return "better" if d.mean() > 0 else "worse"
    return "within noise"


def _fmt(m: float, s: float, digits: int) -> str:
    if m is None or np.isnan(m):
        return "–"
    text = f"{m:,.{digits}f}"
    return text if s is None or np.isnan(s) else f"{text} ± {s:,.{digits}f}"


@dataclass
class Comparison:
    """All results of one profile and benchmark, ready for the tables and figures of 05_evaluation."""

    profile: str
    benchmark: str
    groups: dict[str, list[StreamResult]]  # method -> one result per seed
    missing: dict[str, list[str]]  # notebook -> methods it would have saved

    @classmethod
    def load(cls, profile: str, benchmark: str) -> "Comparison":
        view(benchmark)  # an unknown benchmark raises here, naming the valid ones
        return cls(profile, benchmark, *collect(profile, benchmark))

    @property
    def empty(self) -> bool:
        return not self.groups

    def missing_text(self) -> str:
        """One line per notebook whose results are missing, with the command that produces them."""
        if not self.missing:
            return f"{self.benchmark}: every method has results."
        lines = [f"{self.benchmark}: missing results (these rows are left out):"]
        for notebook, methods in self.missing.items():
            lines.append(f"  {', '.join(methods)}: run notebooks/{notebook}.ipynb with PROFILE={self.profile!r}, "
                         f"BENCHMARK={self.benchmark!r}")
        return "\n".join(lines)

    def stats(self):
        """(mean, std) tables over seeds, see :func:`comparison`."""
        return comparison(self.groups)

    def table(self, digits: int = 3):
        return format_table(*self.stats(), digits=digits)

    def tables(self, digits: int = 3) -> dict[str, Any]:
        """:meth:`table` as two narrow tables that fit a notebook, as ``{caption: table}``: the continual-learning
        metrics, then the readable score of each column after the whole stream with parameters and time.
        Reference rows say what they are: ``joint (multitask reference)``, ``naive (baseline)``; the ``task id``
        column says which methods are told the task at test time."""
        table = self.table(digits)
        v = view(self.benchmark)
        table.index = [f"{m} ({REFERENCES[m].split(' (')[0]})" if m in REFERENCES else m for m in table.index]
        table.index.name = "method"
        finals = [c for c in table.columns if c.startswith("final ")]
        after = table[[*finals, "trainable params", "train s", "state MB"]]
        after.columns = [c.removeprefix(f"final {v.name} ") for c in after.columns]
        better = "lower" if v.lower_is_better else "higher"
        heads = any(r.task_heads for runs in self.groups.values() for r in runs)
        note = (" One head per task: every method is told the task at test time, and FWT is undefined (before its "
                "task, a task is scored through an untrained head)." if heads else
                " Methods told the task at test time (task id given) are listed after those that are not.")
        return {f"Metrics in {v.metric_unit}; higher is better, except forgetting.{note}":
                table[["task id", "seeds", "ACC", "BWT", "FWT", "forgetting"]],
                f"After the whole stream: {v.name} on each column ({better} is better), trainable parameters, "
                "training seconds, and what the method keeps besides the model (state MB: a replay memory, a teacher, "
                "importances and anchors).": after}

    def runs_of_seed(self, seed: int) -> list[StreamResult]:
        """One result per method: the one of ``seed``, else the method's lowest seed."""
        out = []
        for runs in self.groups.values():
            match = [r for r in runs if r.hparams.get("seed") == seed]
            out.append(match[0] if match else runs[0])
        return out

    def heatmaps(self, seed: int = 0):
        from .plotting import plot_matrices

        return plot_matrices(self.runs_of_seed(seed))

    def trajectories(self):
        from .plotting import plot_method_trajectories

        return plot_method_trajectories(self.groups)

    def transfer(self):
        import matplotlib.pyplot as plt

        from .plotting import NOTEBOOK_WIDTH, plot_transfer

        mean, std = self.stats()
        keep = mean["BWT"].notna()  # joint training has no BWT/FWT
        fig, ax = plt.subplots(figsize=(min(NOTEBOOK_WIDTH, 1.2 * int(keep.sum()) + 3), 3.8))
        plot_transfer(mean[keep], std[keep], ax=ax, unit=view(self.benchmark).metric_unit)
        fig.tight_layout()
        return fig

    def paired(self, baseline: str = "naive", metrics: tuple[str, ...] = ("ACC", "BWT")):
        """Each method against ``baseline``, seed by seed (the same seed: the same data order and initialisation).

        For every metric: the mean over seeds of ``method - baseline``, its standard deviation, and a verdict:
        ``"better"`` / ``"worse"`` when every seed's difference has the same sign *and* the mean difference is more
        than twice its standard error (sd / sqrt(seeds)); ``"same"`` when every difference is 0 (up to 1e-9);
        ``"within noise"`` otherwise; ``"one seed"`` when only one seed is shared (no spread to compare with).
        Methods without the metric (joint's BWT) get "–".
        """
        import pandas as pd

        if baseline not in self.groups:
            raise ValueError(f"no {baseline!r} results for {self.profile}/{self.benchmark}: the paired comparison "
                             f"needs them (methods with results: {list(self.groups)})")
        base = {r.hparams["seed"]: r.metrics() for r in self.groups[baseline]}
        rows = []
        for method, runs in self.groups.items():
            if method == baseline:
                continue
            row: dict[str, Any] = {"method": method}
            shared = [r for r in runs if r.hparams["seed"] in base]
            row["seeds"] = len(shared)
            for m in metrics:
                d = np.array([r.metrics()[m] - base[r.hparams["seed"]][m] for r in shared
                              if r.metrics()[m] is not None and base[r.hparams["seed"]][m] is not None], dtype=float)
                row[f"Δ{m}"] = float(d.mean()) if len(d) else np.nan
                row[f"Δ{m} sd"] = float(d.std(ddof=1)) if len(d) > 1 else np.nan
                row[f"{m} verdict"] = _verdict(d)
            rows.append(row)
        return pd.DataFrame(rows).set_index("method")

    def findings(self) -> str:
        """What the mean table says, in numbers: ranking by ACC, and each method against naive and joint."""
        mean, _ = self.stats()
        v = view(self.benchmark)
        lines = [f"{self.benchmark} ({self.profile}, metrics in {v.metric_unit}, mean over "
                 f"{int(mean['seeds'].max())} seed(s) at most):"]
        ranked = mean["ACC"].sort_values(ascending=False)
        lines.append("  ACC ranking: " + " > ".join(f"{m} {a:.3f}" for m, a in ranked.items()))
        if "naive" in mean.index:
            paired = self.paired()
            for m, row in paired.drop(index=[x for x in ("joint",) if x in paired.index]).iterrows():
                verdicts = ", ".join(f"{k} {row[f'Δ{k}']:+.3f} ({row[f'{k} verdict']})" for k in ("ACC", "BWT")
                                     if np.isfinite(row[f"Δ{k}"]))
                lines.append(f"  {m} against naive, paired over {int(row['seeds'])} seed(s): {verdicts}")
        if "joint" in mean.index:
            best = ranked.drop([m for m in REFERENCES if m != "naive"], errors="ignore")
            if len(best):
                lines.append(f"  best continual method {best.index[0]}: ACC {best.iloc[0]:.3f} against joint's "
                             f"{mean.loc['joint', 'ACC']:.3f} (gap {mean.loc['joint', 'ACC'] - best.iloc[0]:+.3f})")
        return "\n".join(lines)

    def regression_summary(self) -> str:
        """The methods compared, with their number of seeds and which metrics are defined, without the numbers:
        the text the nbval check compares exactly on every CPU (the numbers are checked with a tolerance against
        the golden run's results files, see tests/golden/results_check.py)."""
        mean, _ = self.stats()
        cols = ["ACC", "BWT", "FWT", "forgetting"]
        lines = [f"{self.benchmark}:"]
        for method, row in mean.iterrows():
            defined = [c for c in cols if np.isfinite(row[c])]
            lines.append(f"  {method}: {int(row['seeds'])} seed(s); metrics {', '.join(defined)}")
        return "\n".join(lines)


def coverage_text(comparisons: dict[str, Comparison]) -> str:
    """What 05 compares, in a few lines: each benchmark with results (how many methods, which seeds, and the methods
    still missing there, see :meth:`Comparison.missing_text`); then every benchmark without any result in one line,
    with the command that produces them."""
    lines, empty = [], [b for b, c in comparisons.items() if c.empty]
    for b, c in comparisons.items():
        if c.empty:
            continue
        seeds = sorted({r.hparams["seed"] for runs in c.groups.values() for r in runs})
        lines.append(f"{b}: comparing {len(c.groups)} method{'s' if len(c.groups) > 1 else ''} "
                     f"(the table lists them), seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}.")
        if c.missing:
            lines.append(c.missing_text())
    if empty:
        profile = comparisons[empty[0]].profile
        which = ", then ".join(f"BENCHMARK={b!r}" for b in empty)
        make = empty[0] if len(empty) == 1 else '"' + " ".join(empty) + '"'
        lines.append(f"No results yet for {', '.join(empty)}: run notebooks 01–04 and 06 with PROFILE={profile!r} and "
                     f"{which}, or `make reproduce PROFILE={profile} BENCHMARKS={make}`.")
    return "\n".join(lines)
