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

Progress and stopping: a job's function reaches its executor through :func:`worker_link`:
``link.progress(index, step, total)`` reports (throttled to a few messages per second in worker
processes) and ``link.should_stop()`` says to hand back what it has. ``map_unordered`` passes
the reports to ``on_progress`` and, once ``should_stop()`` (the caller's) is true, asks every
running job to stop and starts no new one; the jobs' early results are yielded as usual.
Local worker processes start with SIGINT ignored and then take SIGINT/SIGTERM as a stop request
(a terminal's Ctrl-C reaches the whole process group), so they stop within a step, never in the
middle of one. Ray tasks are cancelled on a stop request (their GoPs are fitted again on resume).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch

from recon_core import InputError
from recon_core.threads import available_cpus

__all__ = ["EXECUTORS", "Executor", "InlineExecutor", "LocalProcessExecutor", "RayExecutor", "make_executor", "cpu_count",
           "WorkerLink", "worker_link"]

EXECUTORS = ("local", "inline", "ray")

Progress = Callable[[int, int, int], None]


class WorkerLink:
    """What a running job sees of its executor: where to report progress, whether to stop."""

    def __init__(self, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        self._progress = progress
        self._should_stop = should_stop

    def progress(self, index: int, step: int, total: int) -> None:
        if self._progress is not None:
            self._progress(index, step, total)

    def should_stop(self) -> bool:
        return self._should_stop is not None and bool(self._should_stop())


_LINK = WorkerLink()


def worker_link() -> WorkerLink:
    """The link of the job running in this process (a silent one outside executors)."""
    return _LINK


@contextlib.contextmanager
def _linked(link: WorkerLink) -> Iterator[None]:
    global _LINK
    previous, _LINK = _LINK, link
    try:
        yield
    finally:
        _LINK = previous


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in this (main) thread while worker processes are spawned: they inherit the
    disposition, so a Ctrl-C cannot kill one before :func:`_init_worker` installs its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cpu_count() -> int:
    """CPUs this process may use: affinity mask and cgroup quota (:func:`recon_core.threads.available_cpus`)."""
    return available_cpus()


class Executor(Protocol):
    parallel: int
    """How many jobs run at the same time (a time budget's waves)."""
    in_process: bool
    """Whether jobs run in this process (their CPU time is then this process's)."""

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any], on_progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
        """Yield ``fn(job)`` for every job, in completion order (see the module docstring)."""
        ...

    def close(self, force: bool = False) -> None:
        """Stop workers and cancel jobs not started (idempotent); ``force`` kills running ones."""
        ...


class InlineExecutor:
    """Runs every job in this process, one after the other, with ``threads`` torch threads
    (0: leave the process setting alone); the previous setting is restored after each job."""

    parallel = 1
    in_process = True

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any], on_progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
        stop = should_stop or (lambda: False)
        for job in jobs:
            if stop():
                return
            before = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                with _linked(WorkerLink(on_progress, stop)):
                    result = fn(job)
            finally:
                torch.set_num_threads(before)
            yield result

    def close(self, force: bool = False) -> None:
        pass


class _QueueProgress:
    """Worker side of progress reports: at most one message per ``interval`` seconds per job
    (and always the first and the last step)."""

    def __init__(self, q: Any, interval: float = 0.5) -> None:
        self.q, self.interval, self.last = q, interval, 0.0

    def __call__(self, index: int, step: int, total: int) -> None:
        now = time.monotonic()
        if step == total or now - self.last >= self.interval:
            self.last = now
            with contextlib.suppress(Exception):  # progress is best-effort
                self.q.put_nowait((index, step, total))


_STOP_SIGNAL = threading.Event()  # set by SIGINT/SIGTERM in a worker process


def _init_worker(threads: int, stop_event: Any = None, progress_queue: Any = None) -> None:
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: _STOP_SIGNAL.set())
    global _LINK
    progress = _QueueProgress(progress_queue) if progress_queue is not None else None
    _LINK = WorkerLink(progress, lambda: _STOP_SIGNAL.is_set() or (stop_event is not None and stop_event.is_set()))


class LocalProcessExecutor:
    """A pool of spawned worker processes with a bounded number of jobs in flight."""

    in_process = False

    def __init__(self, workers: int, threads_per_worker: int) -> None:
        self.workers, self.threads = workers, threads_per_worker
        self.parallel = workers
        self._pool: ProcessPoolExecutor | None = None
        self._stop_event: Any = None

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any], on_progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
        ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        stop_event, progress_queue = ctx.Event(), ctx.Queue()
        self._stop_event = stop_event
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(self.threads, stop_event, progress_queue))
        stop = should_stop or (lambda: False)

        def drain() -> None:
            while True:
                try:
                    message = progress_queue.get_nowait()
                except (queue.Empty, OSError, ValueError):
                    return
                if on_progress is not None:
                    on_progress(*message)

        pending: set[Future] = set()
        it = iter(jobs)
        exhausted = False
        while True:
            if not stop_event.is_set() and stop():
                stop_event.set()  # running jobs hand back what they have; queued ones are dropped
                for f in pending:
                    f.cancel()
                pending = {f for f in pending if not f.cancelled()}
            while not exhausted and not stop_event.is_set() and len(pending) < 2 * self.workers:
                job = next(it, None)
                if job is None:
                    exhausted = True
                else:
                    with _sigint_ignored():
                        pending.add(self._pool.submit(fn, job))
            if not pending:
                drain()
                return
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for f in done:
                yield f.result()

    def close(self, force: bool = False) -> None:
        """Shut the pool down; after a stop request (or with ``force``) the workers are killed
        rather than left to exit on their own: their results are in, and a torch process's exit
        can take seconds on a loaded machine."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            processes = list((getattr(pool, "_processes", None) or {}).values())
            force = force or (self._stop_event is not None and self._stop_event.is_set())
            if force:
                for p in processes:
                    with contextlib.suppress(Exception):
                        p.kill()
            pool.shutdown(wait=not force, cancel_futures=True)


class RayExecutor:
    """Ray tasks, each reserving ``threads_per_worker`` CPUs; results stream back as they finish."""

    in_process = False

    def __init__(self, address: str, threads_per_worker: int, max_in_flight: int, local_cpus: int) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("executor 'ray' needs the package 'ray' (pip install 'recon[ray]' or pip install ray)") from None
        self.ray = ray
        self.threads = threads_per_worker
        self.parallel = max(1, local_cpus // max(threads_per_worker, 1))
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

    def map_unordered(self, fn: Callable[[Any], Any], jobs: Iterable[Any], on_progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
        ray = self.ray
        remote = ray.remote(num_cpus=self.threads)(_ray_call)
        stop = should_stop or (lambda: False)
        pending: deque = deque()
        it = iter(jobs)
        exhausted = False
        while True:
            if stop():  # no mid-GoP state from Ray tasks: cancel them (finished GoPs are kept)
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                return
            while not exhausted and len(pending) < self.max_in_flight:
                job = next(it, None)
                if job is None:
                    exhausted = True
                else:
                    pending.append(remote.remote(fn, job, self.threads))
            if not pending:
                return
            done, rest = ray.wait(list(pending), num_returns=1, timeout=0.5)
            pending = deque(rest)
            for ref in done:
                yield ray.get(ref)

    def close(self, force: bool = False) -> None:
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
