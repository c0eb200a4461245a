"""Budgets of notebook 07 (attention cost and context extension), one :class:`ContextSpec` per profile.

The profile (``cl_utils.config``) still fixes the tokenizer, the Wikipedia corpus and the model width; this spec
adds what only 07 needs: the sweep lengths of the attention-cost measurements, and the RoPE twin's context L,
pretraining and extension fine-tune budgets. Override any field from the notebook, e.g.
``context_spec("embedded", {"finetune.steps": 10, "factor": 2.0})``; an unknown field raises ``ValueError``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import PROFILES, TrainSpec

__all__ = ["ContextSpec", "CONTEXT_SPECS", "context_spec"]


@dataclass(frozen=True)
class ContextSpec:
    twin_profile: str  # the config-built profile whose tokenizer, Wikipedia split and width the RoPE twin copies
    layer_lengths: tuple[int, ...]  # sweep of one attention layer (Part A)
    model_lengths: tuple[int, ...]  # sweep of the whole GPT-2 (Part A)
    train_context: int  # L: the RoPE twins are pretrained on blocks of L tokens
    pretrain: TrainSpec  # each twin's pretraining at L (two twins: plain RoPE and NTK-aware base)
    finetune: TrainSpec  # the extension fine-tune at factor * L (linear and yarn); lr 2e-4 is where the twin's
    # pretraining schedule ends (1e-3 ended 30 linear steps at a higher training loss: 5.71 against 5.67, last 10 steps)
    multiples: tuple[int, ...] = (1, 2, 4, 8)  # evaluation lengths, in units of L (must hold 1 and factor)
    factor: float = 4.0  # RoPE scaling factor of linear / dynamic / yarn: the extension target is factor * L
    rope_theta: float = 10_000.0  # RoPE base of the plain twin
    ntk_factor: float = 8.0  # ntk_trained twin: base rope_theta * ntk_factor^(d / (d - 2)) (NTK-aware, bloc97 2023)
    twin_processes: int = 2  # the twins not cached yet pretrain at once, one process each (1: one after another)
    max_windows: int = 16  # held-out windows of the longest length scored (the same tokens at every length)
    eval_batch_size: int = 8  # windows per evaluation batch
    max_call_s: float = 2.5  # Part A: a variant stops once its next call would take longer than this
    timing_budget_s: float = 0.15  # Part A: seconds of repeats per timed point (fastest of at most 5 calls)
    timing_threads: int = 1  # Part A: torch threads while timing (1: steady on a shared machine; 0: as set)
    dispatch_length: int = 1024  # Part A: n of the table of when SDPA's fused kernel is not used
    native_lengths: tuple[int, ...] = ()  # the profile's own pretrained RoPE model (smollm2) at these lengths
    native_factor: float = 2.0  # its yarn factor beyond its max_position_embeddings
    native_windows: int = 1  # its held-out windows of the longest native length

    def __post_init__(self) -> None:
        if self.twin_profile not in PROFILES or PROFILES[self.twin_profile].model.kind != "gpt2_config":
            raise ValueError(f"ContextSpec: twin_profile must be a config-built profile "
                             f"({[n for n, p in PROFILES.items() if p.model.kind == 'gpt2_config']}), "
                             f"got {self.twin_profile!r}")
        for name in ("layer_lengths", "model_lengths", "multiples"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)) or min(values) < 1:
                raise ValueError(f"ContextSpec: {name} must be increasing positive integers, got {values}")
        if self.factor < 1 or self.ntk_factor < 1 or self.native_factor < 1:
            raise ValueError(f"ContextSpec: factors must be >= 1, got factor={self.factor}, "
                             f"ntk_factor={self.ntk_factor}, native_factor={self.native_factor}")
        if 1 not in self.multiples or self.factor not in self.multiples:
            raise ValueError(f"ContextSpec: multiples {self.multiples} must hold 1 (L) and factor={self.factor} "
                             f"(the extension target)")
        if self.train_context < 2 or min(self.max_windows, self.eval_batch_size, self.twin_processes) < 1:
            raise ValueError("ContextSpec: train_context must be >= 2, max_windows, eval_batch_size and "
                             "twin_processes >= 1")
        if self.timing_threads < 0 or self.max_call_s <= 0 or self.timing_budget_s < 0:
            raise ValueError(f"ContextSpec: timing_threads must be >= 0 (0: as set), max_call_s > 0 and "
                             f"timing_budget_s >= 0, got {self.timing_threads}, {self.max_call_s}, "
                             f"{self.timing_budget_s}")

    @property
    def lengths(self) -> list[int]:
        """Evaluation lengths in tokens: L times each multiple."""
        return [self.train_context * m for m in self.multiples]

    @property
    def target(self) -> int:
        """The extension target factor * L (the fine-tune's block length)."""
        return int(self.train_context * self.factor)


_EMBEDDED = ContextSpec(
    twin_profile="embedded",
    layer_lengths=(128, 256, 512, 1024, 2048, 4096, 8192),
    model_lengths=(128, 256, 512, 1024, 2048),
    train_context=128,
    pretrain=TrainSpec(steps=300, batch_size=16, lr=2e-3, warmup_steps=30),
    finetune=TrainSpec(steps=30, batch_size=4, lr=2e-4, warmup_steps=3),
)

CONTEXT_SPECS: dict[str, ContextSpec] = {
    "embedded": _EMBEDDED,
    "smoke": ContextSpec(
        twin_profile="smoke", layer_lengths=(32, 64, 128, 256), model_lengths=(32, 64, 128), train_context=32,
        pretrain=TrainSpec(steps=20, batch_size=8, lr=3e-3, warmup_steps=2),
        finetune=TrainSpec(steps=4, batch_size=4, lr=2e-4, warmup_steps=1), twin_processes=1, max_windows=4,
        max_call_s=1.0, timing_budget_s=0.02, dispatch_length=64),
    # The twin and sweeps of embedded, plus SmolLM2-135M itself up to and beyond its 8,192 positions (yarn).
    "smollm2": dataclasses.replace(_EMBEDDED, native_lengths=(2048, 8192, 16384)),
    "gpt2": dataclasses.replace(_EMBEDDED, layer_lengths=_EMBEDDED.layer_lengths + (16384, 32768),
                                model_lengths=_EMBEDDED.model_lengths + (4096, 8192)),
}


def context_spec(profile: str, overrides: dict[str, Any] | None = None) -> ContextSpec:
    """The :class:`ContextSpec` of ``profile`` with ``overrides`` applied (``"finetune.steps"`` reaches into
    the TrainSpecs); an unknown profile or field raises ``ValueError`` naming the valid ones."""
    if profile not in CONTEXT_SPECS:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {sorted(CONTEXT_SPECS)}")
    spec = CONTEXT_SPECS[profile]
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        valid = [f.name for f in dataclasses.fields(spec)]
        if head not in valid:
            raise ValueError(f"unknown ContextSpec field {key!r}; valid: {valid}")
        if rest:
            child = getattr(spec, head)
            if not dataclasses.is_dataclass(child) or rest not in [f.name for f in dataclasses.fields(child)]:
                raise ValueError(f"unknown field {key!r}: {head!r} has no field {rest!r}")
            value = dataclasses.replace(child, **{rest: value})
        elif isinstance(value, list):
            value = tuple(value)
        spec = dataclasses.replace(spec, **{head: value})
    return spec
