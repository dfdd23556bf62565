"""Per-frame se(3) pose corrections for test-time refinement, and pose-error scoring.

Convention (see docs/conventions.md): cameras are OpenCV camera-to-world ``c2w`` [N, 4, 4].
A correction ``xi = (omega, tau)`` [N, 6] (axis-angle rotation in radians, then translation in
metres) is mapped by the SE(3) exponential to ``T = exp(xi^)`` and *left-multiplied onto the
world-to-camera matrix*::

    w2c' = T @ w2c          c2w' = inverse(w2c') = c2w @ inverse(T)

so the correction acts in the camera's own frame (``tau`` moves the camera along its own
x right / y down / z forward axes), as in the DGGT-TTR fork (``delta @ extrinsic``). A zero
correction leaves the pose unchanged, exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon_core.geometry import nearest_rotation, rigid_inverse, rotation_angle, se3_exp, skew, so3_exp

__all__ = [
    "skew",
    "so3_exp",
    "se3_exp",
    "rigid_inverse",
    "apply_corrections",
    "correction_matrix",
    "rotation_angle_deg",
    "pose_errors",
    "align_rigid",
]
"""``skew``, ``so3_exp``, ``se3_exp`` and ``rigid_inverse`` are :mod:`recon_core.geometry`'s, re-exported."""


def correction_matrix(xi: Tensor, mapping: str = "se3") -> Tensor:
    """[N, 4, 4] rigid transform of corrections ``xi`` [N, 6]: ``se3``: the SE(3) exponential;
    ``fork``: ``[so3_exp(omega) | tau]``, rotation and translation taken apart, as the DGGT-TTR
    fork's ``se3_to_SE3`` builds it (the two agree to first order at zero)."""
    if mapping == "se3":
        return se3_exp(xi)
    if mapping != "fork":
        raise ValueError(f"unknown pose mapping '{mapping}' (se3, fork)")
    T = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype, device=xi.device)
    T[..., :3, :3] = so3_exp(xi[..., :3])
    T[..., :3, 3] = xi[..., 3:]
    T[..., 3, 3] = 1.0
    return T


def apply_corrections(c2w: Tensor, xi: Tensor, mapping: str = "se3") -> Tensor:
    """Corrected camera-to-world [N, 4, 4] from ``c2w`` [N, 4, 4] and twists ``xi`` [N, 6].

    ``w2c' = T(xi) @ w2c`` (left-multiplied onto world-to-camera; see module doc), ``T`` from
    :func:`correction_matrix`. Computed in float64 and returned in ``c2w``'s dtype;
    differentiable w.r.t. ``xi``.
    """
    assert c2w.shape[-2:] == (4, 4) and xi.shape[-1] == 6 and c2w.shape[:-2] == xi.shape[:-1]
    w2c = rigid_inverse(c2w.double())
    return rigid_inverse(correction_matrix(xi.double(), mapping) @ w2c).to(c2w.dtype)


def rotation_angle_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Geodesic angle in degrees (float64) between rotations [..., 3, 3]: ``angle(R_aᵀ R_b)``
    (:func:`recon_core.geometry.rotation_angle` in float64, accurate for tiny angles)."""
    return torch.rad2deg(rotation_angle(R_a.double(), R_b.double()))


def pose_errors(c2w_est: Tensor, c2w_true: Tensor) -> tuple[Tensor, Tensor]:
    """Per-camera (rotation error in degrees [N], camera-centre distance in metres [N]).

    Both [N, 4, 4] OpenCV camera-to-world in the same world frame (no alignment is applied).
    """
    rot = rotation_angle_deg(c2w_est[..., :3, :3], c2w_true[..., :3, :3])
    trans = (c2w_est[..., :3, 3].double() - c2w_true[..., :3, 3].double()).norm(dim=-1)
    return rot.float(), trans.float()


def align_rigid(c2w_est: Tensor, c2w_true: Tensor) -> Tensor:
    """The rigid world transform [4, 4] that best maps estimated cameras onto true ones.

    Rotation: the chordal mean of ``R_true_i R_est_iᵀ`` (SVD projection of their sum onto SO(3));
    translation: the mean of ``c_true_i − R c_est_i`` over camera centres. Unlike Kabsch on the
    centres alone, this is well defined for a straight trajectory (driving), whose roll about the
    path the centres cannot fix. ``align_rigid(...) @ c2w_est`` are the aligned cameras.
    """
    R_est, R_true = c2w_est[..., :3, :3].double(), c2w_true[..., :3, :3].double()
    M = (R_true @ R_est.transpose(-1, -2)).sum(0)
    R = nearest_rotation(M)
    t = (c2w_true[:, :3, 3].double() - c2w_est[:, :3, 3].double() @ R.T).mean(0)
    T = torch.eye(4, dtype=M.dtype, device=M.device)
    T[:3, :3], T[:3, 3] = R, t
    return T
