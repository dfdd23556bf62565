"""Tests of plugins/ttr/poses.py: the se(3) exponential, pose corrections and pose errors."""

from __future__ import annotations

import math

import torch

from recon_plugins.ttr.poses import align_rigid, apply_corrections, pose_errors, rigid_inverse, rotation_angle_deg, se3_exp, skew, so3_exp


def _twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(4, 4, dtype=xi.dtype)
    m[:3, :3] = skew(xi[:3])
    m[:3, 3] = xi[3:]
    return m


def test_so3_exp_matches_a_known_rotation() -> None:
    R = so3_exp(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(R, expected, atol=1e-12)
    # 60 degrees about x: y -> (0, cos, sin)
    R = so3_exp(torch.tensor([math.pi / 3, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(R @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                          torch.tensor([0.0, 0.5, math.sqrt(3) / 2], dtype=torch.float64), atol=1e-12)


def test_se3_exp_equals_the_matrix_exponential_of_the_twist() -> None:
    g = torch.Generator().manual_seed(0)
    xis = torch.cat([torch.randn(6, 6, generator=g, dtype=torch.float64),
                     1e-6 * torch.randn(2, 6, generator=g, dtype=torch.float64)])  # Taylor branch too
    T = se3_exp(xis)
    for xi, t in zip(xis, T):
        assert torch.allclose(t, torch.linalg.matrix_exp(_twist_matrix(xi)), atol=1e-10)
    assert torch.allclose(se3_exp(torch.zeros(3, 6)), torch.eye(4).expand(3, 4, 4))


def test_exp_map_gradient_is_finite_and_correct_at_zero() -> None:
    omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    R = so3_exp(omega)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    (R @ v)[0].backward()
    # d(R v)/d omega at 0 = -skew(v): row 0 is (0, v_z, -v_y)
    assert torch.allclose(omega.grad, torch.tensor([0.0, 3.0, -2.0], dtype=torch.float64))


def test_corrections_left_multiply_world_to_camera_and_zero_is_identity() -> None:
    g = torch.Generator().manual_seed(1)
    c2w = se3_exp(torch.randn(4, 6, generator=g, dtype=torch.float64))
    assert torch.allclose(apply_corrections(c2w, torch.zeros(4, 6, dtype=torch.float64)), c2w, atol=1e-14)
    xi = 0.1 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    out = apply_corrections(c2w, xi)
    assert torch.allclose(torch.linalg.inv(out), se3_exp(xi) @ torch.linalg.inv(c2w), atol=1e-12)
    # a pure translation correction moves the camera along its own axes: centre -= R tau
    tau = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.5]], dtype=torch.float64)
    moved = apply_corrections(c2w[:1], tau)
    assert torch.allclose(moved[0, :3, 3], c2w[0, :3, 3] - 0.5 * c2w[0, :3, 2], atol=1e-12)
    assert torch.allclose(rigid_inverse(c2w), torch.linalg.inv(c2w), atol=1e-12)


def test_pose_errors_report_degrees_and_metres() -> None:
    a = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    b = a.clone()
    b[0, :3, :3] = so3_exp(torch.tensor([0.0, math.radians(2.0), 0.0], dtype=torch.float64))
    b[1, :3, 3] = torch.tensor([0.3, 0.0, 0.4], dtype=torch.float64)
    rot, trans = pose_errors(a, b)
    assert torch.allclose(rot, torch.tensor([2.0, 0.0]), atol=1e-5)
    assert torch.allclose(trans, torch.tensor([0.0, 0.5]), atol=1e-6)
    tiny = so3_exp(torch.tensor([1e-7, 0.0, 0.0], dtype=torch.float64))
    assert abs(float(rotation_angle_deg(torch.eye(3, dtype=torch.float64), tiny)) - math.degrees(1e-7)) < 1e-12


def test_rigid_alignment_undoes_a_world_transform_even_on_a_straight_path() -> None:
    g = torch.Generator().manual_seed(2)
    true = torch.eye(4, dtype=torch.float64).repeat(6, 1, 1)
    true[:, :3, :3] = so3_exp(0.05 * torch.randn(6, 3, generator=g, dtype=torch.float64))
    true[:, 2, 3] = torch.arange(6, dtype=torch.float64)  # centres on a line
    world = se3_exp(torch.tensor([[0.1, -0.2, 0.3, 1.0, 2.0, -0.5]], dtype=torch.float64))[0]
    est = torch.linalg.inv(world) @ true
    aligned = align_rigid(est, true) @ est
    rot, trans = pose_errors(aligned, true)
    assert float(rot.max()) < 1e-5 and float(trans.max()) < 1e-6
