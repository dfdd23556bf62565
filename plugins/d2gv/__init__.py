"""D2GV plugin: videos as deformable 2D Gaussians per group of pictures.

Components: representation ``d2gv``, renderer ``torch-2dgs``, refiner ``d2gv-fit``.
Fast op ``rasterize.rasterize_sum`` has its dense twin ``_reference._rasterize_sum``.
"""

from __future__ import annotations

from recon_core import hookimpl

from .fit import D2GVFit
from .renderer import Torch2DGS
from .representation import D2GV

__all__ = ["D2GV", "Torch2DGS", "D2GVFit"]


@hookimpl
def register_representations() -> list[type]:
    return [D2GV]


@hookimpl
def register_renderers() -> list[type]:
    return [Torch2DGS]


@hookimpl
def register_refiners() -> list[type]:
    return [D2GVFit]
