"""cl_utils.allocator: freed memory is reused (no fresh pages, no page faults) unless CL_MALLOC=default."""
import os
import subprocess
import sys

import pytest

PROBE = """
import resource, torch, cl_utils
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2**20); del x          # 64 MiB: above glibc's largest mmap threshold
before = faults()
for _ in range(10):
    x = torch.ones(16 * 2**20); del x
print(cl_utils.allocator.KEPT, faults() - before)
"""


def _probe(**env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_unless_told_otherwise():
    kept, kept_faults = _probe(CL_MALLOC="keep")
    default, default_faults = _probe(CL_MALLOC="default")
    assert kept and not default
    # glibc's default maps fresh pages for every block (4 KiB faults each, or 2 MiB ones where transparent huge pages
    # are "always"); kept, the same pages come back (a block or two may still move): at least 3x fewer faults
    assert kept_faults * 3 < default_faults, (kept_faults, default_faults)
