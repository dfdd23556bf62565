"""Plugin ``ttr``: test-time refinement of camera poses and Gaussian attributes (DGGT-TTR),
with a held-out validation guard.

Works on any representation providing "gaussians-3d" whose parameters follow the 3dgs layout
names (or that defines ``refinable_parameters()``); refines the scene's cameras, or the
representation's own when it provides "cameras". See :mod:`.refiner` for the stages, the
protocol and the report, :mod:`.poses` for the se(3) corrections.
"""

from __future__ import annotations

from recon_core.hookspecs import hookimpl

from .holdout import HoldoutGuard, split_views
from .poses import apply_corrections, pose_errors, se3_exp, so3_exp
from .refiner import TestTimeRefiner, TTRConfig, masked_photometric_loss, refinable_parameters

__all__ = [
    "TestTimeRefiner",
    "TTRConfig",
    "HoldoutGuard",
    "split_views",
    "apply_corrections",
    "pose_errors",
    "se3_exp",
    "so3_exp",
    "masked_photometric_loss",
    "refinable_parameters",
]


@hookimpl
def register_refiners() -> list[type]:
    return [TestTimeRefiner]
