"""Exceptions with a meaning for the user.

Every error a user can fix (bad input, bad usage, missing weights, an impossible plugin
combination) is an :class:`InputError`; the CLI turns it into exit code 2 and a one-paragraph
message. Anything else is an internal error (exit code 1).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ReconError",
    "InputError",
    "CombinationError",
    "MissingWeightsError",
    "PluginConflictError",
    "Interrupted",
]


class ReconError(Exception):
    """Base class of the errors recon raises on purpose."""


class InputError(ReconError):
    """Bad input or bad usage: names the file (when there is one) and what is wrong with it."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class CombinationError(InputError):
    """The chosen plugins do not fit together; the message says which would."""


class MissingWeightsError(InputError):
    """A learned component needs a weights file that is not on this machine."""

    def __init__(self, component: str, filename: str, expected_path: str | Path, source: str) -> None:
        self.component = component
        self.filename = filename
        self.expected_path = Path(expected_path)
        self.source = source
        super().__init__(
            f"{component} needs the weights file '{filename}', which is not present. "
            f"Download it from {source} and put it at {self.expected_path} "
            f"(recon never downloads weights itself)."
        )


class PluginConflictError(InputError):
    """Two installed plugins claim the same component name."""


class Interrupted(ReconError):
    """Work was stopped by Ctrl-C or SIGTERM after its state was saved."""

    def __init__(self, checkpoint: Path | None, run_dir: Path | None = None) -> None:
        self.checkpoint = checkpoint
        self.run_dir = run_dir
        resume = run_dir or checkpoint
        where = f"; state saved in {checkpoint}; resume with: recon run --resume {resume}" if checkpoint else ""
        super().__init__(f"interrupted{where}")
