"""Where independent GoP fits run: this process, local worker processes, or a Ray cluster.

An executor maps a picklable, module-level function over a lazily produced stream of jobs and
yields results as they finish (any order). At most ``2 × workers`` jobs are in flight, so only
a few GoPs' frames are in memory at once, however long the video.

* ``inline``: in this process (tests, debugging), with ``threads_per_worker`` torch threads.
* ``local``: ``workers`` spawned processes, each limited to ``threads_per_worker`` torch threads
  (by default ``cores // workers``, at least 1: on a 2-core machine two single-threaded workers,
  which beats one two-threaded process for these small per-step kernels).
* ``ray``: Ray tasks on the cluster at ``address`` (or a local Ray instance when empty), each
  reserving ``threads_per_worker`` CPUs. Ray is optional (``pip install 'recon[ray]'``).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch

from recon_core import InputError
from recon_core.threads import available_cpus

__all__ = ["EXECUTORS", "Executor", "InlineExecutor", "LocalProcessExecutor", "RayExecutor", "make_executor", "cpu_count"]

EXECUTORS = ("local", "inline", "ray")


def cpu_count() -> int:
    """CPUs this process may use: affinity mask and cgroup quota (:func:`recon_core.threads.available_cpus`)."""
    return available_cpus()


class Executor(Protocol):
    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        """Yield ``fn(job)`` for every job, in completion order."""
        ...

    def close(self) -> None:
        """Stop workers and cancel jobs not started (idempotent)."""
        ...


class InlineExecutor:
    """Runs every job in this process, one after the other, with ``threads`` torch threads
    (0: leave the process setting alone); the previous setting is restored after each job."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        for job in jobs:
            before = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                result = fn(job)
            finally:
                torch.set_num_threads(before)
            yield result

    def close(self) -> None:
        pass


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


class LocalProcessExecutor:
    """A pool of spawned worker processes with a bounded number of jobs in flight."""

    def __init__(self, workers: int, threads_per_worker: int) -> None:
        self.workers, self.threads = workers, threads_per_worker
        self._pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(self.threads,))
        pending: set[Future] = set()
        it = iter(jobs)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.workers:
                job = next(it, None)
                if job is None:
                    exhausted = True
                else:
                    pending.add(self._pool.submit(fn, job))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Ray tasks, each reserving ``threads_per_worker`` CPUs; results stream back as they finish."""

    def __init__(self, address: str, threads_per_worker: int, max_in_flight: int, local_cpus: int) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("executor 'ray' needs the package 'ray' (pip install 'recon[ray]' or pip install ray)") from None
        self.ray = ray
        self.threads = threads_per_worker
        self.max_in_flight = max_in_flight
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = local_cpus
            ray.init(**kwargs)
            self._started = True

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        ray = self.ray
        remote = ray.remote(num_cpus=self.threads)(_ray_call)
        pending: deque = deque()
        it = iter(jobs)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.max_in_flight:
                job = next(it, None)
                if job is None:
                    exhausted = True
                else:
                    pending.append(remote.remote(fn, job, self.threads))
            if not pending:
                return
            done, rest = ray.wait(list(pending), num_returns=1)
            pending = deque(rest)
            for ref in done:
                yield ray.get(ref)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def _ray_call(fn: Callable[[Any], Any], job: Any, threads: int) -> Any:
    torch.set_num_threads(threads)
    return fn(job)


def make_executor(name: str, *, jobs: int, workers: int = 0, threads_per_worker: int = 0, address: str = "") -> Executor:
    """Build the executor ``name`` for ``jobs`` jobs; 0 means automatic for workers/threads."""
    cores = cpu_count()
    if name == "inline":
        return InlineExecutor(threads_per_worker)
    if name == "local":
        n = workers or max(1, min(cores, jobs))
        threads = threads_per_worker or max(1, cores // n)
        if n == 1:  # one GoP or one core: no process to spawn
            return InlineExecutor(threads)
        return LocalProcessExecutor(n, threads)
    if name == "ray":
        threads = threads_per_worker or 1
        return RayExecutor(address, threads, max_in_flight=max(2, 2 * (workers or cores)), local_cpus=workers or cores)
    raise InputError(f"unknown executor '{name}'; choose one of {', '.join(EXECUTORS)}")
