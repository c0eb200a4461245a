"""The nbval run of the golden copies: every notebook writes into one fresh runs folder, as `make golden` did.

The folder is set when this file is imported, before nbval starts any kernel, so all the kernels share it
(05_evaluation reads what 01-04 and 06 saved, so it runs after them, as in `make reproduce` and `make golden`; the
checks of test_outputs.py run last). The parent conftest's per-session folder is switched off here.
"""
import os
import tempfile

import pytest

_root = tempfile.mkdtemp(prefix="cl-golden-")
os.environ["CL_RUNS_DIR"] = os.path.join(_root, "runs")
os.environ["CL_FIGURES_DIR"] = os.path.join(_root, "figures")


@pytest.fixture(autouse=True, scope="session")
def _isolated_outputs():
    yield _root


def pytest_collection_modifyitems(items):
    """The method notebooks in name order, then 05_evaluation, then test_outputs.py (a stable sort)."""
    def rank(item):
        name = item.path.name
        return 2 if name == "test_outputs.py" else 1 if name.startswith("05_") else 0
    items.sort(key=rank)
