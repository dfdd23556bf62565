"""recon_core.memory.keep_freed_memory: freed large blocks are reused without page faults (issue 21)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recon_core import memory

# a clean process: allocate and free 2.7 MB blocks (hash-table gradients) and count page faults
_CYCLE = r"""
import resource, sys, torch
from recon_core import memory
if sys.argv[1] == "keep" and not memory.keep_freed_memory():
    raise SystemExit(3)
keep = torch.ones(1 << 20)
def cycle(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):  # as a training step: several alive at once, all freed at its end
        ts = [torch.zeros(339448, 2) + 1 for _ in range(4)]
        del ts
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
cycle(10)
print(cycle(40))
"""


def _faults(mode: str) -> int:
    env = dict(os.environ)
    if mode == "default":  # glibc's initial thresholds (128 KiB), without its dynamic raising
        env.update(MALLOC_TRIM_THRESHOLD_="131072", MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", _CYCLE, mode], capture_output=True, text=True, check=False, env=env)
    if out.returncode == 3:
        pytest.skip("not glibc")
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_keep_freed_memory_reuses_large_blocks() -> None:
    if memory._MALLOPT is None:
        pytest.skip("not glibc")
    kept, default = _faults("keep"), _faults("default")
    assert kept <= 2 * 660, kept  # 660 pages a block when it is faulted in anew: at most twice in 40 cycles
    assert default > 10 * 660, default  # returned to the kernel at every cycle's end
