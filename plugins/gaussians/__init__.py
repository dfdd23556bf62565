"""Built-in plugin ``gaussians``: the ``3dgs`` representation, the ``3dgs-train`` refiner and
the Gaussian renderers ``torch-3dgs`` (CPU/any device) and ``gsplat`` (CUDA).

Registered through the ``recon.plugins`` entry point exactly as a third-party plugin would be.
Other plugins build a ``3dgs`` representation from tensors with
:meth:`GaussianSplat.from_gaussians` (activated values) or :meth:`GaussianSplat.from_raw`.
"""

from __future__ import annotations

from recon_core.hookspecs import hookimpl

from .ply import SplatPly, read_splat_ply, write_splat_ply
from .renderers import GsplatRenderer, TorchGaussianRenderer
from .representation import GaussianSplat, GaussianSplatConfig
from .trainer import GaussianTrainConfig, GaussianTrainer

__all__ = [
    "GaussianSplat",
    "GaussianSplatConfig",
    "GaussianTrainer",
    "GaussianTrainConfig",
    "GsplatRenderer",
    "TorchGaussianRenderer",
    "SplatPly",
    "read_splat_ply",
    "write_splat_ply",
]


@hookimpl
def register_representations() -> list[type]:
    return [GaussianSplat]


@hookimpl
def register_refiners() -> list[type]:
    return [GaussianTrainer]


@hookimpl
def register_renderers() -> list[type]:
    return [TorchGaussianRenderer, GsplatRenderer]
