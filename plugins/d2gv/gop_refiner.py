"""Base of the refiners that work GoP by GoP (``d2gv-fit``, ``d2gv-compress``): the set of finished
GoPs is their checkpointed state, so an interrupted run resumes with the unfinished ones."""

from __future__ import annotations

from typing import Any

from recon_core import Refiner, RunContext

__all__ = ["GopRefiner"]


class GopRefiner(Refiner):
    """A refiner whose state is the set ``done`` of finished GoP indices."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.done: set[int] = set()

    def state_dict(self) -> dict[str, Any]:
        return {"done": sorted(self.done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = {int(i) for i in state.get("done", [])}

    def stopped_early(self, ctx: RunContext) -> dict[str, Any]:
        """Checkpoint the finished GoPs (a resumed run does the rest) and the report of a stopped run."""
        if ctx.save_state is not None:
            ctx.save_state(len(self.done))
        return {"interrupted": True, "gops_done": sorted(self.done)}
