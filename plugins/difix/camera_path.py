"""Novel cameras for Difix3D+: move from the nearest current camera toward each target camera.

Poses are OpenCV camera-to-world matrices [.., 4, 4] (see docs/conventions.md); only the
rotation block and the camera centre are used. This follows the gsplat example of
nv-tlabs/Difix3D (``CameraPoseInterpolator.shift_poses``):

* the distance between two poses is ``|t1 - t2| + angle(R1, R2)`` (translation in scene units
  plus the rotation angle in radians);
* for each target, the nearest current pose (by that distance) steps ``distance`` scene units
  along the straight line toward the target's centre, and its rotation is slerped by the
  same fraction of the way (``distance / |t2 - t1|``);
* a pose snaps to its target when it is already within ``distance`` of it (pose distance), or
  when after the step its centre is within ``distance`` of the target's centre (so the last
  step may be up to twice ``distance``: the paper's code does the same, which avoids a tiny
  final round).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon_core.geometry import rotation_angle, slerp_rotmat

__all__ = [
    "pose_distance",
    "nearest_assignments",
    "shift_poses",
]


def pose_distance(c2w_a: Tensor, c2w_b: Tensor, rotation_weight: float = 1.0, translation_weight: float = 1.0) -> Tensor:
    """``translation_weight |t_a - t_b| + rotation_weight angle(R_a, R_b)`` for poses [..., 4, 4] (broadcasting)."""
    t = (c2w_a[..., :3, 3].double() - c2w_b[..., :3, 3].double()).norm(dim=-1)
    return translation_weight * t + rotation_weight * rotation_angle(
        c2w_a[..., :3, :3].double(), c2w_b[..., :3, :3].double())


def nearest_assignments(sources: Tensor, targets: Tensor) -> Tensor:
    """For each target pose [M, 4, 4], the index [M] of the nearest source pose [N, 4, 4] (pose distance)."""
    return pose_distance(sources[None, :], targets[:, None]).argmin(dim=1)


def shift_poses(current: Tensor, targets: Tensor, distance: float) -> Tensor:
    """Novel poses [M, 4, 4]: the nearest of ``current`` [N, 4, 4] moved ``distance`` toward each target [M, 4, 4].

    See the module docstring for the rule (translation step of ``distance`` scene units, rotation
    slerped by the same fraction of the way, snapping near the target). Returns float32.
    """
    if current.ndim != 3 or targets.ndim != 3 or current.shape[1:] != (4, 4) or targets.shape[1:] != (4, 4):
        raise ValueError(f"poses must be [N, 4, 4]; got {tuple(current.shape)} and {tuple(targets.shape)}")
    if distance <= 0:
        raise ValueError(f"shift distance must be positive, got {distance}")
    current, targets = current.double(), targets.double()
    start = current[nearest_assignments(current, targets)]  # [M, 4, 4]
    t1, t2 = start[:, :3, 3], targets[:, :3, 3]
    direction = t2 - t1
    length = direction.norm(dim=-1, keepdim=True)  # [M, 1]
    moved = t1 + direction / length.clamp_min(1e-12) * distance
    snap = (
        (pose_distance(start, targets) <= distance)
        | (length[:, 0] <= 1e-6)
        | ((moved - t2).norm(dim=-1) <= distance)
    )
    fraction = (distance / length[:, 0].clamp_min(1e-12)).clamp(max=1.0)
    R = slerp_rotmat(start[:, :3, :3], targets[:, :3, :3], fraction)
    out = torch.eye(4, dtype=torch.float64).repeat(len(targets), 1, 1)
    out[:, :3, :3] = torch.where(snap[:, None, None], targets[:, :3, :3], R)
    out[:, :3, 3] = torch.where(snap[:, None], t2, moved)
    return out.float()
