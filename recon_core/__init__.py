"""recon core: data model, plugin interfaces, registry and pipeline.

Plugin authors need only the names exported here; see docs/plugins.md.
"""

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
from .gaussians import SH_C0, Gaussians3D
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
    "Gaussians3D",
    "Generator",
    "GeometryEvaluator",
    "ImageEvaluator",
    "InputError",
    "Interrupted",
    "Loader",
    "MissingWeightsError",
    "PointCloud",
    "ReconError",
    "RunContext",
    "Refiner",
    "RenderOutput",
    "Renderer",
    "Representation",
    "SH_C0",
    "Scene",
    "Video",
    "View",
    "check_rigid",
    "hookimpl",
    "opengl_to_opencv",
    "option",
]
