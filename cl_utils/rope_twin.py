"""A RoPE twin of the config-built GPT-2: a ``LlamaForCausalLM`` of the same width, depth, heads and tokenizer,
pretrained once on the same Wikipedia training documents at context L, and cached like the base model.

The GPT-2 of the ``embedded`` profile has learned absolute positions (``wpe``: one vector per position up to
``n_positions``), so a longer context has no position vectors at all. Rotary position embeddings (RoPE, Su et al.
2021) rotate each query/key pair of dimensions by an angle proportional to the position, so any length can be fed,
and position interpolation, NTK-aware scaling and YaRN only change those angles (``cl_utils.context_extension``).

Differences from GPT-2 other than positions are Llama's: RMSNorm, a SwiGLU MLP (its width ``8 d / 3`` rounded
up to a multiple of 8 keeps the parameter count close to GPT-2's 4 d two-matrix MLP) and no biases. Embeddings
are tied, as in GPT-2.

Two twins: ``rope_theta`` = 10,000 (plain RoPE), and the NTK-aware base ``theta * s^(d / (d - 2))`` for a target
of s times L (bloc97 2023; "NTK-aware training": pretrain with the base the extension will need).
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import queue
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .cache import cached_dir
from .config import Profile, TrainSpec, fingerprint, get_profile
from .data import load_lm_corpus
from .display import progress_bar
from .models import default_device, load_tokenizer, pretrain_and_save
from .paths import cache_dir
from .repro import set_seed
from .splits import SPLIT_VERSION

__all__ = ["ntk_theta", "twin_config", "load_twin", "load_twins", "twin_init"]

_TWIN_VERSION = 1  # bump when the twin's pretraining changes, to invalidate cached twins


def ntk_theta(theta: float, factor: float, head_dim: int) -> float:
    """NTK-aware RoPE base for a context ``factor`` times longer: ``theta * factor^(d / (d - 2))``.

    It keeps the highest frequency (dimension pair 0) unchanged and stretches the lowest by ``factor``.
    """
    if factor < 1 or head_dim < 4 or head_dim % 2:
        raise ValueError(f"ntk_theta needs factor >= 1 and an even head_dim >= 4, got {factor}, {head_dim}")
    return float(theta * factor ** (head_dim / (head_dim - 2)))


def twin_config(profile: Profile, tokenizer: PreTrainedTokenizerBase, *, train_context: int,
                rope_theta: float) -> LlamaConfig:
    """The Llama config matching the profile's GPT-2 (width, layers, heads, vocabulary), with plain RoPE of base
    ``rope_theta`` and ``max_position_embeddings = train_context``."""
    m = profile.model
    if m.kind != "gpt2_config":
        raise ValueError(f"profile {profile.name!r} has no config-built GPT-2 to twin (model kind {m.kind!r})")
    ffn = 8 * math.ceil(8 * m.n_embd / 3 / 8)
    eos = tokenizer.eos_token_id
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=m.n_embd, intermediate_size=ffn,
                       num_hidden_layers=m.n_layer, num_attention_heads=m.n_head, num_key_value_heads=m.n_head,
                       max_position_embeddings=train_context, tie_word_embeddings=True, attention_dropout=m.dropout,
                       rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
                       bos_token_id=eos, eos_token_id=eos, pad_token_id=None)


def twin_init(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """The twin before pretraining: the same random weights its pretraining started from (``set_seed(seed)``)."""
    set_seed(seed)
    model = LlamaForCausalLM(config)
    model.loss_type = "ForCausalLM"
    return model


def _twin_dir(profile: Profile, config: LlamaConfig, tok_key: str, pretrain: TrainSpec) -> Path:
    """Where the twin of ``config`` is cached: the key covers everything that shapes its weights."""
    shape = {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "max_position_embeddings", "attention_dropout")}
    theta = config.rope_parameters["rope_theta"]
    key = fingerprint(shape, theta, pretrain, profile.pretrain_corpus, config.max_position_embeddings,
                      profile.pretrain_seed, tok_key, SPLIT_VERSION, _TWIN_VERSION)
    return cache_dir() / f"rope-twin-{profile.name}-{key}"


def load_twin(profile_name: str, *, train_context: int, rope_theta: float, pretrain: TrainSpec,
              progress: bool = True, on_step: Callable[[], None] | None = None,
              ) -> tuple[Path, PreTrainedTokenizerBase, dict[str, Any]]:
    """The pretrained twin of ``profile_name``'s GPT-2: ``(folder, tokenizer, info)``, pretraining and caching it
    under ``runs/cache/rope-twin-<profile>-<hash>/`` on first use. ``info`` holds the pretraining losses, seconds,
    parameter count and ``eval_score`` (-NLL per token on the corpus's test split, blocks of L, as for the base
    model). It trains on the train split only. The key covers everything that shapes the weights.
    ``on_step``: called after every pretraining step (how :func:`load_twins` counts its workers' steps)."""
    profile = get_profile(profile_name)
    tokenizer, tok_key = load_tokenizer(profile)
    config = twin_config(profile, tokenizer, train_context=train_context, rope_theta=rope_theta)
    device = default_device()

    def build(tmp: Path) -> None:
        task = load_lm_corpus(profile.pretrain_corpus, tokenizer, train_context, tok_key)  # train split only
        model = twin_init(config, profile.pretrain_seed).to(device)
        pretrain_and_save(model, tokenizer, task, pretrain, tmp, seed=profile.pretrain_seed,
                          eval_batch_size=profile.eval_batch_size, progress=progress, after_step=on_step,
                          desc=f"pretrain RoPE twin (theta {rope_theta:g}) at L={train_context}",
                          info={"train_context": train_context, "rope_theta": rope_theta,
                                "threads": torch.get_num_threads()})

    path = cached_dir(_twin_dir(profile, config, tok_key, pretrain), build)
    return path, tokenizer, json.loads((path / "pretraining.json").read_text())


_STEPS: Any = None  # a worker's queue of finished steps (set by _init_worker)


def _init_worker(steps, threads: int) -> None:
    global _STEPS
    _STEPS = steps
    torch.set_num_threads(threads)


def _pretrain_in_worker(profile_name: str, train_context: int, rope_theta: float, pretrain: TrainSpec) -> None:
    load_twin(profile_name, train_context=train_context, rope_theta=rope_theta, pretrain=pretrain, progress=False,
              on_step=lambda: _STEPS.put(1))


def load_twins(profile_name: str, thetas: list[float], *, train_context: int, pretrain: TrainSpec,
               processes: int = 1, progress: bool = True) -> list[tuple[Path, PreTrainedTokenizerBase, dict[str, Any]]]:
    """:func:`load_twin` for each RoPE base in ``thetas``. With ``processes`` > 1 on a CPU, the twins not cached yet
    pretrain at the same time, one process each, the cores shared out (one progress bar counts all their steps).

    Why, measured on the 2-core AMD EPYC with the embedded twins (300 steps of 16 x 128 tokens): two one-thread
    processes took 100 s for both (333 ms per step each), where one two-thread process takes 211 ms per step, about
    127 s for the pair one after the other. When another job held a core, a two-thread step took 3.5 to 5 s (each
    op waits at every barrier for its descheduled thread), a one-thread step about 0.33 to 0.7 s. A twin pretrained
    with other threads differs from the same twin pretrained with two threads by float rounding only."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    profile = get_profile(profile_name)
    tokenizer, tok_key = load_tokenizer(profile)
    missing = [t for t in thetas if not _twin_dir(profile, twin_config(
        profile, tokenizer, train_context=train_context, rope_theta=t), tok_key, pretrain).exists()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(processes, len(missing), cores)
    if workers > 1 and default_device().type == "cpu":
        load_lm_corpus(profile.pretrain_corpus, tokenizer, train_context, tok_key)  # cached once, not per worker
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started its thread pools
        steps = ctx.Queue()
        bar = progress_bar(None, total=pretrain.steps * len(missing), enabled=progress,
                           desc=f"pretrain {len(missing)} RoPE twins at L={train_context}, {workers} processes")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(steps, max(1, cores // workers))) as pool:
            jobs = [pool.submit(_pretrain_in_worker, profile_name, train_context, t, pretrain) for t in missing]
            while not all(job.done() for job in jobs):
                with contextlib.suppress(queue.Empty):
                    bar.update(steps.get(timeout=0.5))
            for job in jobs:
                job.result()  # a worker's error is raised here
        bar.close()
    return [load_twin(profile_name, train_context=train_context, rope_theta=t, pretrain=pretrain, progress=progress)
            for t in thetas]
