"""The numbers of a golden run, compared with a tolerance: the results files that the notebooks write.

nbval compares the text of each notebook's `# NBVAL_CHECK_OUTPUT` cell exactly, so that cell prints only what is
the same on every CPU (method names, tasks, shapes, which entries exist). The numbers themselves are compared
here, against the results files of the golden run committed under ``tests/golden/results/`` (``make golden``
writes both):

- exactly: profile, benchmark, method, seed, tasks, extra columns, parameter counts, hyper-parameters, the profile
  config, every other key, and where a value is missing (``None``);
- within ``ATOL`` (absolute, in the score's own unit: nats/token on the `lm` benchmark the golden run uses): every
  number of ``R``, ``b``, ``extra_scores``, ``metrics`` and ``valid`` (the valid scores of a sweep point); within
  ``LOSS_ATOL`` every training step's loss;
- not at all: ``train_seconds``, ``closing_seconds`` and ``versions``.

The tolerances were set by measurement (README, "Regression checks"), on an AMD EPYC with AVX-512, running the
golden notebooks once under each of ``ATEN_CPU_CAPABILITY=default``, ``avx2`` and ``avx512``: the largest
difference between any two of those runs is ``CPU_SPREAD``; raising the smoke fine-tuning learning rate by 10 %
(3e-3 to 3.3e-3) moved the same numbers by ``LR10_CHANGE``. Each tolerance sits well above the first and well
below the second.

Run as a script to see how far two runs' results folders are apart, key by key::

    python tests/golden/results_check.py tests/golden/results /tmp/other/runs/smoke/results
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

GOLDEN_RESULTS = Path(__file__).resolve().parent / "results"
NUMERIC_KEYS = ("R", "b", "extra_scores", "metrics", "valid", "losses")
IGNORED_KEYS = ("train_seconds", "closing_seconds", "versions")
# Largest |difference| measured, per key (see the module docstring).
CPU_SPREAD = {"R": 3.2e-4, "b": 7.2e-7, "extra_scores": 2.7e-4, "metrics": 2.4e-4, "losses": 5.2e-3}
LR10_CHANGE = {"R": 2.5e-2, "extra_scores": 1.0e-2, "metrics": 1.1e-2, "losses": 4.8e-2}
ATOL = 2e-3  # scores (R, b, extra_scores, metrics): 6x the CPU spread, 5x below the smallest lr10 change
LOSS_ATOL = 2.5e-2  # per-step training losses: 5x the CPU spread, about half the lr10 change


def result_files(folder: Path) -> dict[str, Path]:
    """Every stream results file under ``folder`` (``<benchmark>__<method>[__...].json``, sweep points included),
    keyed by its path relative to ``folder``. Other JSON files there (07's measurements, which hold timings) are
    checked by their own tests."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*__*.json"))}


def _numbers(expected: Any, actual: Any, where: str, out: list[tuple[str, float | None]]) -> None:
    """Walk two numeric structures in step; append (where, |difference|) per number, or (where, None) for a
    difference in structure (type, length, keys, or a missing value on one side only)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            out.append((f"{where}: keys {sorted(expected)} != {sorted(actual)}", None))
            return
        for k in expected:
            _numbers(expected[k], actual[k], f"{where}.{k}", out)
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            out.append((f"{where}: length {len(expected)} != {len(actual)}", None))
            return
        for i, (e, a) in enumerate(zip(expected, actual)):
            _numbers(e, a, f"{where}[{i}]", out)
    elif expected is None or actual is None:
        if expected is not actual:
            out.append((f"{where}: {expected!r} != {actual!r}", None))
    elif isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if math.isnan(expected) != math.isnan(actual):
            out.append((f"{where}: {expected!r} != {actual!r}", None))
        elif not math.isnan(expected):
            out.append((where, abs(float(expected) - float(actual))))
    else:
        out.append((f"{where}: {expected!r} != {actual!r}", None))


def deviations(expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[tuple[str, float]]]:
    """Compare two results files' data: (structural differences, [(where, |difference|) per number])."""
    problems: list[str] = []
    keys = set(expected) | set(actual)
    for key in sorted(keys - set(IGNORED_KEYS)):
        if key not in expected or key not in actual:
            problems.append(f"{key}: only in {'the golden copy' if key in expected else 'this run'}")
        elif key not in NUMERIC_KEYS and expected[key] != actual[key]:
            problems.append(f"{key}: {expected[key]!r} != {actual[key]!r}")
    numbers: list[tuple[str, float | None]] = []
    for key in NUMERIC_KEYS:
        if key in expected and key in actual:
            _numbers(expected[key], actual[key], key, numbers)
    problems += [where for where, d in numbers if d is None]
    return problems, [(where, d) for where, d in numbers if d is not None]


def compare_folders(golden: Path, actual: Path, atol: float = ATOL, loss_atol: float = LOSS_ATOL) -> list[str]:
    """Every difference between two results folders that a regression check should fail on."""
    want, got = result_files(golden), result_files(actual)
    problems = [f"{name}: missing from this run" for name in sorted(want.keys() - got.keys())]
    problems += [f"{name}: not in the golden copy (run `make golden` if it is intended)"
                 for name in sorted(got.keys() - want.keys())]
    for name in sorted(want.keys() & got.keys()):
        structural, numbers = deviations(json.loads(want[name].read_text()), json.loads(got[name].read_text()))
        problems += [f"{name}: {p}" for p in structural]
        for where, d in numbers:
            tol = loss_atol if where.startswith("losses") else atol
            if d > tol:
                problems.append(f"{name}: {where} differs by {d:.2e} (tolerance {tol:.1e})")
    return problems


def spread(golden: Path, actual: Path) -> dict[str, float]:
    """Largest |difference| per numeric key over all files both folders hold (for measuring the tolerance)."""
    want, got = result_files(golden), result_files(actual)
    worst: dict[str, float] = {}
    for name in sorted(want.keys() & got.keys()):
        structural, numbers = deviations(json.loads(want[name].read_text()), json.loads(got[name].read_text()))
        if structural:
            worst["structure"] = worst.get("structure", 0) + len(structural)
        for where, d in numbers:
            key = where.split(".")[0].split("[")[0]
            worst[key] = max(worst.get(key, 0.0), d)
    return worst


if __name__ == "__main__":
    a, b = map(Path, sys.argv[1:3])
    only = sorted(result_files(a).keys() ^ result_files(b).keys())
    print(f"files in one folder only: {only or 'none'}")
    for key, d in spread(a, b).items():
        print(f"{key:>12}: {d:.3e}" if key != "structure" else f"structural differences: {d}")
