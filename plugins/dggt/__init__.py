"""DGGT: pose-free feed-forward 4D Gaussian reconstruction of driving scenes (arXiv 2512.03004).

Provides the ``dggt`` representation. The network (:mod:`.network`) reproduces the published
checkpoint's layout exactly; :mod:`.weights` loads ``model_latest_waymo.pt``.
"""

from __future__ import annotations

from recon_core import hookimpl

from .representation import DGGTConfig, DGGTRepresentation

__all__ = ["DGGTRepresentation", "DGGTConfig"]


@hookimpl
def register_representations() -> list[type]:
    return [DGGTRepresentation]
