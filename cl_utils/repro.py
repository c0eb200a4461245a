"""Seeding and the package versions recorded in every results file."""
from __future__ import annotations

import importlib.metadata
import platform
import random

import numpy as np
import torch

__all__ = ["set_seed", "package_versions"]

_PACKAGES = ("cl-utils", "torch", "transformers", "tokenizers", "peft", "datasets", "numpy", "gensim")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA). Same seed, same machine: identical results."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
