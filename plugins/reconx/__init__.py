"""Built-in plugin ``reconx``: ReconX-style sparse-view reconstruction on 3D Gaussians.

Components: the ``reconx`` representation (a 3dgs built from the global point cloud of a sparse
view set, :mod:`.representation`), the ``confidence`` refiner (confidence-aware L1 + SSIM + LPIPS
fitting with generated views, :mod:`.refiner`) and the ``render-fix`` generator (views along a path
between the inputs: render, fix, consistency confidence, :mod:`.generator`). Confidence sources are
in :mod:`.confidence`, point-cloud sources in :mod:`.pointcloud`, the space carving that completes
the point cloud where no input sees (and marks known-empty space in generated views) in :mod:`.carving`.

    recon run --data object --repr reconx --set reconx.views=split_sparse3.json
"""

from __future__ import annotations

from recon_core.hookspecs import hookimpl

from .carving import CarvedVolume, carve
from .confidence import CONFIDENCE_SOURCES, ConsistencySettings, confidence_maps, consistency_map, register_confidence_source
from .generator import RenderFixConfig, RenderFixGenerator, camera_path, look_at_point
from .pointcloud import POINT_CLOUD_SOURCES, PointCloudSettings, complete_points, global_point_cloud
from .refiner import ConfidenceConfig, ConfidenceRefiner, LossWeights, confidence_loss
from .representation import ReconXConfig, ReconXSplat, select_views

__all__ = [
    "ReconXSplat",
    "ReconXConfig",
    "ConfidenceRefiner",
    "ConfidenceConfig",
    "RenderFixGenerator",
    "RenderFixConfig",
    "LossWeights",
    "confidence_loss",
    "CONFIDENCE_SOURCES",
    "ConsistencySettings",
    "confidence_maps",
    "consistency_map",
    "register_confidence_source",
    "POINT_CLOUD_SOURCES",
    "PointCloudSettings",
    "global_point_cloud",
    "complete_points",
    "CarvedVolume",
    "carve",
    "camera_path",
    "look_at_point",
    "select_views",
]


@hookimpl
def register_representations() -> list[type]:
    return [ReconXSplat]


@hookimpl
def register_refiners() -> list[type]:
    return [ConfidenceRefiner]


@hookimpl
def register_generators() -> list[type]:
    return [RenderFixGenerator]
