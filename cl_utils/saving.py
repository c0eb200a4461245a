"""Write a trained model, its tokenizer and the method's own state to one folder; read them back.

Layout of the folder::

    config.json, model.safetensors     save_pretrained of the model (encoder and task heads for a classifier)
    tokenizer.json, tokenizer_config.json, ...   save_pretrained of the tokenizer
    ewc_state.pt                       EWC / online EWC: Fishers, anchors, hyper-parameters
    si_state.pt, mas_state.pt          SI, MAS: importances, anchors, hyper-parameters
    replay_buffer.pt                   ER, A-GEM: the memory's rows, reservoir count and generator state

(at most one state file: the method's ``state_file``), so that training can continue on a further task.

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
from .methods import AGEM, ER, EWC, MAS, SI, Method
from .models import _causal_lm_loss, default_device

__all__ = ["EWC_STATE", "STATE_FILES", "save_trained", "load_trained"]

EWC_STATE = EWC.state_file
# state file -> how to read it back (the method's name is inside the file)
STATE_FILES = {EWC.state_file: {"ewc": EWC.load, "online_ewc": EWC.load},
               SI.state_file: {"si": SI.load}, MAS.state_file: {"mas": MAS.load},
               ER.state_file: {"er": ER.load, "agem": AGEM.load}}


def save_trained(directory: str | Path, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 method: Any = None) -> Path:
    """Write ``model`` and ``tokenizer`` with ``save_pretrained``, and ``method``'s state (``method.state_file``)
    when it has one (EWC, SI, MAS, ER, A-GEM).

    ``model`` must be a plain transformers model (e.g. ``result.model`` of naive, joint or EWC training). A peft
    model holds adapters: merge them first (:func:`cl_utils.methods.lora.merged_model`) or save the adapters themselves.
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"save_trained needs a transformers PreTrainedModel, got {type(model).__name__}; for a peft "
                         "model merge the adapters first (cl_utils.methods.lora.merged_model) or call its save_pretrained")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for name in STATE_FILES:  # a stale state from an earlier save must not pass for this one
        (path / name).unlink(missing_ok=True)
    if getattr(method, "state_file", None) in STATE_FILES:
        method.save(path / method.state_file)
    return path


def load_trained(directory: str | Path, device: torch.device | None = None
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Method | None]:
    """``(model, tokenizer, method)`` from a folder written by :func:`save_trained`; ``method`` is the EWC, SI, MAS,
    ER or A-GEM whose state file the folder holds (None without one). The model is in ``eval()`` mode on
    ``device`` (default: CUDA if available)."""
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
    method = None
    for name, loaders in STATE_FILES.items():
        if (path / name).exists():
            kind = torch.load(path / name, map_location="cpu", weights_only=True).get("method", "ewc")  # format 1: EWC
            method = loaders[kind](path / name, map_location=device)
    return model, AutoTokenizer.from_pretrained(path), method
