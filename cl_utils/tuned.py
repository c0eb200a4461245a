"""Method hyper-parameters per benchmark (and, where a profile needs its own, per profile): the values the
notebooks use when a parameter is left at ``None``.

Kept here, in one table (like mammoth's per-dataset settings), rather than in code paths. Every value below was
chosen on the ``valid`` splits, never on ``test`` (which every table, figure and takeaway reports):

- learning rates, SI's and MAS's λ and LwF's α: by ``make tune`` (:mod:`cl_utils.tuning`: a full stream per grid point, ``embedded`` profile,
  seed 0, "ACC on valid" = the mean valid score over the tasks after the stream; the points are in
  ``runs/embedded/tuning/``). The numbers next to each value are those ACCs on valid, measured on this machine;
  where neighbours are within about 0.01 of the winner the choice is flat and any of them would do;
- EWC's λ and ER's memory size: the grid is here, the choice is made by 02 (06) itself on valid, every run;
- Fisher sample sizes: a cost choice, not tuned.

The classification encoder's own lr (naive, EWC, joint) is a profile budget: ``ClassificationSpec.finetune.lr`` in
``cl_utils/config.py``, chosen on valid the same way (its comment has the numbers).
"""
from __future__ import annotations

from typing import Any

__all__ = ["TUNED", "PROFILE_TUNED", "tuned"]

TUNED: dict[str, dict[str, Any]] = {
    "lm": {
        # 02: λ grid for the per-token Fisher (cl_utils.fisher); the former best, 3000 under the per-example Fisher,
        # is 23.6 on this scale, inside the grid
        "ewc_lambdas": [1.0, 3.0, 10.0, 30.0, 100.0],
        "fisher_examples": 256,  # 02: training blocks per Fisher estimate
        # 03, Progressive Prompts (P = 10): -NLL on valid -6.3194 / -6.3216 / -6.3193 / -6.3219 at 1e-2 / 3e-2 / 1e-1
        # / 3e-1: flat, the lr hardly matters here
        "prompt_lr": 1e-1,
        # 04, on sequential LoRA (r = 8; per-task LoRA and O-LoRA use the same lr): -6.161 / -6.150 / -6.163 / -6.577
        # at 1e-3 / 3e-3 / 1e-2 / 3e-2
        "lora_lr": 3e-3,
        # 06: ER's memory sizes, as shares of one task's training set (mean over the tasks: 1,852 blocks here, so 19 /
        # 93 / 370 blocks); 06 chooses among them on valid, every run, and A-GEM runs at the chosen one
        "er_memories": [0.01, 0.05, 0.2],
        # 06, LwF (T = 2): -NLL on valid -5.4956 / -5.3622 / -5.3509 / -5.5928 at α = 0.3 / 1 / 3 / 10
        "lwf_alpha": 3.0,
        # 02, SI (ξ = 0.1): -NLL on valid -5.4913 / -5.4103 / -5.3904 / -5.4632 / -5.5824 at λ = 1e2 / 3e2 / 1e3 / 3e3 / 1e4
        "si_lambda": 1e3,
        # 02, MAS (256 rows per importance): -NLL on valid -5.4746 / -5.3618 / -5.3208 / -5.3772 at λ = 3e-4 / 1e-3 /
        # 3e-3 / 1e-2
        "mas_lambda": 3e-3,
    },
    "classification": {
        "ewc_lambdas": [1e4, 1e5, 1e6, 1e7],  # 02: grid; 1e7 stopped the second task being learned when probed
        # every method: the task heads' own AdamW group; on naive at encoder lr 1.5e-4: ACC on valid 0.742 / 0.766 /
        # 0.762 / 0.765 / 0.741 at 1e-3 / 3e-3 / 1e-2 / 3e-2 / 1e-1 (3e-3 to 3e-2 are level)
        "head_lr": 3e-3,
        "fisher_examples": 256,  # 02: training examples per Fisher estimate
        # 03: ACC on valid 0.700 / 0.713 / 0.675 / 0.635 / 0.631 at 1e-3 / 3e-3 / 1e-2 / 3e-2 / 1e-1 (heads at head_lr)
        "prompt_lr": 3e-3,
        # 04, on sequential LoRA: 0.710 / 0.720 / 0.746 / 0.650 / 0.329 at 1e-4 / 3e-4 / 1e-3 / 3e-3 / 1e-2
        "lora_lr": 1e-3,
        # 06: as for lm (448 texts per task on average: 4 / 22 / 90 texts)
        "er_memories": [0.01, 0.05, 0.2],
        # 06, LwF (T = 2): ACC on valid 0.785 / 0.789 / 0.762 / 0.766 at α = 0.3 / 1 / 3 / 10
        "lwf_alpha": 1.0,
        # 02, SI (ξ = 0.1): ACC on valid 0.792 / 0.791 / 0.795 / 0.770 at λ = 1e4 / 1e5 / 1e6 / 1e7 (flat up to 1e6)
        "si_lambda": 1e6,
        # 02, MAS (256 rows per importance): ACC on valid 0.792 / 0.793 / 0.779 / 0.758 at λ = 1 / 10 / 100 / 1000 (1 and
        # 10 are level)
        "mas_lambda": 10.0,
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
        "fisher_examples": 32,  # 02: 26.0 s for the 32 128-token examples on 2 cores (per-layer hooks; the EWC stream
        # of the README's SmolLM2 section)
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
