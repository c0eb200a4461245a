"""Method hyper-parameters per benchmark (and, where a profile needs its own, per profile): the values the
notebooks use when a parameter is left at ``None``.

Kept here, in one table (like mammoth's per-dataset settings), rather than in code paths. How each value was
chosen is stated next to it and in the notebook that uses it; none was picked by looking at the final tables of 05.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TUNED", "PROFILE_TUNED", "tuned"]

TUNED: dict[str, dict[str, Any]] = {
    "lm": {
        "ewc_lambdas": [1.0, 3.0, 10.0, 30.0, 100.0],  # 02: swept there, chosen on valid
        "fisher_examples": 256,  # 02: training blocks per Fisher estimate
        "prompt_lr": 3e-2,  # 03: probed on news alone (1e-2 / 3e-2 / 1e-1 gave the same perplexity)
        "lora_lr": 1e-2,  # 04: probed on news alone (1e-3 / 3e-3 / 1e-2)
    },
    "classification": {
        "ewc_lambdas": [1e4, 1e5, 1e6, 1e7],  # 02: swept there, chosen on valid
        "head_lr": 3e-3,  # every method: the task heads' own AdamW group
        "fisher_examples": 256,  # 02: training examples per Fisher estimate
        "prompt_lr": 3e-2,  # 03: the lm value, kept
        "lora_lr": 3e-3,  # 04: sequential LoRA probed at 1e-3 / 3e-3 (topic right after training 0.844 / 0.906)
    },
}

# Where a profile's model differs so much that the benchmark's values do not carry over: (profile, benchmark) -> values.
PROFILE_TUNED: dict[tuple[str, str], dict[str, Any]] = {
    ("smollm2", "lm"): {
        # 02: one point, to keep the series within 60 min on 2 cores (an EWC stream takes 8-9 min there). Calibrated,
        # not swept: with the Fishers of an EWC(λ=0) run (same training as naive), 1/2 sum_k F_k (θ - θ*_k)^2 at naive's
        # endpoint is 0.180 on embedded and 1.99e-3 here, and naive's forgetting is 1.324 and 0.110 nats/token.
        # embedded's best λ (3000 under the former per-example Fisher, 23.6 now) makes the penalty there 3.2x the
        # forgetting; the same ratio here gives 177. The value, 157.5 (2e4 / 127 rounded), is the former λ = 2e4 run:
        # on full 128-token blocks the per-token Fisher (cl_utils.fisher) is 127x the per-example one.
        "ewc_lambdas": [157.5],
        "fisher_examples": 32,  # 02: ~1.7 s per example for 135M parameters on 2 cores (vmap, one row per call)
        "lora_lr": 1e-3,  # 04: 10x the profile's fine-tuning lr, the ratio probed on embedded (1e-2 against 1e-3)
    },
}


def tuned(benchmark: str, key: str, value: Any = None, *, profile: str | None = None) -> Any:
    """``value`` if given, else the tuned default of ``key``: the profile's own if it has one, else the benchmark's."""
    if value is not None:
        return value
    own = PROFILE_TUNED.get((profile, benchmark), {}) if profile is not None else {}
    if key in own:
        return own[key]
    if benchmark not in TUNED or key not in TUNED[benchmark]:
        known = {b: sorted(v) for b, v in TUNED.items()}
        raise ValueError(f"no tuned value {key!r} for benchmark {benchmark!r}; known: {known}")
    return TUNED[benchmark][key]
