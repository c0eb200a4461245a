"""Where runs, caches, results and figures live.

Defaults are relative to the project root (the folder holding ``pyproject.toml``), so notebooks find
the same cache whether they run from ``notebooks/``, papermill or the repo root. Override with the
environment variables ``CL_RUNS_DIR`` and ``CL_FIGURES_DIR`` (the tests do).
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "runs_dir", "cache_dir", "results_dir", "figures_dir", "shown_path"]


def project_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def runs_dir() -> Path:
    return Path(os.environ.get("CL_RUNS_DIR") or project_root() / "runs")


def cache_dir() -> Path:
    """Shared across profiles and seeds: pretrained base models and tokenised corpora, keyed by a hash."""
    return runs_dir() / "cache"


def results_dir(profile: str) -> Path:
    return runs_dir() / profile / "results"


def figures_dir(profile: str) -> Path:
    return Path(os.environ.get("CL_FIGURES_DIR") or project_root() / "figures") / profile


def shown_path(path: str | Path) -> str:
    """``path`` as a notebook should print it: relative to the project root when inside it
    (``runs/smoke/models/lm__online_ewc``), else absolute (e.g. under a ``CL_RUNS_DIR`` elsewhere)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return str(path)
