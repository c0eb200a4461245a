"""Results files: one JSON per (benchmark, method, seed) under ``runs/<profile>/results/``.

Name: ``<benchmark>__<method>.json`` for seed 0 and ``<benchmark>__<method>__seed<k>.json`` otherwise.
Every file holds profile, benchmark, method, seed, tasks, R, b, the extra columns, metrics,
trainable_params, train_seconds (closing_seconds apart), whether the method was told the task at test time
(task_identity), what the stream reused from an earlier one (``reused``, see cl_utils.reuse), the valid scores of
a run a choice was made from (``valid``, else null), the version of the splits it was scored on
(``splits_version``: files from older splits are left out when read) and package versions.
Every score in R, b and the extra columns is on the ``test`` splits. Writes are atomic.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import warnings

import numpy as np

from .cache import atomic_write_json
from .config import Profile, profile_dict
from .paths import results_dir, shown_path
from .repro import package_versions
from .scores import view
from .splits import SPLIT_VERSION
from .stream import StreamResult

__all__ = ["results_path", "sweep_tag", "save_results", "load_results", "load_result", "same_profile", "result_from_dict",
           "metrics_table", "result_row", "forgetting_table", "plasticity_table", "summary_text"]

_NAME = re.compile(r"^[a-z0-9_]+$")


def results_path(profile: str, benchmark: str, method: str, seed: int, *, sweep: str | None = None) -> Path:
    """Where a result lives; ``sweep`` (e.g. ``"lam100"``) files a sweep point under ``results/sweeps/``."""
    for what, value in (("benchmark", benchmark), ("method", method), ("sweep", sweep or "x")):
        if not _NAME.match(value):
            raise ValueError(f"{what} name {value!r} must be lower-case letters, digits and '_'")
    suffix = "" if seed == 0 else f"__seed{seed}"
    if sweep:
        return results_dir(profile) / "sweeps" / f"{benchmark}__{method}__{sweep}{suffix}.json"
    return results_dir(profile) / f"{benchmark}__{method}{suffix}.json"


def sweep_tag(name: str, value: float) -> str:
    """A file-safe sweep name for one hyperparameter value: ``sweep_tag("lam", 1e6) == "lam1e6"``,
    ``sweep_tag("lr", 0.003) == "lr0p003"``, ``sweep_tag("lam", 2.5e-5) == "lam2p5em5"``."""
    text = f"{value:g}"
    mantissa, _, exponent = text.partition("e")
    tag = mantissa.replace("-", "m").replace(".", "p")
    if exponent:
        tag += "e" + str(int(exponent)).replace("-", "m")
    return name + tag


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if math.isnan(x) else float(x) for x in row] for row in np.atleast_2d(a)]


def save_results(result: StreamResult, *, profile: Profile, benchmark: str, seed: int,
                 extra: dict[str, Any] | None = None, sweep: str | None = None, folder: Path | None = None) -> Path:
    """Write ``result`` atomically and return the path; ``folder``: there instead of ``runs/<profile>/results``
    (``sweeps/`` inside it for a sweep point)."""
    T = len(result.tasks)
    data = {
        "profile": profile.name, "benchmark": benchmark, "method": result.method, "seed": seed,
        "tasks": result.tasks, "extra_columns": result.extra,
        "R": _nan_to_none(result.R), "b": _nan_to_none(result.b)[0],
        "extra_scores": {name: [None if math.isnan(x) else float(x) for x in result.scores[:, T + k]]
                         for k, name in enumerate(result.extra)},
        "metrics": result.metrics(), "trainable_params": result.trainable_params,
        "total_params": result.total_params, "train_seconds": result.train_seconds,
        "closing_seconds": result.closing_seconds, "state_bytes": result.state_bytes,
        "task_identity": result.task_identity, "reused": result.reused,
        "task_heads": result.task_heads, "valid": result.valid,
        "hparams": result.hparams, "losses": result.losses, "versions": package_versions(),
        "profile_config": profile_dict(profile), "splits_version": SPLIT_VERSION, **(extra or {}),
    }
    path = results_path(profile.name, benchmark, result.method, seed, sweep=sweep)
    if folder is not None:
        path = Path(folder) / path.relative_to(results_dir(profile.name))
    return atomic_write_json(path, data)


def result_from_dict(data: dict[str, Any]) -> StreamResult:
    """Rebuild a :class:`StreamResult` (scores with NaN for missing rows) from a results file's data."""
    T = len(data["tasks"])
    to_f = lambda v: float("nan") if v is None else float(v)  # noqa: E731
    rows = [[to_f(v) for v in data["b"]]] + [[to_f(v) for v in row] for row in data["R"]]
    extra = [[to_f(v) for v in data["extra_scores"][name]] for name in data["extra_columns"]]
    scores = np.array([row + [col[i] for col in extra] for i, row in enumerate(rows)])
    assert scores.shape == (T + 1, T + len(extra))
    return StreamResult(data["method"], data["tasks"], data["extra_columns"], scores, data["train_seconds"],
                        data["trainable_params"], data["total_params"], data.get("losses", []),
                        data.get("hparams", {}), data["benchmark"], task_identity=data.get("task_identity", False),
                        task_heads=data.get("task_heads", False), closing_seconds=data.get("closing_seconds", 0.0),
                        valid=data.get("valid"), state_bytes=data.get("state_bytes"), reused=data.get("reused", []))


def load_results(profile: str, benchmark: str | None = None, method: str | None = None, *,
                 sweeps: bool = False) -> list[dict[str, Any]]:
    """Every results file of ``profile`` (optionally one benchmark / method), sorted by name.

    ``sweeps=True`` reads the sweep points under ``results/sweeps/`` instead of the main results.
    """
    out, stale = [], []
    folder = results_dir(profile) / "sweeps" if sweeps else results_dir(profile)
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if (benchmark is None or data["benchmark"] == benchmark) and (method is None or data["method"] == method):
            (out if data.get("splits_version") == SPLIT_VERSION else stale).append(data)
    if stale:
        warnings.warn(f"{len(stale)} results file(s) in {shown_path(folder)} were scored on older splits "
                      f"(splits_version {sorted({d.get('splits_version') for d in stale}, key=str)}, now "
                      f"{SPLIT_VERSION}) and are left out; run their notebooks again", stacklevel=2)
    return out


def same_profile(data: dict[str, Any], profile: Profile) -> bool:
    """Whether a results file's data was run with exactly ``profile`` (its name and every field, overrides
    included), compared as JSON (tuples read back as lists)."""
    return data.get("profile_config") == json.loads(json.dumps(profile_dict(profile)))


def load_result(profile: str, benchmark: str, method: str, seed: int) -> StreamResult | None:
    """The saved result of one method and seed, or None if that notebook has not run yet (or its file was scored
    on older splits, see :func:`load_results`)."""
    path = results_path(profile, benchmark, method, seed)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return result_from_dict(data) if data.get("splits_version") == SPLIT_VERSION else None


def result_row(r: StreamResult) -> dict[str, Any]:
    """One run as a table row: ACC, BWT, FWT, forgetting, the final readable score per column, trainable
    parameters, train seconds and the bytes the method keeps (``state``: a buffer, a teacher, importances)."""
    v = view(r.benchmark)
    row: dict[str, Any] = dict(r.metrics())
    for name, s in zip([*r.tasks, *r.extra], r.scores[-1]):
        row[f"final {v.name} {name}"] = float(v.show(s))
    row["trainable params"] = float(r.trainable_params)
    row["train s"] = float(r.train_seconds)
    row["state MB"] = r.state_mb
    return row


def metrics_table(results: list[StreamResult]):
    """One row per method (:func:`result_row`).

    The metrics are differences of raw scores (nats/token for "lm", accuracy for "classification");
    the per-column values are what :mod:`cl_utils.scores` shows: perplexity or accuracy % after the
    whole stream.
    """
    import pandas as pd

    return pd.DataFrame([{"method": r.method, **result_row(r)} for r in results]).set_index("method")


def forgetting_table(r: StreamResult):
    """Per column: the readable score when it was best learned (right after its task; before the stream
    for the extra columns) against the end of the stream, and the change in percent."""
    import pandas as pd

    v = view(r.benchmark)
    T = len(r.tasks)
    rows = []
    for j, name in enumerate([*r.tasks, *r.extra]):
        start = r.scores[j + 1, j] if j < T else r.scores[0, j]
        label = name if j < T else f"{name} (pretraining)"
        first, end = float(v.show(start)), float(v.show(r.scores[-1, j]))
        rows.append({"evaluated on": label, f"{v.name} after training it": first, f"{v.name} at the end": end,
                     "change %": 100 * (end / first - 1)})
    return pd.DataFrame(rows).set_index("evaluated on")


def plasticity_table(results: list[StreamResult]):
    """Per task (rows) and method (columns): the readable score right after the task was trained, ``R[j, j]``."""
    import pandas as pd

    v = view(results[0].benchmark)
    return pd.DataFrame({r.method: v.show(np.diag(r.R)) for r in results}, index=results[0].tasks)


def summary_text(results: list[StreamResult]) -> str:
    """What each result holds, without its numbers: the text the nbval regression check compares exactly.

    Method, benchmark, tasks, extra columns, the shape of R and which of its entries exist, and which metrics
    are defined. These are the same on every CPU. The numbers are compared with a tolerance against the golden
    run's results files instead (``tests/golden/results_check.py``), because torch's AVX2 and AVX-512 kernels
    differ in the last bits and a rounded number near a rounding boundary flips between machines.
    """
    parts = []
    for r in results:
        filled = "".join("x" if np.isfinite(v) else "." for v in r.R.ravel())
        rows = " ".join(filled[i:i + len(r.tasks)] for i in range(0, len(filled), len(r.tasks)))
        defined = [k for k, v in r.metrics().items() if v is not None]
        parts.append(f"{r.method} ({r.benchmark}): tasks {', '.join(r.tasks)}; extra columns {', '.join(r.extra) or '-'}; "
                     f"R {r.R.shape[0]}x{r.R.shape[1]} [{rows}] (x: scored, .: not scored); "
                     f"metrics {', '.join(defined)}")
    return "\n".join(parts)
