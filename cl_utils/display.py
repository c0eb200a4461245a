"""What the notebooks show besides tables and figures: progress bars, and a note above the takeaways.

Progress bars are ``tqdm.auto`` bars: widgets in JupyterLab (and other Jupyter front ends), plain text in a
terminal. A kernel run by papermill is a Jupyter kernel too, but a widget cannot be read in its log or in the
executed file, so set the environment variable ``CL_PROGRESS`` to choose:

    CL_PROGRESS=auto   (default) widgets in a Jupyter kernel, text elsewhere
    CL_PROGRESS=text   plain text everywhere (what `make` sets for papermill runs)
    CL_PROGRESS=off    no progress bars

Every progress bar of ``cl_utils`` comes from :func:`progress_bar`; it is the only place that reads ``CL_PROGRESS``.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

__all__ = ["PROGRESS_ENV", "PROGRESS_MODES", "TAKEAWAYS_FROM", "progress_mode", "progress_bar", "takeaways_note"]

PROGRESS_ENV = "CL_PROGRESS"
PROGRESS_MODES = ("auto", "text", "off")
# Text bars redraw at most every 5 s: each redraw is a line in papermill's log and in the executed notebook.
TEXT_REFRESH_S = 5.0
WIDGET_REFRESH_S = 1.0  # a widget redraw is a message to the front end, not an output: the file does not grow
# The run every notebook's "## Takeaways" were written from (the README's tables come from the same run).
TAKEAWAYS_FROM = {"profile": "embedded", "seed": 0}


def progress_mode() -> str:
    """``$CL_PROGRESS`` (``auto`` when unset or empty); ``ValueError`` for any other value than the valid ones."""
    mode = (os.environ.get(PROGRESS_ENV) or "auto").strip().lower()
    if mode not in PROGRESS_MODES:
        raise ValueError(f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r} is not a progress mode; "
                         f"valid: {', '.join(PROGRESS_MODES)}")
    return mode


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), False in a terminal or plain Python."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_bar(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm bar over ``iterable`` labelled ``desc``: a widget or plain text, as :func:`progress_mode` says.

    Text bars are 100 characters wide and go to stderr in a terminal, but to stdout in a kernel (stderr shows
    as a pink error box in Jupyter). ``enabled=False`` (or ``CL_PROGRESS=off``) iterates without a bar.
    """
    mode = progress_mode()
    disable = not enabled or mode == "off"
    if mode == "auto" and not disable:
        from tqdm import auto

        if auto.notebook_tqdm is not auto.std_tqdm:  # a Jupyter kernel with ipywidgets: a widget bar
            try:
                return auto.tqdm(iterable, desc=desc, total=total, mininterval=WIDGET_REFRESH_S)
            except ImportError:  # the widget could not be built: fall back to text
                pass
    from tqdm.std import tqdm

    kwargs: dict[str, Any] = {"file": sys.stdout} if _in_kernel() else {}
    return tqdm(iterable, desc=desc, total=total, disable=disable, mininterval=TEXT_REFRESH_S,
                dynamic_ncols=False, ncols=100, **kwargs)


def takeaways_note(profile: str, *, seed: int | None = None, overrides: dict[str, Any] | None = None):
    """A short markdown note, shown right above a notebook's ``## Takeaways``, when this run is not the one they
    were written from (:data:`TAKEAWAYS_FROM`): another profile, another seed or profile overrides. None (so
    nothing shows) when it is that run. ``seed=None``: the notebook has no single seed (05 reads them all).

    >>> takeaways_note("embedded", seed=0) is None
    True
    >>> print(takeaways_note("smoke", seed=0).data)  # doctest: +ELLIPSIS
    **About the takeaways below.** They were written from the `embedded` run (seed 0); this notebook ran on `smoke`, ...
    """
    from IPython.display import Markdown

    ref_profile, ref_seed = TAKEAWAYS_FROM["profile"], TAKEAWAYS_FROM["seed"]
    differs = []
    if profile != ref_profile:
        differs.append(f"on `{profile}`")
    if seed is not None and seed != ref_seed:
        differs.append(f"with seed {seed}")
    if overrides:
        differs.append("with overrides " + ", ".join(f"`{k}={v!r}`" for k, v in overrides.items()))
    if not differs:
        return None
    ran = ", ".join(differs[:-1]) + (" and " if len(differs) > 1 else "") + differs[-1]
    return Markdown(f"**About the takeaways below.** They were written from the `{ref_profile}` run (seed {ref_seed}); "
                    f"this notebook ran {ran}, so the numbers above differ from the ones they quote.")
