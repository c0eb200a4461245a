"""``python -m cl_utils run``: one method's stream from the command line, through the code the notebooks use.

    python -m cl_utils run --profile embedded --benchmark lm --method ewc --seed 0 --set lam=10
    python -m cl_utils run --profile smoke --benchmark classification --method er --set memory=0.05 \\
        --set classification.finetune.steps=10 --results-dir /tmp/sweep

It writes the same results file a notebook writes (``<benchmark>__<method>[__seed<k>].json``, in
``runs/<profile>/results/`` or ``--results-dir``) and prints its path on stdout; progress goes to stderr. Every
check of the input (names, ``--set`` keys and values, whether the method fits the benchmark) runs before the base
model is loaded or anything is trained, and a bad input exits with status 2 and one line that says what was wrong
and what is valid, having written nothing.

``--set key=value`` (repeatable; values are Python literals, else strings):

- a parameter of the method (``lam=3000``, ``memory=0.05``; ``python -m cl_utils run --help`` lists them);
- a field of the method's training budget for this run only (``lr=3e-3``, ``steps=40``), as the notebooks give
  prompts and LoRA their own learning rate;
- a dotted profile override (``finetune.steps=40``, ``classification.finetune.lr=1e-4``), as a notebook's
  ``OVERRIDES``.

Parameters left out take the notebooks' values: the tuned ones of :mod:`cl_utils.tuned` where the notebooks use
them (SI's and MAS's λ, LwF's α, the prompts' and LoRA's learning rates), else the method's defaults. EWC's λ and
ER's memory are chosen by a sweep in 02 and 06, so EWC needs ``lam``; ER and A-GEM default to their class default.

Under ``torchrun`` (``torchrun --standalone --nproc_per_node N -m cl_utils run ...``, the same flags) the stream trains
with DistributedDataParallel (:mod:`cl_utils.distributed`): the checks also refuse a method that cannot run
distributed and a batch smaller than N; rank 0 alone writes the results file and prints its path and progress.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import distributed
from .distributed import SUPPORTED, env_world_size

__all__ = ["main", "parse_sets", "plan"]

BENCHMARKS = ("lm", "classification")
REFERENCES = {"joint": "the multitask reference: every task at once, same budget (no parameters)"}
# method -> {its parameter: the cl_utils.tuned key the notebooks fill it from}
TUNED_PARAMETERS = {"si": {"lam": "si_lambda"}, "mas": {"lam": "mas_lambda", "examples": "fisher_examples"},
                    "lwf": {"alpha": "lwf_alpha"},
                    "ewc": {"fisher_examples": "fisher_examples"}, "online_ewc": {"fisher_examples": "fisher_examples"}}
# method -> the cl_utils.tuned key of its own learning rate (a training-budget override, as in 03 and 04)
TUNED_LR = {"progressive_prompts": "prompt_lr", "lora_sequential": "lora_lr", "lora_per_task": "lora_lr",
            "olora": "lora_lr", "olora_no_penalty": "lora_lr"}
HEADS_ONLY = {"linear_probe"}  # methods that need one head per task (the classification benchmark)


class BadInput(ValueError):
    """What the user asked for cannot run; the message says what is valid."""


@dataclasses.dataclass
class Plan:
    """Everything checked, nothing loaded: what :func:`run` will do."""

    profile: str
    benchmark: str
    method: str
    seed: int
    method_kwargs: dict[str, Any]
    train_overrides: dict[str, Any]
    profile_overrides: dict[str, Any]
    results_dir: Path | None
    valid: bool


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["lam=3000", "finetune.steps=40"]`` -> ``{"lam": 3000, "finetune.steps": 40}`` (values as Python literals)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set {item!r}: expected key=value, e.g. --set lam=3000 or --set finetune.steps=40")
        if key.strip() in out:
            raise BadInput(f"--set {key.strip()!r} is given twice")
        out[key.strip()] = _literal(value.strip())
    return out


def _method_names() -> list[str]:
    from .methods import METHODS

    return sorted(METHODS) + sorted(REFERENCES)


def _train_fields() -> list[str]:
    from .config import TrainSpec

    return [f.name for f in dataclasses.fields(TrainSpec)]


def plan(profile: str, benchmark: str, method: str, seed: int, sets: dict[str, Any], *,
         results_dir: str | None = None, valid: bool = False) -> Plan:
    """Check every input and split ``sets`` into method, training and profile settings; raises :class:`BadInput`."""
    from .config import PROFILES, get_profile
    from .methods import make_method, method_parameters
    from .tuned import tuned

    if profile not in PROFILES:
        raise BadInput(f"unknown profile {profile!r}; valid: {', '.join(sorted(PROFILES))}")
    if benchmark not in BENCHMARKS:
        raise BadInput(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    if method not in _method_names():
        raise BadInput(f"unknown method {method!r}; valid: {', '.join(_method_names())}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BadInput(f"--seed must be an integer >= 0, got {seed!r}")
    if method in HEADS_ONLY and benchmark != "classification":
        raise BadInput(f"method {method!r} needs one head per task: use --benchmark classification")

    accepted = {} if method in REFERENCES else method_parameters(method)
    method_kwargs = {k: v for k, v in sets.items() if k in accepted}
    train = {k: v for k, v in sets.items() if k not in accepted and k in _train_fields()}
    overrides = {k: v for k, v in sets.items() if k not in accepted and k not in train}
    undotted = sorted(k for k in overrides if "." not in k)
    if undotted:
        valid_keys = ", ".join([*accepted, *_train_fields()]) or "(none)"
        raise BadInput(f"--set {undotted[0]!r} is not a parameter of {method!r} nor a training field; valid: "
                       f"{valid_keys}, or a dotted profile override such as finetune.steps")
    if method in REFERENCES and train:
        raise BadInput(f"{method!r} trains on the profile's budget: set it with a dotted override "
                       f"(e.g. finetune.steps), not {sorted(train)}")
    try:
        prof = get_profile(profile, overrides)
    except (ValueError, TypeError, KeyError) as e:
        raise BadInput(f"--set: {e}") from None

    for key, tuned_key in TUNED_PARAMETERS.get(method, {}).items():
        method_kwargs.setdefault(key, tuned(benchmark, tuned_key, profile=profile))
    if "seed" in accepted:
        method_kwargs.setdefault("seed", seed)
    if method in TUNED_LR:
        train.setdefault("lr", tuned(benchmark, TUNED_LR[method], profile=profile))
    if method not in REFERENCES:
        try:
            make_method(method, **method_kwargs)  # its own checks of the values, before anything is loaded
        except (ValueError, TypeError) as e:
            raise BadInput(str(e)) from None
        spec = prof.classification.finetune if benchmark == "classification" else prof.finetune
        try:
            dataclasses.replace(spec, **train)
        except (ValueError, TypeError) as e:
            raise BadInput(f"--set {sorted(train)}: {e}") from None
    world = env_world_size()
    if world > 1 and method not in SUPPORTED:
        raise BadInput(f"method {method!r} cannot run in {world} processes; the ones that can: "
                       f"{', '.join(sorted(SUPPORTED))}")
    batch = (prof.classification.finetune if benchmark == "classification" else prof.finetune).batch_size
    batch = train.get("batch_size", batch)
    if batch < world:
        raise BadInput(f"a batch of {batch} rows cannot be shared by {world} processes (one row each at least): "
                       f"--set batch_size={world} or more")
    folder = Path(results_dir) if results_dir else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise BadInput(f"--results-dir {results_dir!r} exists and is not a folder")
    return Plan(profile, benchmark, method, seed, method_kwargs, train, overrides, folder, valid)


def run(p: Plan) -> Path | None:
    """Run the planned stream and write its results file; returns the file's path (None on a rank other than 0)."""
    from .experiment import setup
    from .methods import make_method

    distributed.init()  # under torchrun: join the group (nothing in one process)
    with distributed.main_first():  # rank 0 builds or loads the caches, then the others read them
        exp = setup(p.profile, seed=p.seed, benchmark=p.benchmark, overrides=p.profile_overrides,
                    progress=distributed.is_main())
    if p.method in REFERENCES:
        result = exp.run_joint(valid=p.valid)
    else:
        result = exp.run(make_method(p.method, **p.method_kwargs), valid=p.valid, **p.train_overrides)
    path = exp.save(result, folder=p.results_dir) if distributed.is_main() else None  # only rank 0 writes
    distributed.finish()
    return path


def _usage_epilog() -> str:
    from .config import PROFILES
    from .methods import method_parameters

    lines = ["profiles:   " + ", ".join(sorted(PROFILES)), "benchmarks: " + ", ".join(BENCHMARKS), "methods and their parameters (--set key=value):"]
    for name in sorted(_method_names()):
        if name in REFERENCES:
            lines.append(f"  {name:20s} {REFERENCES[name]}")
            continue
        params = []
        for k, d in method_parameters(name).items():
            tuned_key = TUNED_PARAMETERS.get(name, {}).get(k)
            default = ("required" if d is inspect.Parameter.empty else repr(d)) if tuned_key is None else "tuned"
            params.append(f"{k}={default}" if k != "seed" else "seed=--seed")
        lr = ", lr=tuned" if name in TUNED_LR else ""
        lines.append(f"  {name:20s} {', '.join(params) or '(none)'}{lr}")
    lines += ["training fields (this run only): " + ", ".join(_train_fields()),
              "profile overrides: dotted keys, e.g. finetune.steps=40, classification.finetune.lr=1e-4"]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    epilog = _usage_epilog()
    parser = _Parser(prog="python -m cl_utils", description="Continual-learning streams from the command line.",
                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train one method over a benchmark's stream and write its results file",
                       description="Train one method over a benchmark's stream (the notebooks' code) and write its "
                                   "results file; its path goes to stdout, progress to stderr.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--profile", required=True, help="e.g. embedded (offline default), smoke, smollm2, gpt2")
    r.add_argument("--benchmark", required=True, help="lm or classification")
    r.add_argument("--method", required=True, help="a method name (below) or joint")
    r.add_argument("--seed", type=int, default=0, help="the stream's seed (default 0)")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter, a training field or a dotted profile override (repeatable)")
    r.add_argument("--results-dir", default=None,
                   help="folder for the results file (default runs/<profile>/results)")
    r.add_argument("--valid", action="store_true", help="also score every task's valid split at the end (for choices)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        p = plan(args.profile, args.benchmark, args.method, args.seed, parse_sets(args.sets),
                 results_dir=args.results_dir, valid=args.valid)
    except BadInput as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank refuses; one says so
            print(f"python -m cl_utils run: error: {e}", file=sys.stderr)
        return 2
    main_rank = os.environ.get("RANK", "0") == "0"
    # what the notebooks' code prints is progress here: rank 0's goes to stderr, the other ranks' nowhere
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(sys.stderr if main_rank else quiet):
        path = run(p)
    if path is not None:
        print(path)
    return 0
