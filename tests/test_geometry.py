"""recon_core.geometry against scipy / skimage / closed forms, round trips and gradchecks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation, Slerp

from recon_core.geometry import (
    apply_similarity,
    camera_similarity,
    knn_distances,
    nearest_rotation,
    project_points,
    quat_multiply,
    quat_normalize,
    quat_to_rotmat,
    rigid_inverse,
    rotation_angle,
    rotmat_to_quat,
    se3_exp,
    se3_log,
    skew,
    slerp,
    slerp_rotmat,
    so3_exp,
    so3_log,
    transform_c2w,
    umeyama,
    unproject_depth,
)

D = torch.float64


def wxyz(r: Rotation) -> torch.Tensor:
    """scipy (xyzw) → torch wxyz."""
    return torch.from_numpy(np.roll(r.as_quat(), 1, axis=-1))


def random_rotations(n: int, seed: int) -> Rotation:
    return Rotation.random(n, random_state=seed)


def half_turns() -> Rotation:
    """Rotations by exactly π and just below π about assorted axes (hard cases)."""
    axes = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 3], [-0.3, 0.2, -0.9]], dtype=float)
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.array([math.pi, math.pi - 1e-7, math.pi - 1e-4, math.pi - 0.3, 2.0, 1e-9])
    return Rotation.from_rotvec(np.concatenate([axes * a for a in angles]))


# ------------------------------------------------------------------------------- quaternions


def test_quat_to_rotmat_matches_scipy_and_normalises() -> None:
    r = random_rotations(50, 0)
    q = wxyz(r) * torch.linspace(0.2, 5.0, 50, dtype=D)[:, None]  # not unit: normalised inside
    assert torch.allclose(quat_to_rotmat(q), torch.from_numpy(r.as_matrix()), atol=1e-12)
    assert quat_to_rotmat(q.reshape(5, 10, 4)).shape == (5, 10, 3, 3)


def test_rotmat_to_quat_matches_scipy_with_nonnegative_w() -> None:
    r = random_rotations(200, 1) * Rotation.from_rotvec([0.0, 0.0, 0.0])
    q = rotmat_to_quat(torch.from_numpy(r.as_matrix()))
    ref = wxyz(r)
    ref = torch.where(ref[:, :1] < 0, -ref, ref)
    assert (q[:, 0] >= 0).all()
    assert torch.allclose(q, ref, atol=1e-12)
    assert torch.allclose(q.norm(dim=-1), torch.ones(200, dtype=D))


def test_rotmat_to_quat_near_half_turns_up_to_sign() -> None:
    r = half_turns()
    q = rotmat_to_quat(torch.from_numpy(r.as_matrix()))
    ref = wxyz(r)
    err = torch.minimum((q - ref).norm(dim=-1), (q + ref).norm(dim=-1))
    assert err.max() < 1e-12
    assert torch.allclose(quat_to_rotmat(q), torch.from_numpy(r.as_matrix()), atol=1e-12)


def test_quat_round_trip_float32_and_batch_shape() -> None:
    R = torch.from_numpy(random_rotations(24, 2).as_matrix()).float().reshape(2, 3, 4, 3, 3)
    q = rotmat_to_quat(R)
    assert q.shape == (2, 3, 4, 4) and q.dtype == torch.float32
    assert torch.allclose(quat_to_rotmat(q), R, atol=1e-6)


def test_quat_multiply_composes_rotations_like_scipy() -> None:
    a, b = random_rotations(30, 3), random_rotations(30, 4)
    ab = quat_multiply(wxyz(a), wxyz(b))
    assert torch.allclose(quat_to_rotmat(ab), torch.from_numpy((a * b).as_matrix()), atol=1e-12)
    # identity and non-commutativity
    one = torch.tensor([1.0, 0, 0, 0], dtype=D)
    assert torch.allclose(quat_multiply(one, wxyz(a)), wxyz(a))
    assert not torch.allclose(ab, quat_multiply(wxyz(b), wxyz(a)))


def test_quat_normalize() -> None:
    q = torch.tensor([[2.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0], [0.0, 0, 0, 0]], dtype=D)
    n = quat_normalize(q)
    assert torch.allclose(n[:2].norm(dim=-1), torch.ones(2, dtype=D))
    assert torch.equal(n[2], torch.zeros(4, dtype=D))  # no NaN for a zero quaternion


def test_slerp_matches_scipy_and_takes_the_short_way() -> None:
    r = random_rotations(2, 5)
    ts = np.linspace(0.0, 1.0, 7)
    ref = Slerp([0.0, 1.0], r)(ts).as_matrix()
    q0, q1 = wxyz(r[0]), wxyz(r[1])
    for sign in (1.0, -1.0):  # -q1 is the same rotation: the shortest path must not change
        out = quat_to_rotmat(slerp(q0.expand(7, 4), sign * q1.expand(7, 4), torch.from_numpy(ts)))
        assert torch.allclose(out, torch.from_numpy(ref), atol=1e-12)
    # a float t and the endpoints
    assert torch.allclose(slerp(q0, q1, 0.0), q0, atol=1e-15)
    mid = slerp(q0, q1, 0.5)
    assert abs(float(mid.norm()) - 1.0) < 1e-12
    assert math.isclose(float(rotation_angle(quat_to_rotmat(q0), quat_to_rotmat(mid))),
                        0.5 * float(rotation_angle(quat_to_rotmat(q0), quat_to_rotmat(q1))), rel_tol=1e-10)


def test_slerp_rotmat_matches_scipy() -> None:
    r = random_rotations(10, 20)
    ts = np.linspace(0.0, 1.0, 5)
    R = torch.from_numpy(r.as_matrix())
    for i in range(0, 10, 2):
        ref = Slerp([0.0, 1.0], r[i : i + 2])(ts).as_matrix()
        out = slerp_rotmat(R[i].expand(5, 3, 3), R[i + 1].expand(5, 3, 3), torch.from_numpy(ts))
        assert torch.allclose(out, torch.from_numpy(ref), atol=1e-12)
    assert torch.allclose(slerp_rotmat(R[0], R[1], 0.25), torch.from_numpy(Slerp([0.0, 1.0], r[:2])(0.25).as_matrix()), atol=1e-12)


def test_slerp_of_directions_and_tiny_angles() -> None:
    a = torch.tensor([1.0, 0.0, 0.0], dtype=D)
    b = torch.tensor([-1.0, 1.0, 0.0], dtype=D) / math.sqrt(2)  # 135 degrees apart
    out = slerp(a, b, 1.0 / 3.0, shortest=False)
    assert torch.allclose(out, torch.tensor([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0], dtype=D), atol=1e-12)
    # shortest=True would have flipped b (dot < 0) and gone the other way round
    assert not torch.allclose(slerp(a, b, 1.0 / 3.0), out)
    c = torch.tensor([1.0, 1e-9, 0.0], dtype=D)
    c = c / c.norm()
    assert torch.allclose(slerp(a, c, 0.5), (a + c) / 2, atol=1e-15)


# ------------------------------------------------------------------------------- SO(3)/SE(3)


def test_so3_exp_log_match_scipy_rotvec() -> None:
    r = random_rotations(100, 6)
    rv = torch.from_numpy(r.as_rotvec())
    assert torch.allclose(so3_exp(rv), torch.from_numpy(r.as_matrix()), atol=1e-12)
    assert torch.allclose(so3_log(torch.from_numpy(r.as_matrix())), rv, atol=1e-10)


def test_so3_log_small_and_half_turn_angles() -> None:
    r = half_turns()
    rv = torch.from_numpy(r.as_rotvec())
    out = so3_log(torch.from_numpy(r.as_matrix()))
    err = torch.minimum((out - rv).norm(dim=-1), (out + rv).norm(dim=-1))  # ±omega at exactly π
    assert err.max() < 1e-9
    assert torch.allclose(so3_exp(out), torch.from_numpy(r.as_matrix()), atol=1e-12)
    assert torch.equal(so3_log(torch.eye(3, dtype=D)), torch.zeros(3, dtype=D))
    tiny = torch.tensor([1e-9, -2e-9, 3e-10], dtype=D)
    assert torch.allclose(so3_log(so3_exp(tiny)), tiny, rtol=1e-6, atol=0)


def test_so3_exp_known_rotation() -> None:
    R = so3_exp(torch.tensor([0.0, 0.0, math.pi / 2], dtype=D))
    assert torch.allclose(R, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=D), atol=1e-15)
    v = torch.tensor([0.3, -1.0, 2.0], dtype=D)
    assert torch.allclose(skew(v) @ torch.tensor([1.0, 2, 3], dtype=D), torch.linalg.cross(v, torch.tensor([1.0, 2, 3], dtype=D)))


def test_se3_exp_is_the_matrix_exponential_and_log_inverts_it() -> None:
    g = torch.Generator().manual_seed(7)
    xi = torch.randn(40, 6, generator=g, dtype=D)
    norm = xi[:, :3].norm(dim=-1, keepdim=True)
    xi[:, :3] = torch.where(norm > 3.0, xi[:, :3] / norm * 2.5, xi[:, :3])  # angles in [0, π): log's range
    xi[:5, :3] *= 1e-6  # almost pure translations
    xi[5:10, :3] = xi[5:10, :3] / xi[5:10, :3].norm(dim=-1, keepdim=True) * 3.0  # close to half turns
    hat = torch.zeros(40, 4, 4, dtype=D)
    hat[:, :3, :3], hat[:, :3, 3] = skew(xi[:, :3]), xi[:, 3:]
    T = se3_exp(xi)
    assert torch.allclose(T, torch.linalg.matrix_exp(hat), atol=1e-12)
    assert torch.allclose(se3_log(T), xi, atol=1e-9)
    assert torch.equal(se3_exp(torch.zeros(6, dtype=D)), torch.eye(4, dtype=D))


def test_rigid_inverse() -> None:
    T = se3_exp(torch.randn(5, 6, generator=torch.Generator().manual_seed(8), dtype=D))
    assert torch.allclose(rigid_inverse(T) @ T, torch.eye(4, dtype=D).expand(5, 4, 4), atol=1e-12)


def test_rotation_angle_matches_scipy_near_zero_and_pi() -> None:
    a, b = random_rotations(50, 9), random_rotations(50, 10)
    ref = (a.inv() * b).magnitude()
    out = rotation_angle(torch.from_numpy(a.as_matrix()), torch.from_numpy(b.as_matrix()))
    assert torch.allclose(out, torch.from_numpy(ref), atol=1e-12)
    h = half_turns()
    out = rotation_angle(torch.eye(3, dtype=D), torch.from_numpy(h.as_matrix()))
    assert torch.allclose(out, torch.from_numpy(h.magnitude()), rtol=1e-9, atol=0)
    # a 1e-9 rad rotation: acos of the trace would give 0 or ~2e-8
    tiny = so3_exp(torch.tensor([0.0, 1e-9, 0.0], dtype=D))
    assert math.isclose(float(rotation_angle(tiny, torch.eye(3, dtype=D))), 1e-9, rel_tol=1e-6)
    # broadcasting
    assert rotation_angle(torch.eye(3, dtype=D), torch.from_numpy(b.as_matrix())).shape == (50,)


def test_gradients_are_finite_at_special_points() -> None:
    eye = torch.eye(3, dtype=D, requires_grad=True)
    rotation_angle(eye, torch.eye(3, dtype=D)).backward()
    assert torch.isfinite(eye.grad).all()
    R = torch.from_numpy(Rotation.from_rotvec([math.pi, 0, 0]).as_matrix()).requires_grad_(True)
    so3_log(R).sum().backward()
    assert torch.isfinite(R.grad).all()
    w = torch.zeros(3, dtype=D, requires_grad=True)
    so3_exp(w).sum().backward()
    assert torch.isfinite(w.grad).all()


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(11)
    w = (0.7 * torch.randn(4, 3, generator=g, dtype=D)).requires_grad_(True)
    xi = torch.randn(3, 6, generator=g, dtype=D).requires_grad_(True)
    q = torch.randn(5, 4, generator=g, dtype=D).requires_grad_(True)
    R = so3_exp(torch.randn(4, 3, generator=g, dtype=D)).detach().requires_grad_(True)
    R2 = so3_exp(torch.randn(4, 3, generator=g, dtype=D)).detach()
    assert torch.autograd.gradcheck(so3_exp, (w,))
    assert torch.autograd.gradcheck(se3_exp, (xi,))
    assert torch.autograd.gradcheck(lambda x: se3_log(se3_exp(x)), (xi,))
    assert torch.autograd.gradcheck(quat_to_rotmat, (q,))
    assert torch.autograd.gradcheck(lambda m: so3_log(m), (R,))
    assert torch.autograd.gradcheck(lambda m: rotation_angle(m, R2), (R,))
    assert torch.autograd.gradcheck(lambda m: rotmat_to_quat(m), (R,))
    t = torch.tensor([0.1, 0.4, 0.9], dtype=D, requires_grad=True)
    q0, q1 = quat_normalize(q[:3].detach()), quat_normalize(q[2:].detach())
    assert torch.autograd.gradcheck(lambda tt: slerp(q0, q1, tt), (t,))


# ---------------------------------------------------------------------------------- alignment


def test_umeyama_recovers_a_similarity_and_matches_skimage() -> None:
    from skimage.transform import SimilarityTransform

    g = torch.Generator().manual_seed(12)
    src = torch.randn(30, 3, generator=g, dtype=D)
    R_true = torch.from_numpy(random_rotations(1, 13).as_matrix()[0])
    t_true = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    dst = 2.5 * src @ R_true.T + t_true
    R, t, s = umeyama(src, dst)
    assert torch.allclose(R, R_true, atol=1e-12) and torch.allclose(t, t_true, atol=1e-12)
    assert math.isclose(float(s), 2.5, rel_tol=1e-12)
    # with noise: the same least-squares answer as skimage's Umeyama estimate
    noisy = dst + 0.05 * torch.randn(30, 3, generator=g, dtype=D)
    R, t, s = umeyama(src, noisy)
    if hasattr(SimilarityTransform, "from_estimate"):
        ref = SimilarityTransform.from_estimate(src.numpy(), noisy.numpy())
    else:
        ref = SimilarityTransform(dimensionality=3)
        assert ref.estimate(src.numpy(), noisy.numpy())
    M = torch.eye(4, dtype=D)
    M[:3, :3], M[:3, 3] = s * R, t
    assert torch.allclose(M, torch.from_numpy(ref.params), atol=1e-10)
    assert math.isclose(torch.linalg.det(R).item(), 1.0, rel_tol=1e-12)


def test_umeyama_rigid_reflection_and_batch() -> None:
    g = torch.Generator().manual_seed(14)
    src = torch.randn(2, 20, 3, generator=g, dtype=D)
    R_true = so3_exp(torch.randn(2, 3, generator=g, dtype=D))
    dst = src @ R_true.transpose(-1, -2) + torch.tensor([[0.0, 1, 2], [3, 4, 5]], dtype=D)[:, None]
    R, t, s = umeyama(src, 3.0 * dst, with_scale=False)
    assert torch.equal(s, torch.ones(2, dtype=D))
    assert torch.allclose(R, R_true, atol=1e-10) and R.shape == (2, 3, 3) and t.shape == (2, 3)
    # mirrored points: the best *proper* rotation, never a reflection
    mirrored = src[0] * torch.tensor([1.0, 1.0, -1.0], dtype=D)
    R, _, _ = umeyama(src[0], mirrored)
    assert math.isclose(torch.linalg.det(R).item(), 1.0, rel_tol=1e-12)
    with pytest.raises(ValueError):
        umeyama(src[0], src[0, :5])


def test_umeyama_gradcheck() -> None:
    g = torch.Generator().manual_seed(15)
    src = torch.randn(8, 3, generator=g, dtype=D)
    dst = (2.0 * src @ so3_exp(torch.tensor([0.3, -0.2, 0.5], dtype=D)).T + 1.0 + 0.1 * torch.randn(8, 3, generator=g, dtype=D))
    dst.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: torch.cat([x.reshape(-1) for x in umeyama(src, d)]), (dst,))


def test_nearest_rotation_is_the_chordal_mean() -> None:
    R0 = so3_exp(torch.tensor([0.4, 0.1, -0.3], dtype=D))
    g = torch.Generator().manual_seed(16)
    noisy = so3_exp(0.01 * torch.randn(50, 3, generator=g, dtype=D)) @ R0
    mean = nearest_rotation(noisy.sum(0))
    assert rotation_angle(mean, R0) < 0.005
    assert torch.allclose(nearest_rotation(R0), R0, atol=1e-12)
    assert math.isclose(torch.linalg.det(nearest_rotation(-torch.eye(3, dtype=D))).item(), 1.0)


# --------------------------------------------------------------------------------- projection


def _camera() -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.tensor([[100.0, 0.0, 40.0], [0.0, 120.0, 30.0], [0.0, 0.0, 1.0]], dtype=D)
    c2w = se3_exp(torch.tensor([0.1, -0.2, 0.05, 0.3, -0.1, 2.0], dtype=D))
    return K, c2w


def test_project_points_known_answer() -> None:
    K = torch.tensor([[100.0, 0.0, 40.0], [0.0, 120.0, 30.0], [0.0, 0.0, 1.0]], dtype=D)
    w2c = torch.eye(4, dtype=D)
    w2c[:3, 3] = torch.tensor([0.0, 0.0, 1.0])  # the camera sits at z = -1, looking down +z
    pts = torch.tensor([[0.0, 0.0, 1.0], [1.0, -0.5, 3.0]], dtype=D)
    uv, z = project_points(pts, K, w2c)
    assert torch.allclose(z, torch.tensor([2.0, 4.0], dtype=D))
    # x right, y down: +x lands right of the centre, -y above it
    assert torch.allclose(uv, torch.tensor([[40.0, 30.0], [40.0 + 100 * 0.25, 30.0 - 120 * 0.125]], dtype=D))


def test_project_unproject_round_trip_and_pixel_centres() -> None:
    K, c2w = _camera()
    H, W = 6, 8
    depth = torch.linspace(1.0, 5.0, H * W, dtype=D).reshape(H, W)
    pts = unproject_depth(depth, K, c2w)
    assert pts.shape == (H, W, 3)
    uv, z = project_points(pts.reshape(-1, 3), K, rigid_inverse(c2w))
    v, u = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    assert torch.allclose(uv, torch.stack([u + 0.5, v + 0.5], dim=-1).reshape(-1, 2), atol=1e-10)
    assert torch.allclose(z, depth.reshape(-1), atol=1e-12)
    # the pixel at the principal point lies on the optical axis (camera +z), depth away from the centre
    K2 = K.clone()
    K2[0, 2], K2[1, 2] = 2.5, 1.5
    p = unproject_depth(torch.full((4, 4), 3.0, dtype=D), K2, c2w)[1, 2]
    assert torch.allclose(p, c2w[:3, 3] + 3.0 * c2w[:3, 2], atol=1e-12)


def test_projection_batched_and_skew() -> None:
    K, c2w = _camera()
    K = K.clone()
    K[0, 1] = 7.0  # skew
    Ks = torch.stack([K, K * torch.tensor([[2.0], [2.0], [1.0]], dtype=D)])
    c2ws = torch.stack([c2w, se3_exp(torch.tensor([0.0, 0.3, 0.0, -1.0, 0.0, 0.5], dtype=D))])
    depth = 1.0 + torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(17), dtype=D)
    pts = unproject_depth(depth, Ks, c2ws)
    assert pts.shape == (2, 5, 7, 3)
    uv, z = project_points(pts.reshape(2, -1, 3), Ks, rigid_inverse(c2ws))
    v, u = torch.meshgrid(torch.arange(5, dtype=D), torch.arange(7, dtype=D), indexing="ij")
    assert torch.allclose(uv, torch.stack([u + 0.5, v + 0.5], dim=-1).reshape(1, -1, 2).expand(2, -1, 2), atol=1e-10)
    assert torch.allclose(z, depth.reshape(2, -1), atol=1e-12)
    # one point set into several cameras
    uv1, z1 = project_points(pts[0, 0], Ks, rigid_inverse(c2ws))
    assert uv1.shape == (2, 7, 2) and z1.shape == (2, 7)
    assert torch.allclose(uv1[0], uv[0, :7])


def test_unproject_depth_gradcheck() -> None:
    K, c2w = _camera()
    depth = (1.0 + torch.rand(3, 4, generator=torch.Generator().manual_seed(18), dtype=D)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: unproject_depth(d, K, c2w), (depth,))
    pts = torch.randn(5, 3, dtype=D) + torch.tensor([0.0, 0.0, 4.0], dtype=D)
    assert torch.autograd.gradcheck(lambda p: project_points(p, K, rigid_inverse(c2w)), (pts.requires_grad_(True),))


# ----------------------------------------------------------------------------------- k-NN


def test_knn_distances_matches_a_brute_force_reference() -> None:
    g = torch.Generator().manual_seed(19)
    pts = torch.randn(300, 3, generator=g) * 10 + 40.0  # far from the origin: no cancellation allowed
    pts[5] = pts[6]  # a duplicate: its nearest neighbour is at distance 0
    p = pts.double().numpy()
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    ref = np.sort(d, axis=1)[:, 1:4].mean(1)
    for method in ("kdtree", "brute"):
        out = knn_distances(pts, 3, method=method, chunk_size=64)
        assert out.dtype == torch.float32 and out.shape == (300,)
        assert np.allclose(out.numpy(), ref, rtol=1e-6), method
    assert torch.equal(knn_distances(pts, 3, method="kdtree"), knn_distances(pts, 3, method="brute", chunk_size=7))
    # the same as scipy's k-d tree
    dist, _ = cKDTree(p).query(p, k=6)
    assert np.allclose(knn_distances(pts.double(), 5).numpy(), dist[:, 1:].mean(1), rtol=1e-12)


def test_knn_distances_auto_is_brute_force_for_small_cpu_clouds_without_scipy() -> None:
    """Up to KNN_BRUTE_MAX CPU points "auto" takes brute force in 8 MB chunks: the k-d tree's
    distances exactly, and scipy (~30 MB resident once imported) is not imported."""
    import subprocess
    import sys

    from recon_core.geometry import KNN_BRUTE_MAX

    g = torch.Generator().manual_seed(3)
    pts = torch.rand(3000, 3, generator=g) * 5.0 - 20.0
    assert len(pts) <= KNN_BRUTE_MAX
    assert torch.equal(knn_distances(pts, 3), knn_distances(pts, 3, method="kdtree"))
    code = ("import sys, torch; from recon_core.geometry import knn_distances; "
            "knn_distances(torch.rand(2000, 3), 3); print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_knn_distances_few_points() -> None:
    two = torch.tensor([[0.0, 0, 0], [3.0, 4.0, 0]])
    assert torch.allclose(knn_distances(two, 3), torch.tensor([5.0, 5.0]))  # only one neighbour available
    assert torch.equal(knn_distances(two[:1], 3, lone=0.25), torch.tensor([0.25]))
    assert knn_distances(torch.zeros(0, 3), 3).shape == (0,)
    with pytest.raises(ValueError):
        knn_distances(two, 3, method="octree")


def _poses(rotations: Rotation, centres: np.ndarray) -> torch.Tensor:
    c2w = torch.eye(4, dtype=D).repeat(len(centres), 1, 1)
    c2w[:, :3, :3] = torch.from_numpy(rotations.as_matrix())
    c2w[:, :3, 3] = torch.from_numpy(centres)
    return c2w


def test_camera_similarity_recovers_a_known_similarity() -> None:
    """Cameras in a predicted frame (camera 0 at the origin, other scale) map onto known poses, and
    points with them: checked against a similarity built with scipy."""
    rng = np.random.default_rng(3)
    known = _poses(random_rotations(5, 1), rng.normal(size=(5, 3)) * 2.0)
    R = torch.from_numpy(Rotation.random(random_state=7).as_matrix())
    s, t = 0.37, torch.tensor([0.5, -1.0, 2.0], dtype=D)
    # predicted = the inverse similarity applied to the known cameras
    predicted = known.clone()
    predicted[:, :3, :3] = R.T @ known[:, :3, :3]
    predicted[:, :3, 3] = ((known[:, :3, 3] - t) @ R) / s
    R_est, t_est, s_est = camera_similarity(predicted, known)
    assert torch.allclose(R_est, R, atol=1e-10) and torch.allclose(t_est, t, atol=1e-10)
    assert float(s_est) == pytest.approx(s, rel=1e-10)
    assert torch.allclose(transform_c2w(predicted, R_est, t_est, s_est), known, atol=1e-10)
    points = torch.from_numpy(rng.normal(size=(20, 3)))
    assert torch.allclose(apply_similarity((points - t) @ R / s, R_est, t_est, s_est), points, atol=1e-10)
    # with exact centres, the least-squares similarity of the camera centres agrees
    R_u, t_u, s_u = umeyama(predicted[:, :3, 3], known[:, :3, 3])
    assert torch.allclose(R_u, R_est, atol=1e-8) and float(s_u) == pytest.approx(float(s_est), rel=1e-8)


def test_camera_similarity_of_one_camera_keeps_the_scale() -> None:
    c2w = _poses(random_rotations(1, 4), np.array([[1.0, 2.0, 3.0]]))
    R, t, s = camera_similarity(c2w, c2w)
    assert float(s) == 1.0 and torch.allclose(R, torch.eye(3, dtype=D)) and torch.allclose(t, torch.zeros(3, dtype=D), atol=1e-12)
