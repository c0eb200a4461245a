"""``python -m cl_utils run ...``: see :mod:`cl_utils.cli`."""
from .cli import main

raise SystemExit(main())
