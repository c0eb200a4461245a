"""Keep freed memory in the process for the next request, instead of handing it back to the OS.

glibc's ``malloc`` serves a large request (over 128 KiB at first; its threshold then adapts, up to 32 MiB) with
fresh pages from the OS (``mmap``), and unmaps them on ``free``. The kernel zero-fills each 4 KiB page on first
touch, so a tensor of that size costs a page fault per page every time it is allocated. A training step frees and
requests the same activations, logits and gradients at every step: on the embedded GPT-2 (16 x 128 tokens, logits
of 33.5 MB), a step took 189-214 ms (median 208.9) with glibc's defaults and 154-169 ms (median 166.7) with the
memory kept (AMD EPYC, AVX-512, 2 threads, five alternating runs each); a SmolLM2 EWC penalty paid about 250,000
page faults (1 GB) per step before it kept its buffers.

:func:`keep_freed_memory` sets two ``mallopt`` parameters for this process: no ``mmap`` for large requests
(``M_MMAP_MAX = 0``: they come from the heap, where freed memory is reused) and no trimming of the heap's free top
below 2 GiB (``M_TRIM_THRESHOLD``). The cost: the process keeps its peak heap size until it exits (plus up to
2 GiB it has freed). Arithmetic is untouched (PyTorch aligns every tensor to 64 bytes either way), so every result
is the same bit for bit. It runs when the package is imported; ``CL_MALLOC=default`` in the environment leaves
glibc's defaults, and off Linux/glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "KEPT"]

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4
_TRIM_BYTES = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_MAX = 0`` and ``M_TRIM_THRESHOLD = 2 GiB`` for this process; True when both were set.
    False (and nothing changed) with ``CL_MALLOC=default``, off Linux, or without glibc (e.g. musl)."""
    if os.environ.get("CL_MALLOC", "keep").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1


KEPT = keep_freed_memory()  # whether it is in effect in this process
