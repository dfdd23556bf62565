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

__all__ = [
    "rotation_to_quaternion",
    "quaternion_to_rotation",
    "slerp_rotation",
    "pose_distance",
    "nearest_assignments",
    "shift_poses",
]


def rotation_to_quaternion(R: Tensor) -> Tensor:
    """Unit quaternions [..., 4] (wxyz, w >= 0) of rotation matrices [..., 3, 3] (float64 inside)."""
    R = R.double()
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # four candidate (un-normalised) quaternions; pick the numerically largest component's
    w = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    q_w = torch.stack([w[..., 0], R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    q_x = torch.stack([R[..., 2, 1] - R[..., 1, 2], w[..., 1], R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0]], -1)
    q_y = torch.stack([R[..., 0, 2] - R[..., 2, 0], R[..., 0, 1] + R[..., 1, 0], w[..., 2], R[..., 1, 2] + R[..., 2, 1]], -1)
    q_z = torch.stack([R[..., 1, 0] - R[..., 0, 1], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1], w[..., 3]], -1)
    candidates = torch.stack([q_w, q_x, q_y, q_z], dim=-2)  # [..., 4 (which), 4 (wxyz)]
    best = w.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_rotation(q: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (wxyz, normalised here)."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def slerp_rotation(R1: Tensor, R2: Tensor, t: float | Tensor) -> Tensor:
    """Spherical interpolation of rotations [..., 3, 3] at fraction ``t`` (0: R1, 1: R2), float64."""
    q1, q2 = rotation_to_quaternion(R1), rotation_to_quaternion(R2)
    dot = (q1 * q2).sum(-1, keepdim=True)
    q2 = torch.where(dot < 0, -q2, q2)  # shortest arc
    dot = dot.abs().clamp(max=1.0)
    t = torch.as_tensor(t, dtype=torch.float64, device=dot.device)
    t = t[..., None] if t.ndim else t  # [...] -> [..., 1], to scale whole quaternions
    theta = torch.acos(dot)
    small = theta < 1e-6
    sin = torch.sin(theta).clamp_min(1e-12)
    a = torch.where(small, 1 - t, torch.sin((1 - t) * theta) / sin)
    b = torch.where(small, t, torch.sin(t * theta) / sin)
    return quaternion_to_rotation(a * q1 + b * q2)


def _angle(R1: Tensor, R2: Tensor) -> Tensor:
    """Rotation angle (radians) between rotations [..., 3, 3] (broadcasting)."""
    cos = ((R1.double().transpose(-1, -2) @ R2.double()).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.acos(cos.clamp(-1.0, 1.0))


def pose_distance(c2w_a: Tensor, c2w_b: Tensor, rotation_weight: float = 1.0, translation_weight: float = 1.0) -> Tensor:
    """``translation_weight |t_a - t_b| + rotation_weight angle(R_a, R_b)`` for poses [..., 4, 4] (broadcasting)."""
    t = (c2w_a[..., :3, 3].double() - c2w_b[..., :3, 3].double()).norm(dim=-1)
    return translation_weight * t + rotation_weight * _angle(c2w_a[..., :3, :3], c2w_b[..., :3, :3])


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
    R = slerp_rotation(start[:, :3, :3], targets[:, :3, :3], fraction)
    out = torch.eye(4, dtype=torch.float64).repeat(len(targets), 1, 1)
    out[:, :3, :3] = torch.where(snap[:, None, None], targets[:, :3, :3], R)
    out[:, :3, 3] = torch.where(snap[:, None], t2, moved)
    return out.float()
