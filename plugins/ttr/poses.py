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

__all__ = [
    "skew",
    "so3_exp",
    "se3_exp",
    "rigid_inverse",
    "apply_corrections",
    "rotation_angle_deg",
    "pose_errors",
    "align_rigid",
]

_SMALL_ANGLE2 = 1e-8
"""Below this squared angle (rad²) the exponential maps use their Taylor expansions."""


def skew(w: Tensor) -> Tensor:
    """[..., 3] vectors → [..., 3, 3] skew-symmetric matrices with ``skew(w) @ v == cross(w, v)``."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*w.shape[:-1], 3, 3)


def _coefficients(theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sin θ / θ, (1 − cos θ) / θ², (θ − sin θ) / θ³) of θ² [...], finite with finite gradients at 0."""
    small = theta2 < _SMALL_ANGLE2
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe2)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (theta - torch.sin(theta)) / (safe2 * theta))
    return a, b, c


def so3_exp(omega: Tensor) -> Tensor:
    """Rodrigues: axis-angle [..., 3] (radians) → rotation matrices [..., 3, 3]."""
    W = skew(omega)
    a, b, _ = _coefficients((omega * omega).sum(-1))
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(W)
    return eye + a[..., None, None] * W + b[..., None, None] * (W @ W)


def se3_exp(xi: Tensor) -> Tensor:
    """SE(3) exponential: twists [..., 6] = (omega, tau) → rigid transforms [..., 4, 4].

    ``R = so3_exp(omega)``, ``t = V(omega) @ tau`` with ``V = I + b W + c W²`` (the left
    Jacobian of SO(3)), so ``se3_exp(xi) == matrix_exp([[W, tau], [0, 0]])``.
    """
    omega, tau = xi[..., :3], xi[..., 3:]
    W = skew(omega)
    WW = W @ W
    a, b, c = _coefficients((omega * omega).sum(-1))
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(W)
    R = eye + a[..., None, None] * W + b[..., None, None] * WW
    V = eye + b[..., None, None] * W + c[..., None, None] * WW
    t = (V @ tau[..., None])[..., 0]
    top = torch.cat([R, t[..., None]], dim=-1)
    bottom = torch.zeros(*xi.shape[:-1], 1, 4, dtype=xi.dtype, device=xi.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def rigid_inverse(T: Tensor) -> Tensor:
    """Inverse of rigid transforms [..., 4, 4]: ``[Rᵀ, −Rᵀ t]`` (exact, differentiable)."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat([Rt, -Rt @ t], dim=-1)
    return torch.cat([top, T[..., 3:, :]], dim=-2)


def apply_corrections(c2w: Tensor, xi: Tensor) -> Tensor:
    """Corrected camera-to-world [N, 4, 4] from ``c2w`` [N, 4, 4] and twists ``xi`` [N, 6].

    ``w2c' = se3_exp(xi) @ w2c`` (left-multiplied onto world-to-camera; see module doc).
    Computed in float64 and returned in ``c2w``'s dtype; differentiable w.r.t. ``xi``.
    """
    assert c2w.shape[-2:] == (4, 4) and xi.shape[-1] == 6 and c2w.shape[:-2] == xi.shape[:-1]
    w2c = rigid_inverse(c2w.double())
    return rigid_inverse(se3_exp(xi.double()) @ w2c).to(c2w.dtype)


def rotation_angle_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Geodesic angle in degrees between rotations [..., 3, 3]: ``angle(R_aᵀ R_b)``.

    Uses ``atan2(|skew part|, trace − 1)``, accurate for tiny angles (acos of the trace is not).
    """
    R = R_a.double().transpose(-1, -2) @ R_b.double()
    s = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1).norm(dim=-1)
    c = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0
    return torch.rad2deg(torch.atan2(s, c))


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
    U, _, Vt = torch.linalg.svd(M)
    D = torch.eye(3, dtype=M.dtype, device=M.device)
    D[2, 2] = torch.sign(torch.linalg.det(U @ Vt))
    R = U @ D @ Vt
    t = (c2w_true[:, :3, 3].double() - c2w_est[:, :3, 3].double() @ R.T).mean(0)
    T = torch.eye(4, dtype=M.dtype, device=M.device)
    T[:3, :3], T[:3, 3] = R, t
    return T
