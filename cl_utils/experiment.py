"""What every notebook sets up the same way: profile, seed, benchmark and base model, in one object.

>>> exp = setup("smoke", seed=0)                  # doctest: +SKIP
>>> result = exp.run(Naive())                     # doctest: +SKIP
>>> exp.save(result)                              # doctest: +SKIP

``setup(..., benchmark="classification")`` builds the text-classification benchmark instead (accuracy, one head
per task, budgets from ``profile.classification``); every call above stays the same.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .benchmark import Benchmark
from .classification import classification_benchmark
from .classifier import ClassifierBase, load_classifier_base
from .config import Profile, TrainSpec, get_profile
from .data import lm_benchmark
from .methods import Method, Naive
from .models import BaseModel, default_device, load_base
from .paths import runs_dir
from .plotting import save_figure
from .repro import set_seed
from .results import load_result, results_path, save_results
from .stream import StreamResult, run_joint, run_stream, score_split
from .tuned import tuned

__all__ = ["Experiment", "setup", "BENCHMARKS"]

BENCHMARKS = ("lm", "classification")


@dataclass
class Experiment:
    profile: Profile
    seed: int
    base: BaseModel | ClassifierBase  # ClassifierBase for the classification benchmark
    benchmark: Benchmark
    device: torch.device
    progress: bool = True

    @property
    def finetune(self) -> TrainSpec:
        """Per-task training budget of this benchmark (``profile.finetune`` or ``profile.classification.finetune``)."""
        return self.profile.classification.finetune if self.benchmark.name == "classification" else self.profile.finetune

    @property
    def eval_batch_size(self) -> int:
        cls = self.benchmark.name == "classification"
        return self.profile.classification.eval_batch_size if cls else self.profile.eval_batch_size

    def fresh_model(self) -> torch.nn.Module:
        """An independent copy of the pretrained base model, on ``device``."""
        return self.base.fresh(self.device)

    def head_lr(self, value: float | None = None) -> float | None:
        """The task heads' lr, the same for every method: ``value``, else the tuned one (``cl_utils/tuned.py``);
        None without heads (the ``lm`` benchmark)."""
        if not self.benchmark.task_heads:
            return None
        return float(tuned(self.benchmark.name, "head_lr", value, profile=self.profile.name))

    def run(self, method: Method, *, valid: bool = False, head_lr: float | None = None,
            **train_overrides: Any) -> StreamResult:
        """Train ``method`` over the stream, starting from a fresh base model; every score is on ``test``.

        ``valid=True`` also scores each task's ``valid`` split at the end (``result.valid``, ``result.valid_acc``):
        for a run that a choice is made from. ``head_lr``: the task heads' lr (classification; None: the tuned one,
        which every method shares). ``train_overrides`` replace fields of the profile's fine-tuning budget for this
        method only, e.g. ``lr=3e-2`` for prompt tuning (an unknown field raises ``TypeError``).
        """
        spec = dataclasses.replace(self.finetune, **train_overrides)
        heads = self.head_lr(head_lr)
        result = run_stream(self.fresh_model(), self.benchmark, method, spec, seed=self.seed,
                            eval_batch_size=self.eval_batch_size, progress=self.progress, valid=valid, head_lr=heads)
        result.hparams = {**result.hparams, **{f"train.{k}": v for k, v in train_overrides.items()},
                          **({"train.head_lr": heads} if heads is not None else {})}
        return result

    def run_joint(self, *, valid: bool = False, head_lr: float | None = None) -> StreamResult:
        """The multitask reference (all tasks at once) on the same budget."""
        heads = self.head_lr(head_lr)
        result = run_joint(self.fresh_model(), self.benchmark, self.finetune, seed=self.seed,
                           eval_batch_size=self.eval_batch_size, progress=self.progress, valid=valid, head_lr=heads)
        if heads is not None:
            result.hparams["train.head_lr"] = heads
        return result

    def save(self, result: StreamResult, *, sweep: str | None = None, folder: Path | None = None,
             **extra: Any) -> Path:
        """Write ``result`` (atomically) to ``runs/<profile>/results/`` (or ``folder``); ``sweep`` files it under
        ``sweeps/``."""
        return save_results(result, profile=self.profile, benchmark=self.benchmark.name, seed=self.seed,
                            extra=extra or None, sweep=sweep, folder=folder)

    def baseline(self, method: str = "naive") -> StreamResult:
        """A result saved by an earlier notebook (same profile, benchmark and seed); run here if missing."""
        found = load_result(self.profile.name, self.benchmark.name, method, self.seed)
        if found is not None:
            return found
        if method not in ("naive", "joint"):
            raise FileNotFoundError(f"no saved {method!r} result for profile {self.profile.name!r}, seed {self.seed}: "
                                    f"run the notebook that produces it first")
        print(f"No saved {method!r} result for this profile and seed (01_baseline_forgetting has not run): "
              f"running it here with the same code.")
        result = self.run(Naive()) if method == "naive" else self.run_joint()
        self.save(result)
        return result

    def model_dir(self, result: StreamResult) -> Path:
        """``runs/<profile>/models/<benchmark>__<method>[__seed<k>]``: where a trained model of ``result`` is saved."""
        name = results_path(self.profile.name, self.benchmark.name, result.method, self.seed).stem
        return runs_dir() / self.profile.name / "models" / name

    @torch.no_grad()
    def score(self, model: torch.nn.Module, task_id: int, *, method: Method | None = None) -> float:
        """The benchmark's score of ``model`` on task ``task_id``'s test split, through ``method.forward``
        (default: the plain model), exactly as the stream runner evaluates it."""
        if not 0 <= task_id < len(self.benchmark.tasks):
            raise ValueError(f"task_id must be in [0, {len(self.benchmark.tasks)}), got {task_id}")
        return score_split(model, method or Method(), self.benchmark, self.benchmark.tasks[task_id].test, task_id,
                           batch_size=self.eval_batch_size, device=self.device)

    def save_figure(self, fig, name: str) -> Path:
        """``figures/<profile>/<benchmark>__<name>[__seed<k>].png``"""
        suffix = "" if self.seed == 0 else f"__seed{self.seed}"
        return save_figure(fig, self.profile.name, f"{self.benchmark.name}__{name}{suffix}")


def setup(profile: str, *, seed: int, benchmark: str = "lm", overrides: dict[str, Any] | None = None,
          progress: bool = True) -> Experiment:
    """Validate the notebook parameters, load (or pretrain once) the base model and build the benchmark.

    ``benchmark="classification"``: the encoder of ``profile.classification`` with one head per task, and its
    tasks (:mod:`cl_utils.classification`); the LM base model is not loaded.
    """
    prof = get_profile(profile, overrides)
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {list(BENCHMARKS)}")
    set_seed(seed)
    if benchmark == "classification":
        base = load_classifier_base(prof.classification)
        bench = classification_benchmark(prof.classification, base.tokenizer, base.tokenizer_key)
    else:
        base = load_base(prof, progress=progress)
        bench = lm_benchmark(prof, base.tokenizer, base.tokenizer_key)
    return Experiment(prof, seed, base, bench, default_device(), progress)
