"""recon core: data model, plugin interfaces, registry and pipeline.

Plugin authors need only the names exported here; see docs/plugins.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Before anything imports torch: libgomp reads OMP_WAIT_POLICY once, when it is loaded, and its
# default (spinning waits) multiplies the CPU cost of every step on a shared machine
# (recon_core.threads explains; a wait setting the user made is kept).
from .threads import prefer_passive_waits

prefer_passive_waits()

# Names are imported on first use (PEP 562), so ``import recon_core.errors`` (what the CLI needs
# to start) does not pull in torch: ``recon --help`` stays fast.
_EXPORTS = {
    "cameras": ("Cameras", "check_rigid", "opengl_to_opencv"),
    "components": ("CameraRenderer", "Component", "Encoder", "EvaluationInput", "Evaluator", "Fixer", "FrameRenderer",
                   "Generator", "GeometryEvaluator", "ImageEvaluator", "Loader", "RunContext", "Refiner", "Renderer",
                   "RenderOutput", "Representation"),
    "config": ("option",),
    "errors": ("CombinationError", "InputError", "Interrupted", "MissingWeightsError", "ReconError"),
    "gaussians": ("SH_C0", "SPLAT_KEYS", "GaussianRepresentation", "Gaussians3D"),
    "optim": ("GaussianOptimizer", "OptimConfig", "StrategyConfig"),
    "hookspecs": ("hookimpl",),
    "scene": ("Bounds", "PointCloud", "Scene", "Video", "View"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'recon_core' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


if TYPE_CHECKING:  # type checkers and IDEs see the eager imports
    from .cameras import Cameras, check_rigid, opengl_to_opencv
    from .components import (
        CameraRenderer,
        Component,
        Encoder,
        EvaluationInput,
        Evaluator,
        Fixer,
        FrameRenderer,
        Generator,
        GeometryEvaluator,
        ImageEvaluator,
        Loader,
        RunContext,
        Refiner,
        Renderer,
        RenderOutput,
        Representation,
    )
    from .config import option
    from .errors import CombinationError, InputError, Interrupted, MissingWeightsError, ReconError
    from .gaussians import SH_C0, SPLAT_KEYS, GaussianRepresentation, Gaussians3D
    from .optim import GaussianOptimizer, OptimConfig, StrategyConfig
    from .hookspecs import hookimpl
    from .scene import Bounds, PointCloud, Scene, Video, View

__version__ = "0.1.0"

__all__ = [
    "Bounds",
    "Cameras",
    "CombinationError",
    "CameraRenderer",
    "Component",
    "Encoder",
    "EvaluationInput",
    "Evaluator",
    "Fixer",
    "FrameRenderer",
    "GaussianOptimizer",
    "GaussianRepresentation",
    "Gaussians3D",
    "Generator",
    "GeometryEvaluator",
    "ImageEvaluator",
    "InputError",
    "Interrupted",
    "Loader",
    "MissingWeightsError",
    "OptimConfig",
    "PointCloud",
    "ReconError",
    "RunContext",
    "Refiner",
    "RenderOutput",
    "Renderer",
    "Representation",
    "SH_C0",
    "SPLAT_KEYS",
    "Scene",
    "StrategyConfig",
    "Video",
    "View",
    "check_rigid",
    "hookimpl",
    "opengl_to_opencv",
    "option",
]
