"""Write a trained model, its tokenizer and (for EWC) the Fisher and anchors to one folder; read them back.

Layout of the folder::

    config.json, model.safetensors     save_pretrained of the model (encoder and task heads for a classifier)
    tokenizer.json, tokenizer_config.json, ...   save_pretrained of the tokenizer
    ewc_state.pt                       EWC.save: Fishers, anchors, hyper-parameters (only for an EWC run)

>>> result = exp.run(EWC(300.0, fisher_examples=64))                            # doctest: +SKIP
>>> save_trained("runs/embedded/models/ewc", result.model, exp.base.tokenizer, method=ewc)   # doctest: +SKIP
>>> model, tokenizer, ewc = load_trained("runs/embedded/models/ewc")              # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .classifier import MultiHeadClassifier
from .ewc import EWC
from .models import _causal_lm_loss, default_device

__all__ = ["EWC_STATE", "save_trained", "load_trained"]

EWC_STATE = "ewc_state.pt"


def save_trained(directory: str | Path, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 method: Any = None) -> Path:
    """Write ``model`` and ``tokenizer`` with ``save_pretrained``, and ``ewc_state.pt`` when ``method`` is an EWC.

    ``model`` must be a plain transformers model (e.g. ``result.model`` of naive, joint or EWC training). A peft
    model holds adapters: merge them first (:func:`cl_utils.lora.merged_model`) or save the adapters themselves.
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"save_trained needs a transformers PreTrainedModel, got {type(model).__name__}; for a peft "
                         "model merge the adapters first (cl_utils.lora.merged_model) or call its save_pretrained")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if isinstance(method, EWC):
        method.save(path / EWC_STATE)
    else:
        (path / EWC_STATE).unlink(missing_ok=True)  # a stale state from an earlier save must not pass for this one
    return path


def load_trained(directory: str | Path, device: torch.device | None = None
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, EWC | None]:
    """``(model, tokenizer, ewc)`` from a folder written by :func:`save_trained`; ``ewc`` is None without
    ``ewc_state.pt``. The model is in ``eval()`` mode on ``device`` (default: CUDA if available)."""
    path = Path(directory)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a folder written by save_trained")
    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    cls = MultiHeadClassifier if MultiHeadClassifier.__name__ in architectures else AutoModelForCausalLM
    device = device or default_device()
    model = cls.from_pretrained(path)
    if cls is not MultiHeadClassifier:
        model = _causal_lm_loss(model)  # as the base model had: transformers 5 warns about an unnamed loss
    model = model.to(device).eval()
    ewc = EWC.load(path / EWC_STATE, map_location=device) if (path / EWC_STATE).exists() else None
    return model, AutoTokenizer.from_pretrained(path), ewc
