"""Timing, peak memory and kernel probes, on a CPU or a CUDA device, and the machine they ran on.

Peak memory is the most tensor memory held at once during one call, over what was held before it: on a CPU from
torch.profiler's allocation events (``profile_memory=True``) summed in time order, on CUDA from
``torch.cuda.max_memory_allocated`` (the same probe as ``benchmarks/common.py``). The allocator's slack and Python
objects are left out.
"""
from __future__ import annotations

import gc
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["Step", "min_seconds", "peak_memory", "quiet_profiler", "sdpa_kernels", "KERNEL_NAMES", "machine_info",
           "torch_threads"]

Step = Callable[[], object]

# torch.profiler op name of each SDPA kernel -> a short name (what :func:`sdpa_kernels` reports).
KERNEL_NAMES = {
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_flash_attention": "flash (CUDA)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient (CUDA)",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def min_seconds(fn: Step, device: torch.device | str = "cpu", *, budget_s: float = 0.4, max_repeats: int = 5,
                warmup: bool = True) -> float:
    """Fastest wall time of ``fn`` over as many calls as fit in ``budget_s`` (at least one, at most
    ``max_repeats``), after one untimed warm-up call unless ``warmup=False`` (the caller has just run it).

    The minimum, not the median: on a machine shared with other jobs, the fastest call is the one they disturbed
    least, and it is the closest to what the computation itself costs (as ``timeit`` advises)."""
    device = torch.device(device)
    if warmup:
        fn()
    _sync(device)
    times: list[float] = []
    while len(times) < max_repeats and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


@contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` torch intra-op threads (0: leave the number as it is), then restore it.

    Timing on one thread is the steady choice on a shared machine: when another process holds one of two cores, every
    multi-threaded op waits at each barrier for its descheduled thread, which inflates short calls by tens of ms."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: unchanged), got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield threads or before
    finally:
        torch.set_num_threads(before)


@contextmanager
def quiet_profiler():
    """The profiler's backend writes USDT/STAGE lines to file descriptor 2 when it starts and stops: drop those,
    pass on everything else."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(("USDT:", "STAGE:")) and "profiler results will not include" not in line:
                    sys.stderr.write(line)


def peak_memory(fn: Step, device: torch.device | str = "cpu") -> float:
    """Peak extra tensor memory of one call of ``fn``, in bytes (see the module docstring)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    return max(0.0, float(max(accumulate(nbytes for _, nbytes in events), default=0)))


def sdpa_kernels(fn: Step) -> list[str]:
    """Short names of the SDPA kernels that ran during one call of ``fn`` (empty: no SDPA call, e.g. eager)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with quiet_profiler(), profile(activities=activities) as prof:
        fn()
    return sorted({KERNEL_NAMES[e.name] for e in prof.events() if e.name in KERNEL_NAMES})


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where a measurement ran: CPU model, AVX-512, cores, torch threads, load average (1, 5, 15 min), GPU."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    device = torch.device(device)
    return {"cpu": model, "avx512f": " avx512f" in flags, "cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
