"""The nbval run of the golden copies: every notebook writes into one fresh runs folder, as `make golden` did.

The folder is set when this file is imported, before nbval starts any kernel, so all five kernels share it
(05_evaluation reads what 01-04 saved). The parent conftest's per-session folder is switched off here.
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
