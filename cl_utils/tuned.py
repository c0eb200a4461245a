"""Method hyper-parameters per benchmark: the values the notebooks use when a parameter is left at ``None``.

Kept here, in one table (like mammoth's per-dataset settings), rather than in code paths. How each value was
chosen is stated in the notebook that uses it; none was picked by looking at the final tables of 05.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TUNED", "tuned"]

TUNED: dict[str, dict[str, Any]] = {
    "lm": {
        "ewc_lambdas": [300.0, 3000.0],  # 02: the sweep
        "prompt_lr": 3e-2,  # 03: probed on news alone (1e-2 / 3e-2 / 1e-1 gave the same perplexity)
        "lora_lr": 1e-2,  # 04: probed on news alone (1e-3 / 3e-3 / 1e-2)
    },
    "classification": {
        "ewc_lambdas": [1e5, 1e6],  # 02: probed over 1e3..1e7 (1e3, 1e4 barely differ from naive; 1e7 stops learning)
        "prompt_lr": 3e-2,  # 03: the lm value, kept
        "lora_lr": 3e-3,  # 04: sequential LoRA probed at 1e-3 / 3e-3 (topic right after training 0.844 / 0.906)
    },
}


def tuned(benchmark: str, key: str, value: Any = None) -> Any:
    """``value`` if given, else the tuned default of ``key`` for ``benchmark``."""
    if value is not None:
        return value
    if benchmark not in TUNED or key not in TUNED[benchmark]:
        known = {b: sorted(v) for b, v in TUNED.items()}
        raise ValueError(f"no tuned value {key!r} for benchmark {benchmark!r}; known: {known}")
    return TUNED[benchmark][key]
