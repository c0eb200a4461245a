"""The sweeps behind ``cl_utils/tuned.py``: each value there was chosen here, on the ``valid`` splits.

One sweep per tuned value: a method, the grid of the value, and a full stream per grid point (seed 0), scored on each
task's ``valid`` split at the end; the point with the best mean valid score ("ACC on valid") wins. Test scores are
never read. Every point is written to ``runs/<profile>/tuning/<benchmark>__<key>.json`` as it finishes, so an
interrupted sweep resumes where it stopped.

    python -m cl_utils.tuning                      # every sweep of the embedded profile (53 streams)
    python -m cl_utils.tuning --benchmark lm --key prompt_lr --profile smoke

Each sweep runs at the values ``tuned.py`` holds when it starts (one value at a time, coordinate-wise): after the
``head_lr`` sweep, record its winner in ``tuned.py`` before the ``finetune_lr`` sweep, which runs at it. A sweep's
file keeps its points: delete it to sweep again after the data or code changed.

EWC's λ is not here: 02 sweeps it itself, on ``valid`` too, and so does 06 for ER's memory. SI's and MAS's λ and
LwF's α are here, so that 02 and 06 run one point each and keep within their time budget.

    python -m cl_utils.tuning --lr-ablation        # naive classification at four (encoder lr, head lr) pairs, 3 seeds

The ablation behind the README's classification finding: which of the two learning rates chosen on valid (the
encoder's 1e-4, the heads' own 3e-3) removed the forgetting that the former shared 1.5e-4 showed. It reads test
scores (it explains a result, it chooses nothing) and is kept apart from the sweeps for that reason.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Callable

from .cache import atomic_write_json
from .experiment import Experiment, setup
from .methods import MAS, SI, LwF, Method, Naive, ProgressivePrompts, SequentialLoRA
from .paths import runs_dir
from .tuned import tuned

__all__ = ["Sweep", "SWEEPS", "run_sweep", "LR_PAIRS", "lr_ablation", "main"]


@dataclass(frozen=True)
class Sweep:
    """One tuned value: the method is run at every point of ``grid``; ``arg`` says what the value is passed as
    (``"lr"``: the method's fine-tuning lr, ``method()``; ``"head_lr"``: the task heads' lr, ``method()``;
    ``"method"``: the method's own hyper-parameter, ``method(value)``)."""

    key: str  # the key in cl_utils/tuned.py (or "finetune_lr": the profile's fine-tuning lr)
    method: Callable[..., Method]
    grid: tuple[float, ...]
    arg: str = "lr"
    note: str = ""

    def run(self, exp: Experiment, value: float):
        if self.arg == "method":
            return exp.run(self.method(value), valid=True)
        return exp.run(self.method(), valid=True, **{self.arg: value})


# Where the SI and MAS grids sit: with λ = 0 (training identical to naive, seed 0), the penalty per unit λ at the end of
# the last task, against the anchors before it, was measured for EWC, SI and MAS (lm: 0.201, 0.00853, 3590;
# classification: 1.04e-5, 1.50e-6, 0.0299). Each grid is centred where λ times that equals EWC's chosen λ times
# EWC's (lm: 30 x 0.201; classification: 1e4 to 1e5 x 1.04e-5), and spans a factor of 10 or more either side.
_CENTRED = "grid centred by the penalty scale of EWC's chosen λ (see the comment above SWEEPS)"

SWEEPS: dict[str, list[Sweep]] = {
    "lm": [
        Sweep("prompt_lr", lambda: ProgressivePrompts(10), (1e-2, 3e-2, 1e-1, 3e-1)),
        Sweep("lora_lr", lambda: SequentialLoRA(r=8, alpha=16), (1e-3, 3e-3, 1e-2, 3e-2),
              note="on sequential LoRA; per-task LoRA and O-LoRA use the same lr"),
        Sweep("si_lambda", lambda lam: SI(lam), (1e2, 3e2, 1e3, 3e3, 1e4), arg="method", note=_CENTRED),
        Sweep("mas_lambda", lambda lam: MAS(lam, examples=tuned("lm", "fisher_examples")), (3e-4, 1e-3, 3e-3, 1e-2),
              arg="method", note=_CENTRED),
        Sweep("lwf_alpha", lambda alpha: LwF(alpha), (0.3, 1.0, 3.0, 10.0), arg="method"),
    ],
    "classification": [
        Sweep("head_lr", Naive, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), arg="head_lr",
              note="on naive (the baseline), at its fine-tuning lr; every method then uses it"),
        Sweep("finetune_lr", Naive, (5e-5, 1e-4, 1.5e-4, 3e-4, 6e-4),
              note="naive's (and EWC's, joint's) encoder lr, at the chosen head lr"),
        Sweep("prompt_lr", lambda: ProgressivePrompts(10), (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
        Sweep("lora_lr", lambda: SequentialLoRA(r=8, alpha=16), (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
              note="on sequential LoRA; per-task LoRA and O-LoRA use the same lr"),
        Sweep("si_lambda", lambda lam: SI(lam), (1e4, 1e5, 1e6, 1e7), arg="method", note=_CENTRED),
        Sweep("mas_lambda", lambda lam: MAS(lam, examples=tuned("classification", "fisher_examples")),
              (1.0, 10.0, 100.0, 1000.0), arg="method", note=_CENTRED),
        Sweep("lwf_alpha", lambda alpha: LwF(alpha), (0.3, 1.0, 3.0, 10.0), arg="method"),
    ],
}


def _path(exp: Experiment, key: str):
    return runs_dir() / exp.profile.name / "tuning" / f"{exp.benchmark.name}__{key}.json"


def run_sweep(exp: Experiment, sweep: Sweep) -> dict[str, Any]:
    """Run (or resume) ``sweep`` on ``exp`` and return ``{"key", "grid", "valid_acc": {point: score}, "best",
    "at_edge"}``; points already in the sweep's file are not run again."""
    path = _path(exp, sweep.key)
    done = json.loads(path.read_text()) if path.exists() else {}
    scores: dict[str, float] = done.get("valid_acc", {})
    for value in sweep.grid:
        if repr(value) in scores:
            continue
        scores[repr(value)] = sweep.run(exp, value).valid_acc
        atomic_write_json(path, {"key": sweep.key, "benchmark": exp.benchmark.name, "profile": exp.profile.name,
                                 "seed": exp.seed, "split": "valid", "note": sweep.note, "valid_acc": scores})
    points = {float(k): v for k, v in scores.items() if float(k) in sweep.grid}
    best = max(points, key=points.get)
    out = {"key": sweep.key, "grid": list(sweep.grid), "valid_acc": points, "best": best,
           "at_edge": best in (min(sweep.grid), max(sweep.grid))}
    atomic_write_json(path, {**json.loads(path.read_text()), "best": best, "at_edge": out["at_edge"]})
    return out


# (encoder lr, head lr): the chosen pair, each lr alone back at the former 1.5e-4, and the former shared setting
LR_PAIRS = ((1e-4, 3e-3), (1e-4, 1e-4), (1.5e-4, 3e-3), (1.5e-4, 1.5e-4))


def lr_ablation(profile: str = "embedded", seeds: tuple[int, ...] = (0, 1, 2),
                pairs: tuple[tuple[float, float], ...] = LR_PAIRS) -> list[dict[str, Any]]:
    """Naive classification streams at every (encoder lr, head lr) pair and seed, on test: ``[{"seed",
    "encoder_lr", "head_lr", "ACC", "BWT", "R"}]``, kept in ``runs/<profile>/tuning/classification__lr_ablation.json``
    as each run finishes (an interrupted ablation resumes)."""
    path = runs_dir() / profile / "tuning" / "classification__lr_ablation.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for seed in seeds:
        exp = None
        for encoder_lr, head_lr in pairs:
            if any((r["seed"], r["encoder_lr"], r["head_lr"]) == (seed, encoder_lr, head_lr) for r in rows):
                continue
            exp = exp or setup(profile, seed=seed, benchmark="classification")
            result = exp.run(Naive(), lr=encoder_lr, head_lr=head_lr)
            rows.append({"seed": seed, "encoder_lr": encoder_lr, "head_lr": head_lr, "ACC": result.metrics()["ACC"],
                         "BWT": result.metrics()["BWT"], "R": result.R.tolist()})
            atomic_write_json(path, rows)
    return [r for r in rows if r["seed"] in seeds and (r["encoder_lr"], r["head_lr"]) in pairs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--benchmark", choices=sorted(SWEEPS), action="append",
                        help="benchmark(s) to tune (default: both)")
    parser.add_argument("--key", action="append", help="tuned value(s) to sweep (default: all of the benchmark)")
    parser.add_argument("--lr-ablation", action="store_true", help="run the classification lr ablation instead")
    args = parser.parse_args(argv)
    if args.lr_ablation:
        for r in lr_ablation(args.profile):
            print(f"seed {r['seed']}  encoder lr {r['encoder_lr']:g}  head lr {r['head_lr']:g}:  ACC {r['ACC']:.3f}  "
                  f"BWT {r['BWT']:+.3f}  topic {100 * r['R'][0][0]:.1f} % -> {100 * r['R'][-1][0]:.1f} %", flush=True)
        return
    for benchmark in args.benchmark or list(SWEEPS):
        known = [s.key for s in SWEEPS[benchmark]]
        unknown = set(args.key or []) - {k for ks in SWEEPS.values() for k in (s.key for s in ks)}
        if unknown:
            raise SystemExit(f"unknown --key {sorted(unknown)}; {benchmark} has {known}")
        exp = setup(args.profile, seed=0, benchmark=benchmark)
        for sweep in SWEEPS[benchmark]:
            if args.key and sweep.key not in args.key:
                continue
            out = run_sweep(exp, sweep)
            table = "  ".join(f"{k:g}: {v:.4f}" for k, v in out["valid_acc"].items())
            edge = "  (at the edge of the grid)" if out["at_edge"] else ""
            print(f"{benchmark} {sweep.key}: ACC on valid  {table}  -> {out['best']:g}{edge}", flush=True)


if __name__ == "__main__":
    main()
