"""How many CPU threads recon uses, and OpenMP waits that do not burn a shared CPU.

**Thread count.** ``os.cpu_count()`` counts the machine's CPUs, not the ones this process may
use: a container limited by a cgroup CPU quota, or a process pinned with ``taskset``, still
sees every core, and a thread per core then fights for a fraction of them.
:func:`available_cpus` takes the smallest of the scheduler affinity mask
(``sched_getaffinity``) and the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``, of this process's group and its ancestors). ``run.threads=auto`` (the
default) uses that, or ``OMP_NUM_THREADS`` when the user set it lower.

**Waits.** GNU OpenMP, which torch and our compiled kernels use, keeps a thread that reaches
the end of a parallel region spinning on the CPU (up to ``GOMP_SPINCOUNT`` = 300 000 checks,
about a millisecond) before it sleeps. On a free machine that saves a wake-up; on a shared one
the spinning threads take CPU time from the thread they wait for, so a step costs several times
the CPU seconds it costs alone (issue 25: 1.8 against 0.22 CPU-s per 3dgs step at load 5 on 2
cores). :func:`prefer_passive_waits` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a
policy; it must run before libgomp is loaded (it reads the environment once, when torch is first
imported), which is why ``recon_core/__init__.py`` calls it before importing anything else.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

__all__ = [
    "available_cpus",
    "cgroup_cpu_limit",
    "parse_threads",
    "resolve_threads",
    "torch_threads",
    "prefer_passive_waits",
    "PASSIVE_WAIT_ENV",
]

PASSIVE_WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Set (unless already set) before torch loads OpenMP: idle OpenMP threads sleep instead of spinning."""

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def prefer_passive_waits(environ: dict[str, str] | None = None) -> None:
    """Ask OpenMP for passive waits, keeping any wait setting the user made
    (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``; ``RECON_OMP_ACTIVE=1`` leaves OpenMP's default).

    Only effective before the OpenMP runtime is loaded (before ``import torch``); worker
    processes inherit the variable."""
    env = os.environ if environ is None else environ
    if env.get("RECON_OMP_ACTIVE", "").strip() not in ("", "0"):
        return
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return
    env.update(PASSIVE_WAIT_ENV)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and v1 ``cpu`` controller path (from /proc/self/cgroup)."""
    v2 = v1 = None
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str | None) -> list[Path]:
    """``root/path`` and each parent folder up to ``root`` (a limit anywhere above applies)."""
    folders = [root]
    if path:
        parts = [p for p in path.strip("/").split("/") if p and p != ".."]
        for i in range(1, len(parts) + 1):
            folders.append(root.joinpath(*parts[:i]))
    return folders


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> float | None:
    """CPUs the cgroup quota allows this process (e.g. 1.5), or None when there is no quota.

    cgroup v2: ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``); v1: ``cpu.cfs_quota_us``
    (-1 for none) over ``cpu.cfs_period_us``, under ``cpu/`` or ``cpu,cpuacct/``. The smallest
    limit of the group and its ancestors counts; a group path that does not exist under
    ``root`` (a container's own cgroup namespace shows ``/``) falls back to ``root`` itself.
    """
    v2, v1 = _cgroup_paths(proc_cgroup)
    limits: list[float] = []
    for folder in _ancestors(root, v2):
        text = _read(folder / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max":
                try:
                    q, p = float(quota), float(period or 100000)
                except ValueError:
                    continue
                if q > 0 and p > 0:
                    limits.append(q / p)
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / controller
        if not base.is_dir():
            continue
        for folder in _ancestors(base, v1):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            try:
                q, p = float(quota or "-1"), float(period or "0")
            except ValueError:
                continue
            if q > 0 and p > 0:
                limits.append(q / p)
        break
    return min(limits) if limits else None


def available_cpus(
    affinity: set[int] | None = None, root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP
) -> int:
    """CPUs this process can actually use: min(affinity mask, cgroup quota), at least 1.

    A fractional quota rounds down (1.5 CPUs → 1 thread): a second thread would be throttled
    for half of every period, and the first would wait for it at every barrier.
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # not Linux
            affinity = set(range(os.cpu_count() or 1))
    n = max(1, len(affinity))
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        n = min(n, max(1, math.floor(limit + 1e-9)))
    return n


def parse_threads(value: str | int) -> int | None:
    """``"auto"`` → None; a positive integer (or its text) → that integer; else ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"'{value}' is not 'auto' or a positive integer")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", ""):
            return None
        if not text.isdigit():
            raise ValueError(f"'{value}' is not 'auto' or a positive integer")
        value = int(text)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"'{value}' is not 'auto' or a positive integer")
    return value


def resolve_threads(value: str | int = "auto") -> int:
    """The thread count for ``value``: the number itself, or for ``auto`` :func:`available_cpus`
    (capped by ``OMP_NUM_THREADS`` when that holds a positive integer)."""
    n = parse_threads(value)
    if n is not None:
        return n
    auto = available_cpus()
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        auto = min(auto, int(env))
    return auto


@contextlib.contextmanager
def torch_threads(value: str | int = "auto") -> Iterator[int]:
    """Run the block with :func:`resolve_threads`\\ (``value``) torch intra-op threads (which
    our compiled kernels follow too); the previous count is restored afterwards."""
    import torch

    n = resolve_threads(value)
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
