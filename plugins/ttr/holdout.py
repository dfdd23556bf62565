"""Held-out views for test-time refinement: which views are never optimised, and the guard.

The fork warns that refining positions and scales overfits the input views. Here the warning
becomes a guard: views of the ``test`` split (plus, optionally, ``holdout`` training frames) are
never optimised; their PSNR is measured every few steps and each stage ends with the parameters
of its best held-out score (the state before the stage counts, so a stage never leaves the
held-out score below where it started, as measured at the checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recon_core.scene import Scene, View

__all__ = ["split_views", "HoldoutGuard"]


def split_views(scene: Scene, holdout: int = 0) -> tuple[list[View], list[View]]:
    """(views to optimise, held-out views) of ``scene``.

    Views of the ``test`` and ``val`` splits are held out. ``holdout`` > 0 additionally holds out
    that many ``train`` views, evenly spaced in time (or in the given order when timeless),
    never the first one (frame 0 is the fixed pose reference). The optimised views are returned
    in time order, so index 0 is frame 0.
    """
    train = [v for v in scene.views if v.split == "train"]
    held = [v for v in scene.views if v.split != "train"]
    if all(v.time is not None for v in train):
        train.sort(key=lambda v: v.time)  # type: ignore[arg-type, return-value]
    if holdout > 0:
        if holdout > len(train) - 2:
            raise ValueError(f"holdout={holdout} leaves fewer than 2 training views of {len(train)}")
        step = len(train) / (holdout + 1)
        picks = {min(len(train) - 1, max(1, round(step * (k + 1)))) for k in range(holdout)}
        k = 1
        while len(picks) < holdout:  # rounding collisions on short sequences
            if k not in picks:
                picks.add(k)
            k += 1
        held += [train[i] for i in sorted(picks)]
        train = [v for i, v in enumerate(train) if i not in picks]
    return train, held


@dataclass
class HoldoutGuard:
    """Keeps track of the best held-out score of one stage (higher is better).

    ``update(score, step)`` returns True when ``score`` is a new best (the caller snapshots the
    parameters then). After ``patience`` checks in a row without a new best (0: never) the
    guard reports ``stopped``; the caller then restores the best snapshot and ends the stage.
    """

    patience: int = 0
    min_delta: float = 0.0
    best: float = float("-inf")
    best_step: int = -1
    checks: int = 0
    since_best: int = 0
    stopped: bool = False

    def update(self, score: float, step: int) -> bool:
        self.checks += 1
        if score > self.best + self.min_delta or self.best_step < 0:
            self.best, self.best_step, self.since_best = float(score), int(step), 0
            return True
        self.since_best += 1
        if self.patience > 0 and self.since_best >= self.patience:
            self.stopped = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best", "best_step", "checks", "since_best", "stopped")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
