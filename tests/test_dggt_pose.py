"""DGGT pose encoding (absT_quaR_FoV) ↔ extrinsics/intrinsics ↔ recon's c2w cameras."""

from __future__ import annotations

import math

import torch

from recon_plugins.dggt.pose_encoding import (
    c2w_to_extrinsics,
    extri_intri_to_pose_encoding,
    extrinsics_to_c2w,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    quat_to_mat,
)


def _random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=generator, dtype=torch.float64), dim=-1)
    return quat_to_mat(q)


def test_rotation_quaternion_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    R = _random_rotations(256, g)
    # include the hard cases: identity, 180° turns about each axis
    R = torch.cat([R, torch.eye(3, dtype=R.dtype)[None], torch.diag(torch.tensor([1.0, -1, -1], dtype=R.dtype))[None],
                   torch.diag(torch.tensor([-1.0, 1, -1], dtype=R.dtype))[None], torch.diag(torch.tensor([-1.0, -1, 1], dtype=R.dtype))[None]])
    q = mat_to_quat(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=q.dtype), atol=1e-9)
    assert (q[:, 3] >= 0).all(), "scalar-last, w >= 0"
    assert torch.allclose(quat_to_mat(q), R, atol=1e-9)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-9)


def test_quaternion_is_scalar_last() -> None:
    angle = 0.3
    q = torch.tensor([0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)])  # about +z
    R = quat_to_mat(q)
    assert torch.allclose(R, torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]), atol=1e-6)


def test_encoding_round_trip() -> None:
    g = torch.Generator().manual_seed(1)
    B, S, H, W = 2, 5, 294, 518
    R = _random_rotations(B * S, g).reshape(B, S, 3, 3)
    t = torch.randn(B, S, 3, 1, generator=g, dtype=torch.float64)
    ext = torch.cat([R, t], dim=-1)
    fx = 300 + 200 * torch.rand(B, S, generator=g, dtype=torch.float64)
    fy = 300 + 200 * torch.rand(B, S, generator=g, dtype=torch.float64)
    K = torch.zeros(B, S, 3, 3, dtype=torch.float64)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, W / 2, H / 2, 1
    enc = extri_intri_to_pose_encoding(ext.float(), K.float(), (H, W))
    assert enc.shape == (B, S, 9)
    assert torch.allclose(enc[..., :3], t[..., 0].float())
    assert torch.allclose(enc[..., 7], 2 * torch.atan((H / 2) / fy).float())
    ext2, K2 = pose_encoding_to_extri_intri(enc, (H, W))
    assert torch.allclose(ext2, ext.float(), atol=1e-5)
    assert torch.allclose(K2, K.float(), rtol=1e-5, atol=1e-3)
    assert torch.allclose(extri_intri_to_pose_encoding(ext2, K2, (H, W)), enc, atol=1e-5)


def test_principal_point_is_the_image_centre() -> None:
    enc = torch.tensor([[[0, 0, 0, 0, 0, 0, 1.0, math.pi / 2, math.pi / 2]]])
    ext, K = pose_encoding_to_extri_intri(enc, (100, 200))
    assert torch.allclose(ext, torch.eye(3, 4)[None, None])
    assert torch.allclose(K[0, 0], torch.tensor([[100.0, 0, 100], [0, 50, 50], [0, 0, 1]]), atol=1e-4)


def test_extrinsics_to_c2w() -> None:
    g = torch.Generator().manual_seed(2)
    R = _random_rotations(7, g).float()
    t = torch.randn(7, 3, 1, generator=g)
    ext = torch.cat([R, t], dim=-1)
    c2w = extrinsics_to_c2w(ext)
    w2c = torch.cat([ext, torch.tensor([0, 0, 0, 1.0]).expand(7, 1, 4)], dim=1)
    assert torch.allclose(c2w @ w2c, torch.eye(4).expand(7, 4, 4), atol=1e-5)
    assert torch.allclose(c2w[:, :3, 3], -(R.transpose(1, 2) @ t)[..., 0], atol=1e-6)
    assert torch.allclose(c2w_to_extrinsics(c2w), w2c, atol=1e-5)
