"""The refine stage: drives refiners step by step with progress, checkpoints, Ctrl-C and resume.

A checkpoint is taken *between* steps and records where to continue::

    {"representation": rep.state_dict(),
     "position": {"refiner": i, "step": k},     # next refiner index and next step to run
     "refiner": {"name": ..., "state": refiners[i].state_dict()} or None (k == 0),
     "reports": [{"name": ..., "report": ...}],  # finish() reports of refiners already done
     "rng": {"torch": ..., "numpy": ..., "python": ..., "cuda": [...]},
     "cameras": {"names": [...], "K": [N, 3, 3], "c2w": [N, 4, 4]} or None (a video),
     "budget": {"finished": s, "current": s}}   # run.budget seconds used by the refiners done, by refiner i

``cameras`` are the scene's view cameras at that moment: a refiner may correct them (``ttr``
writes refined poses into the views), and the data loaded again on resume has the original
ones. :func:`restore_cameras` puts the saved ones back (on resume and when a finished run is
restored for ``recon eval/render``).

Resuming rebuilds the representation, loads the saved parameters and cameras and continues at (i, k):
refiner i is set up again, given its saved state, and the global RNGs are restored *after* that
setup when k > 0 (they were saved mid-loop) or *before* it when k == 0 (saved between refiners),
so the resumed run consumes random numbers exactly as the uninterrupted one did. On CPU the final
parameters are bit-identical.

Non-finite values: after every step (and at every checkpoint of a refiner's own ``run``), the
step's logged numbers and the representation's parameters and buffers are checked. A NaN or
infinity stops the refiner: the representation is rolled back to the last checkpoint saved in
this stage (or the one resumed from), the refiner's report says so, and refining goes on with the
next refiner; with no such checkpoint :class:`NonFiniteError` ends the run. A non-finite model is
never checkpointed, and so never exported.

Budgets (``run.budget``, :mod:`recon_core.budget`): each refiner gets an even share of what is
left of the budget when it starts (``ctx.budget``); the loop ends a refiner whose share is spent
before its next step (after at least one step) as at a normal end: ``finish()``, a checkpoint, and
a ``budget`` entry in its report. Seconds used are checkpointed, so a resumed run spends only what
was left.

Signals: while refining, the first SIGINT/SIGTERM only sets a flag; the loop notices it before
the next step, saves a checkpoint and raises :class:`Interrupted`. A second SIGINT interrupts at
once (KeyboardInterrupt, no save).
"""

from __future__ import annotations

import math

import contextlib
import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .budget import Budget, BudgetClock
from .cameras import Cameras
from .components import RunContext, Refiner, Representation
from .errors import InputError, Interrupted, ReconError
from .progress import progress_bar
from .scene import Scene, Video

__all__ = [
    "StopFlag",
    "catch_stop_signals",
    "rng_state",
    "set_rng_state",
    "camera_state",
    "restore_cameras",
    "RefinePosition",
    "run_refiners",
    "NonFiniteError",
    "non_finite",
]


class NonFiniteError(ReconError):
    """A refiner produced a NaN or infinite loss or parameter and there is no good state to roll back to."""

    def __init__(self, refiner: str, step: int, what: str) -> None:
        self.refiner, self.step, self.what = refiner, step, what
        super().__init__(
            f"refiner {refiner} produced non-finite values at step {step} ({what}) and there is no earlier "
            "checkpoint to roll back to; nothing was exported. Lower the learning rates (or check the data) and run again"
        )


def non_finite(rep: Representation, logs: dict[str, float] | None = None) -> str | None:
    """What is non-finite after a step: ``"logged value loss=nan"`` or ``"parameter 'grid'"``; None
    when all is finite. Every step scans every floating tensor (one device sync), so the step at
    which a parameter went non-finite is the one reported."""
    for key, value in (logs or {}).items():
        if not math.isfinite(value):
            return f"logged value {key}={value}"
    tensors = [(name, t) for name, t in rep.state_dict().items()
               if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not tensors:
        return None
    flags = torch.stack([torch.isfinite(t).all().to(tensors[0][1].device) for _, t in tensors])
    if bool(flags.all()):  # one device sync per step
        return None
    return next(f"parameter '{name}'" for (name, _), ok in zip(tensors, flags.tolist()) if not ok)


def _clone_state(state: Any) -> Any:
    """A detached copy of a state dict (tensors cloned), safe from later in-place updates."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone_state(v) for k, v in state.items()}
    return state


class StopFlag:
    """Set when the user asked the run to stop; checked between refiner steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def catch_stop_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGINT/SIGTERM to ``flag`` inside the block (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag and signum == signal.SIGINT:  # second Ctrl-C: the user insists
            raise KeyboardInterrupt
        flag.set(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------------ RNG state


def rng_state() -> dict[str, Any]:
    """The global torch / numpy / python (and CUDA) generator states, checkpointable."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------------------- cameras


def camera_state(data: Scene | Video) -> dict[str, Any] | None:
    """The scene's view cameras, checkpointable: names [N], K [N, 3, 3], c2w [N, 4, 4]; None for a video."""
    if not isinstance(data, Scene):
        return None
    return {
        "names": [v.name for v in data.views],
        "K": torch.stack([v.camera.K[0].detach().cpu() for v in data.views]),
        "c2w": torch.stack([v.camera.c2w[0].detach().cpu() for v in data.views]),
    }


def restore_cameras(data: Scene | Video, checkpoint: dict[str, Any]) -> None:
    """Give the scene's views the cameras saved in ``checkpoint`` (no-op without any).

    Raises InputError when the checkpoint's views are not the data's (the data changed).
    """
    saved = checkpoint.get("cameras")
    if saved is None or not isinstance(data, Scene):
        return
    names = [v.name for v in data.views]
    if list(saved["names"]) != names:
        raise InputError(
            f"the checkpoint's cameras are for {len(saved['names'])} other views than the data's {len(names)} "
            "(did the data change since the run?)", data.source,
        )
    for i, view in enumerate(data.views):
        cam = view.camera
        c2w = saved["c2w"][i : i + 1].to(cam.c2w)
        view.camera = Cameras(
            K=saved["K"][i : i + 1].to(cam.K), c2w=c2w, width=cam.width,
            height=cam.height, distortion=cam.distortion, times=cam.times,
            w2c=cam.w2c if cam.w2c is not None and torch.equal(c2w, cam.c2w) else None,  # kept while the pose is unchanged
        )


# -------------------------------------------------------------------------------------- runner


@dataclass
class RefinePosition:
    """Where refining continues: refiner index and its next step (0 = not started)."""

    refiner: int = 0
    step: int = 0


@dataclass
class RefineResult:
    reports: list[dict[str, Any]] = field(default_factory=list)
    """``[{"name": refiner name, "report": finish() result}]`` in run order."""


def _state(
    rep: Representation,
    data: Scene | Video,
    position: RefinePosition,
    refiners: Sequence[tuple[str, Refiner]],
    reports: list[dict[str, Any]],
    budget_used: dict[str, float] | None = None,
) -> dict[str, Any]:
    current = None
    if position.step > 0 and position.refiner < len(refiners):
        name, refiner = refiners[position.refiner]
        current = {"name": name, "state": refiner.state_dict()}
    return {
        "representation": dict(rep.state_dict()),
        "position": {"refiner": position.refiner, "step": position.step},
        "refiner": current,
        "reports": list(reports),
        "rng": rng_state(),
        "cameras": camera_state(data),
        "budget": dict(budget_used or {"finished": 0.0, "current": 0.0}),
    }


def run_refiners(
    rep: Representation,
    data: Scene | Video,
    refiners: Sequence[tuple[str, Refiner]],
    ctx: RunContext,
    *,
    save: Callable[[dict[str, Any], str], Path],
    checkpoint_every: int = 500,
    log_every: int = 100,
    resume: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    log: Callable[[str], None] = lambda message: None,
    scalars: Callable[[str, int, int, dict[str, float]], None] = lambda name, index, step, values: None,
    budget: Budget | None = None,
) -> RefineResult:
    """Run ``refiners`` in order on ``rep``; see the module docstring for checkpoints and resume.

    Args:
        refiners: ``(name, refiner)`` pairs, configured but not set up.
        save: ``save(state, label) -> folder`` persists a checkpoint (``RunDir.save_checkpoint``).
        checkpoint_every: also checkpoint every this many steps (0: only at refiner ends).
        log_every: pass the step's logs to ``log`` every this many steps (0: never).
        scalars: ``scalars(name, index, step, values)`` receives every step's numeric logs
            (:class:`recon_core.scalars.ScalarLog.write`); a refiner with its own ``run`` reports
            them through ``ctx.log_scalars(step, values)``.
        resume: a checkpoint written by this function; the representation must already hold its
            parameters (``rep.load_state_dict_resizing(resume["representation"])``); the saved
            cameras are given back to the scene's views here (:func:`restore_cameras`).
        stop: the flag SIGINT/SIGTERM set during the stage (a fresh one when None); tests
            may also set it directly.
        budget: the stage's time budget (``run.budget``); see the module docstring.

    Raises:
        Interrupted: after saving, when ``stop`` was set during the stage.
    """
    stop = stop if stop is not None else StopFlag()
    if resume is not None:
        restore_cameras(data, resume)
    start = RefinePosition(**resume["position"]) if resume else RefinePosition()
    reports: list[dict[str, Any]] = list(resume["reports"]) if resume else []
    ctx.should_stop = lambda: bool(stop)
    saved_budget = dict(resume.get("budget") or {}) if resume else {}
    finished_s = float(saved_budget.get("finished", 0.0))  # budget seconds used by the refiners done
    clock: BudgetClock | None = None

    def budget_used(position: RefinePosition) -> dict[str, float]:
        current = clock.used() if clock is not None and position.step > 0 else 0.0
        return {"finished": finished_s, "current": current}

    # the last state saved (or resumed from), to roll back to when a refiner goes non-finite
    last_good: dict[str, Any] = {}
    if resume is not None:
        last_good.update(state=_clone_state(resume["representation"]), label="the checkpoint resumed from")

    def checkpoint(position: RefinePosition) -> Path:
        label = f"refiner{position.refiner}-step{position.step}"
        state = _state(rep, data, position, refiners, reports, budget_used(position))
        folder = save(state, label)
        last_good.update(state=_clone_state(state["representation"]), label=f"checkpoint {label}")
        return folder

    def roll_back(name: str, step: int, what: str) -> dict[str, Any]:
        """Give ``rep`` the last good state (NonFiniteError without one); the refiner's report."""
        if "state" not in last_good:
            raise NonFiniteError(name, step, what)
        rep.load_state_dict_resizing(last_good["state"])
        log(f"refiner {name} produced non-finite values at step {step} ({what}); stopped it and rolled the "
            f"representation back to {last_good['label']}")
        return {"stopped": "non-finite", "step": step, "non_finite": what, "rolled_back_to": last_good["label"]}

    def interrupted(position: RefinePosition) -> Interrupted:
        folder = checkpoint(position)
        log(f"interrupted by signal {stop.signal} at refiner {position.refiner} step {position.step}; saved {folder}")
        return Interrupted(folder)

    with catch_stop_signals(stop):
        for index in range(start.refiner, len(refiners)):
            name, refiner = refiners[index]
            resuming = resume is not None and index == start.refiner
            first = start.step if resuming else 0
            if resuming and first == 0:
                set_rng_state(resume["rng"])
            saved_refiner_state = resume["refiner"]["state"] if resuming and first > 0 else None
            if resuming and first > 0 and resume["refiner"]["name"] != name:
                raise InputError(f"checkpoint is for refiner {resume['refiner']['name']}, but the config runs {name} here")
            log(f"refiner {name} ({index + 1}/{len(refiners)}) starts at step {first}")
            clock = None
            if budget is not None:  # an even share of what is left; a resumed refiner keeps its share
                share = max(budget.seconds - finished_s, 0.0) / (len(refiners) - index)
                clock = BudgetClock(budget, share, used=float(saved_budget.get("current", 0.0)) if resuming and first > 0 else 0.0)
                log(f"refiner {name}: budget {share:.1f} s of {budget}")
            ctx.budget = clock
            budget_stop: int | None = None

            if refiner.run is not None:
                if clock is not None:
                    clock.start()
                try:
                    ctx.log_scalars = lambda step, values, _n=name, _i=index: scalars(_n, _i, step, _scalars(values))
                    report, saved_at_stop = _run_custom(refiner, index, rep, data, ctx, saved_refiner_state, first, checkpoint, resume, stop)
                except _NonFiniteStep as e:
                    report, saved_at_stop = roll_back(name, e.step, e.what), None
                else:
                    what = non_finite(rep)
                    if what is not None:
                        report = roll_back(name, int(refiner.total_steps), what)
                if saved_at_stop is not None:
                    log(f"refiner {name} stopped by signal {stop.signal}; saved {saved_at_stop}")
                    raise Interrupted(saved_at_stop)
            else:
                refiner.setup(rep, data, ctx)
                if saved_refiner_state is not None:
                    refiner.load_state_dict(saved_refiner_state)
                    set_rng_state(resume["rng"])
                total = int(refiner.total_steps)
                report = None
                if clock is not None:
                    clock.start()
                with progress_bar(name, total=total, completed=first) as advance:
                    for step in range(first, total):
                        if stop:
                            raise interrupted(RefinePosition(index, step))
                        if clock is not None and step > 0 and clock.spent():
                            budget_stop = step
                            log(f"refiner {name} used its budget ({clock.used():.1f} of {clock.allowance:.1f} s) "
                                f"after {step} of {total} steps; ending it")
                            break
                        logs = _scalars(refiner.step(step))
                        what = non_finite(rep, logs)
                        if what is not None:
                            report = roll_back(name, step, what)
                            break
                        scalars(name, index, step, logs)
                        advance(1, **logs)
                        done = step + 1
                        if log_every and (done % log_every == 0 or done == total):
                            log(f"{name} step {done}/{total}: " + " ".join(f"{k}={v:.6g}" for k, v in logs.items()))
                        if checkpoint_every and done % checkpoint_every == 0 and done < total:
                            checkpoint(RefinePosition(index, done))
                if report is None:
                    report = refiner.finish()
            report = dict(report or {})
            if clock is not None:
                report["budget"] = {"seconds": round(clock.allowance, 3), "used": round(clock.used(), 3),
                                    "clock": budget.clock, "stopped_at_step": budget_stop}  # type: ignore[union-attr]
                finished_s += clock.used()
                clock = None
            ctx.budget = None
            reports.append({"name": name, "report": report})
            log(f"refiner {name} finished")
            folder = checkpoint(RefinePosition(index + 1, 0))
            if stop and index + 1 < len(refiners):
                raise Interrupted(folder)
        if not refiners and resume is None:
            checkpoint(RefinePosition(0, 0))
    return RefineResult(reports)


def _scalars(logs: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a step's logs (numbers and one-element tensors) as floats."""
    out = {}
    for key, value in (logs or {}).items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _ignore_scalars(step: int, values: dict[str, Any]) -> None:
    """``ctx.log_scalars`` outside a refiner's own ``run``."""


class _NonFiniteStep(Exception):
    """Raised through a refiner's own ``run`` when it saves a non-finite state."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(what)
        self.step, self.what = step, what


def _run_custom(
    refiner: Refiner,
    index: int,
    rep: Representation,
    data: Scene | Video,
    ctx: RunContext,
    saved_state: dict[str, Any] | None,
    first: int,
    checkpoint: Callable[[RefinePosition], Path],
    resume: dict[str, Any] | None,
    stop: StopFlag,
) -> tuple[dict[str, Any], Path | None]:
    """Hand the loop to a refiner's own ``run``, giving it the stop flag and a save function.

    Returns its report and, when it saved after a stop request, the checkpoint it saved (the
    run was interrupted); a ``run`` that ignores the request and completes is not interrupted.
    """
    saved_at_stop: list[Path] = []

    def save_state(next_step: int) -> None:
        what = non_finite(rep)
        if what is not None:  # never checkpoint a non-finite model
            raise _NonFiniteStep(next_step, what)
        folder = checkpoint(RefinePosition(index, next_step))
        if stop:
            saved_at_stop.append(folder)

    ctx.save_state = save_state
    ctx.resume_state = saved_state
    ctx.start_step = first
    if saved_state is not None and resume is not None:
        set_rng_state(resume["rng"])
    try:
        report = refiner.run(rep, data, ctx) or {}  # type: ignore[misc]
        return report, (saved_at_stop[-1] if saved_at_stop else None)
    finally:
        ctx.save_state, ctx.resume_state, ctx.start_step = None, None, 0
        ctx.log_scalars = _ignore_scalars
