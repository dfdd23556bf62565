"""VGGT/DGGT 9-d camera pose encoding ("absT_quaR_FoV") and conversions to recon cameras.

encoding[..., 0:3]  translation t of the world-to-camera transform [R | t] (OpenCV axes)
encoding[..., 3:7]  rotation R as a quaternion, scalar LAST (x, y, z, w), w ≥ 0
encoding[..., 7]    vertical field of view   fov_h = 2·atan((H/2) / fy)
encoding[..., 8]    horizontal field of view fov_w = 2·atan((W/2) / fx)

The principal point is the image centre (W/2, H/2), which in recon's convention (pixel centres
at i + 0.5) is the exact centre of the image. Frame 0 is the world reference (identity pose).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon_core.geometry import rotmat_to_quat

__all__ = [
    "quat_to_mat",
    "mat_to_quat",
    "extri_intri_to_pose_encoding",
    "pose_encoding_to_extri_intri",
    "extrinsics_to_c2w",
    "c2w_to_extrinsics",
]


def quat_to_mat(q: Tensor) -> Tensor:
    """Quaternions [..., 4] (x, y, z, w; need not be unit) → rotation matrices [..., 3, 3].

    With VGGT/DGGT's arithmetic: s = 2 / |q|² scales the products (no normalisation first), so the
    cameras equal the original's bit for bit (normalising first differs by a few 1e-7)."""
    x, y, z, w = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        [
            1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
            s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
            s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
        ],
        dim=-1,
    )
    return m.reshape(q.shape[:-1] + (3, 3))


def mat_to_quat(m: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] → unit quaternions [..., 4] (x, y, z, w) with w ≥ 0."""
    return rotmat_to_quat(m)[..., [1, 2, 3, 0]]


def extri_intri_to_pose_encoding(extrinsics: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """extrinsics [..., 3|4, 4] world→camera, intrinsics [..., 3, 3] pixels → encoding [..., 9]."""
    H, W = image_hw
    quat = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1).float()


def pose_encoding_to_extri_intri(encoding: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """encoding [..., 9] → (extrinsics [..., 3, 4] world→camera, intrinsics [..., 3, 3])."""
    H, W = image_hw
    R = quat_to_mat(encoding[..., 3:7])
    extrinsics = torch.cat([R, encoding[..., :3, None]], dim=-1)
    fy = (H / 2.0) / torch.tan(encoding[..., 7] / 2.0)
    fx = (W / 2.0) / torch.tan(encoding[..., 8] / 2.0)
    K = torch.zeros(encoding.shape[:-1] + (3, 3), dtype=encoding.dtype, device=encoding.device)
    K[..., 0, 0], K[..., 1, 1] = fx, fy
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = W / 2.0, H / 2.0, 1.0
    return extrinsics, K


def extrinsics_to_c2w(extrinsics: Tensor) -> Tensor:
    """World→camera [..., 3|4, 4] → camera→world 4x4 [..., 4, 4] (closed-form rigid inverse)."""
    R, t = extrinsics[..., :3, :3], extrinsics[..., :3, 3:]
    c2w = torch.zeros(extrinsics.shape[:-2] + (4, 4), dtype=extrinsics.dtype, device=extrinsics.device)
    c2w[..., :3, :3] = R.transpose(-1, -2)
    c2w[..., :3, 3:] = -R.transpose(-1, -2) @ t
    c2w[..., 3, 3] = 1.0
    return c2w


def c2w_to_extrinsics(c2w: Tensor) -> Tensor:
    """Camera→world [..., 4, 4] → world→camera 4x4 [..., 4, 4]."""
    return extrinsics_to_c2w(c2w)
