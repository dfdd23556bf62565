"""recon-plugin-example: registered through ``[project.entry-points."recon.plugins"]``.

recon imports this module when it builds its registry and calls the hooks below; each returns
the component classes this distribution provides.
"""

from __future__ import annotations

from recon_core import Evaluator, Fixer, hookimpl

from .evaluators import MeanAbsoluteError
from .fixers import UnsharpMask

__all__ = ["MeanAbsoluteError", "UnsharpMask", "register_evaluators", "register_fixers"]
__version__ = "0.1.0"


@hookimpl
def register_fixers() -> list[type[Fixer]]:
    return [UnsharpMask]


@hookimpl
def register_evaluators() -> list[type[Evaluator]]:
    return [MeanAbsoluteError]
