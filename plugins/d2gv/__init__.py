"""D2GV plugin: videos as deformable 2D Gaussians per group of pictures.

Components: representation ``d2gv``, renderer ``torch-2dgs``, refiner ``d2gv-fit``.
The op ``rasterize.rasterize_sum`` runs a compiled C++/OpenMP kernel on CPU (``_cpp.py``,
``csrc/``) with its PyTorch twin ``_torch_impl._rasterize_sum`` (any device, and the fallback);
``_reference._rasterize_sum_dense`` is a brute-force version for tests. ``decode.Decoder``
decodes frames for inference.
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
