"""Time budgets of the refine stage: ``--set run.budget=600`` (seconds of wall clock) or
``--set run.budget=cpu:600`` (seconds of this process's CPU time, all threads).

A budget caps the refine stage as a whole. Each refiner, when it starts, gets an even share of
what is left (``(budget - used) / refiners left``), so a refiner that ends early leaves its time
to the next. The step loop (:func:`recon_core.refine.run_refiners`) stops a refiner whose share is
spent before its next step, as at a normal end: ``finish()`` runs, the state is checkpointed and
the run renders, evaluates and exports; the refiner's report gets a ``budget`` entry.

Schedules follow the budget: a refiner reads ``ctx.progress(step, total)`` =
``max(step / total, fraction of its share used)`` (:class:`~recon_core.components.RunContext`),
so learning-rate decays, densification windows and milestones complete within the budget
whatever the step rate. Without a budget the fraction is 0 and schedules are those of the steps.

The seconds used are checkpointed, so a resumed run continues with what was left, not a new
budget. A refiner with its own loop (``Refiner.run``) checks ``ctx.budget_spent()`` between its
units of work, saves and returns, and uses ``ctx.progress`` for its schedules. One that hands
units of work to other processes gives each unit a share of its own (a :class:`BudgetClock` built
there: ``d2gv-fit``'s GoPs) and, for a CPU-time budget, ``charge``s the workers' CPU seconds to
``ctx.budget``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from .errors import InputError

__all__ = ["Budget", "BudgetClock", "parse_budget"]


@dataclass(frozen=True)
class Budget:
    """``seconds`` of the ``clock`` ("wall": ``time.perf_counter``; "cpu": ``time.process_time``)."""

    seconds: float
    clock: str = "wall"

    def now(self) -> float:
        return time.process_time() if self.clock == "cpu" else time.perf_counter()

    def __str__(self) -> str:
        return f"{self.seconds:g} s of {'process CPU time' if self.clock == 'cpu' else 'wall clock'}"


def parse_budget(text: Any, where: str = "run.budget") -> Budget | None:
    """``None``/``""`` → no budget; ``600`` or ``"600"`` → 600 s wall clock; ``"cpu:600"`` → 600 s
    of CPU time (``"wall:600"`` also accepted). InputError for anything else (negative, zero,
    non-finite, an unknown clock, not a number)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "null")):
        return None
    raw = str(text).strip()
    clock, sep, number = raw.partition(":")
    if not sep:
        clock, number = "wall", raw
    clock = clock.strip().lower()
    if clock not in ("wall", "cpu"):
        raise InputError(f"bad value for {where}: '{raw}' (expected SECONDS of wall clock, or cpu:SECONDS of CPU time)")
    try:
        seconds = float(number)
    except ValueError:
        raise InputError(f"bad value for {where}: '{number.strip()}' in '{raw}' is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"bad value for {where}: '{raw}' must be a positive, finite number of seconds")
    return Budget(seconds, clock)


class BudgetClock:
    """One refiner's share of a budget: ``allowance`` seconds, ``used`` of them already spent
    (restored from a checkpoint); counts from :meth:`start`."""

    def __init__(self, budget: Budget, allowance: float, used: float = 0.0) -> None:
        self.budget, self.allowance = budget, max(float(allowance), 0.0)
        self._before, self._start = float(used), None  # type: float, float | None

    def start(self) -> "BudgetClock":
        if self._start is None:
            self._start = self.budget.now()
        return self

    def used(self) -> float:
        """Seconds of this share spent so far (those restored included)."""
        return self._before + (self.budget.now() - self._start if self._start is not None else 0.0)

    def fraction(self) -> float:
        """Fraction of the share spent, in [0, 1]."""
        if self.allowance <= 0:
            return 1.0
        return min(self.used() / self.allowance, 1.0)

    def spent(self) -> bool:
        return self.used() >= self.allowance

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` spent on this share outside this process's clock (the CPU time of
        worker processes, which ``time.process_time`` of this process does not see)."""
        self._before += max(float(seconds), 0.0)

    def scheduled_step(self, step: int, total: int) -> int:
        """The step a schedule of ``total`` steps has reached at ``step``: ``step``, or
        ``floor(fraction() * total)`` when the share is being used faster than the steps; ``total``
        once the share is spent (the work ends there, as at its last step)."""
        return max(int(step), math.floor(self.fraction() * int(total)))
