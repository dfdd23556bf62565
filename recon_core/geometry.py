"""Rotations, rigid motions, alignment, projection and neighbour distances: the one place for them.

Conventions (see docs/conventions.md):

* Quaternions are **wxyz** (scalar first), as the Gaussian parameters and gsplat store them.
  ``rotmat_to_quat`` returns unit quaternions with ``w >= 0``; ``quat_to_rotmat`` normalises.
  (VGGT/DGGT's pose encoding stores xyzw: reorder with ``q[..., [3, 0, 1, 2]]``.)
* ``R(quat_multiply(a, b)) == R(a) @ R(b)`` (Hamilton product).
* Axis-angle vectors ``omega`` [..., 3] are in radians; twists ``xi = (omega, tau)`` [..., 6]
  map to rigid transforms [..., 4, 4] by the SE(3) exponential.
* Cameras are OpenCV: x right, y down, z forward; ``c2w`` camera-to-world, ``w2c`` its inverse.
  Intrinsics ``K`` put pixel centres at i + 0.5 (the top-left pixel's centre is (0.5, 0.5)), so
  ``unproject_depth`` places pixel (row r, column c) at (c + 0.5, r + 0.5) and
  ``project_points`` of that world point gives back exactly those coordinates.

Everything is batched over leading dimensions (broadcasting) and differentiable with finite
gradients at the special points (zero angle, half turn), except ``knn_distances`` (a distance
lookup, no gradients) and ``umeyama``/``nearest_rotation`` (differentiable where the SVD is,
i.e. away from repeated singular values).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "skew",
    "quat_normalize",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "quat_multiply",
    "slerp",
    "slerp_rotmat",
    "so3_exp",
    "so3_log",
    "se3_exp",
    "se3_log",
    "rigid_inverse",
    "rotation_angle",
    "nearest_rotation",
    "umeyama",
    "project_points",
    "unproject_depth",
    "knn_distances",
]

_SMALL_ANGLE2 = 1e-8
"""Below this squared angle (rad²) the exponential and logarithm use Taylor expansions."""


# ----------------------------------------------------------------------------------- quaternions


def skew(w: Tensor) -> Tensor:
    """[..., 3] vectors → [..., 3, 3] skew-symmetric matrices with ``skew(w) @ v == cross(w, v)``."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*w.shape[:-1], 3, 3)


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit quaternions [..., 4] (``q / max(|q|, eps)``)."""
    return F.normalize(q, dim=-1, eps=eps)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (wxyz; normalised here)."""
    w, x, y, z = quat_normalize(q).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Unit quaternions [..., 4] (wxyz, ``w >= 0``) of rotation matrices [..., 3, 3].

    Per matrix, the best conditioned of the four closed forms is used (the one built around the
    largest of |w|, |x|, |y|, |z|): each candidate is ``4 q_k q`` with no square root, so the result
    is accurate for every rotation (half turns included) and differentiable. A half turn (w = 0)
    has two valid answers ``±q``; which one is returned is unspecified.
    """
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    cands = torch.stack(
        [
            torch.stack([diag[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),  # 4 w q
            torch.stack([m21 - m12, diag[..., 1], m01 + m10, m02 + m20], dim=-1),  # 4 x q
            torch.stack([m02 - m20, m01 + m10, diag[..., 2], m12 + m21], dim=-1),  # 4 y q
            torch.stack([m10 - m01, m02 + m20, m12 + m21, diag[..., 3]], dim=-1),  # 4 z q
        ],
        dim=-2,
    )
    best = diag.argmax(dim=-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = quat_normalize(q)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a ⊗ b`` of wxyz quaternions [..., 4] (broadcasting): the rotation ``R(a) R(b)``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def slerp(q0: Tensor, q1: Tensor, t: float | Tensor, shortest: bool = True) -> Tensor:
    """Spherical linear interpolation between unit vectors [..., D] at fraction ``t`` (0: q0, 1: q1).

    For quaternions (``shortest=True``) ``q1`` is negated when ``q0 · q1 < 0``, so the path is
    the shorter rotation; with ``shortest=False`` any unit vectors (e.g. directions [..., 3]) are
    interpolated along their great circle as given. ``t`` is a float or a tensor broadcasting
    against the batch shape [...]. Inputs must be unit length; below an angle of 1e-6 the
    interpolation is linear (it differs from the arc by O(angle²)).
    """
    dot = (q0 * q1).sum(-1, keepdim=True)
    if shortest:
        q1 = torch.where(dot < 0, -q1, q1)
    # the angle between the unit vectors, accurate also when they are almost equal or opposite
    theta = 2.0 * torch.atan2((q0 - q1).norm(dim=-1, keepdim=True), (q0 + q1).norm(dim=-1, keepdim=True))
    t = torch.as_tensor(t, dtype=q0.dtype, device=q0.device)
    t = t[..., None] if t.ndim else t
    small = theta < 1e-6
    sin = torch.where(small, torch.ones_like(theta), torch.sin(theta))
    a = torch.where(small, 1 - t, torch.sin((1 - t) * theta) / sin)
    b = torch.where(small, t, torch.sin(t * theta) / sin)
    return a * q0 + b * q1


def slerp_rotmat(R0: Tensor, R1: Tensor, t: float | Tensor) -> Tensor:
    """Rotations [..., 3, 3] a fraction ``t`` of the way from ``R0`` to ``R1`` along the shorter
    geodesic (quaternion :func:`slerp`); ``t`` as there."""
    return quat_to_rotmat(slerp(rotmat_to_quat(R0), rotmat_to_quat(R1), t))


# ------------------------------------------------------------------------------- SO(3) / SE(3)


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


def _vee_antisym(R: Tensor) -> Tensor:
    """(R − Rᵀ)∨ [..., 3] = 2 sin θ · axis for a rotation R."""
    return torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], dim=-1)


def _safe_norm(v: Tensor) -> Tensor:
    """|v| over the last dimension with a zero (not NaN) gradient at v = 0."""
    n2 = (v * v).sum(-1)
    pos = n2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, n2, torch.ones_like(n2))), torch.zeros_like(n2))


def _angle_parts(R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(v = (R − Rᵀ)∨, sin θ, cos θ) of rotations [..., 3, 3]."""
    v = _vee_antisym(R)
    s = 0.5 * _safe_norm(v)
    c = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0)
    return v, s, c


def so3_log(R: Tensor) -> Tensor:
    """Axis-angle vectors [..., 3] (angle in [0, π]) of rotation matrices [..., 3, 3]; inverse of :func:`so3_exp`.

    The angle is ``atan2(sin θ, cos θ)`` (accurate at every angle). For θ ≤ π/2 the axis comes from
    the antisymmetric part ``(R − Rᵀ) / (2 sin θ)`` (Taylor expansion near 0); beyond, from the
    symmetric part ``(R + Rᵀ)/2 − cos θ I = (1 − cos θ) a aᵀ``, which stays accurate up to the half
    turn, where ``±omega`` are both valid and either may be returned.
    """
    v, s, c = _angle_parts(R)
    theta = torch.atan2(s, c)
    # small and moderate angles: omega = θ / (2 sin θ) · v
    use_sym = c < 0
    small = theta * theta < _SMALL_ANGLE2
    safe_s = torch.where(small | use_sym, torch.ones_like(s), s)
    f = torch.where(small, 0.5 + theta * theta / 12.0, theta / (2.0 * safe_s))
    near = f[..., None] * v
    # large angles: column of (1 − cos θ) a aᵀ with the largest diagonal entry
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    B = 0.5 * (R + R.transpose(-1, -2)) - torch.where(use_sym, c, torch.zeros_like(c))[..., None, None] * eye
    d = B.diagonal(dim1=-2, dim2=-1)
    k = d.argmax(dim=-1)
    col = torch.gather(B, -1, k[..., None, None].expand(*k.shape, 3, 1))[..., 0]  # (1 − c) a_k a
    axis = F.normalize(col, dim=-1)
    sign = torch.where((axis * v).sum(-1) < 0, -torch.ones_like(s), torch.ones_like(s))
    far = (sign * theta)[..., None] * axis
    return torch.where(use_sym[..., None], far, near)


def se3_exp(xi: Tensor) -> Tensor:
    """SE(3) exponential: twists [..., 6] = (omega, tau) → rigid transforms [..., 4, 4].

    ``R = so3_exp(omega)``, ``t = V(omega) @ tau`` with ``V = I + b W + c W²`` (the left Jacobian
    of SO(3)), so ``se3_exp(xi) == matrix_exp([[W, tau], [0, 0]])``.
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


def se3_log(T: Tensor) -> Tensor:
    """Twists [..., 6] = (omega, tau) of rigid transforms [..., 4, 4] (or [..., 3, 4]); inverse of :func:`se3_exp`.

    ``omega = so3_log(R)``, ``tau = V(omega)⁻¹ t`` with
    ``V⁻¹ = I − W/2 + (1 − θ sin θ / (2 (1 − cos θ))) / θ² · W²`` (Taylor expansion near 0).
    """
    omega = so3_log(T[..., :3, :3])
    t = T[..., :3, 3]
    W = skew(omega)
    theta2 = (omega * omega).sum(-1)
    small = theta2 < _SMALL_ANGLE2
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe2)
    one_minus_cos = torch.where(small, torch.ones_like(theta), 1.0 - torch.cos(theta))
    d = torch.where(small, 1.0 / 12.0 + theta2 / 720.0, (1.0 - theta * torch.sin(theta) / (2.0 * one_minus_cos)) / safe2)
    eye = torch.eye(3, dtype=T.dtype, device=T.device).expand_as(W)
    V_inv = eye - 0.5 * W + d[..., None, None] * (W @ W)
    tau = (V_inv @ t[..., None])[..., 0]
    return torch.cat([omega, tau], dim=-1)


def rigid_inverse(T: Tensor) -> Tensor:
    """Inverse of rigid transforms [..., 4, 4]: ``[Rᵀ, −Rᵀ t]`` (exact, differentiable)."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat([Rt, -Rt @ t], dim=-1)
    return torch.cat([top, T[..., 3:, :]], dim=-2)


def rotation_angle(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Geodesic angle in radians [...] between rotations [..., 3, 3] (broadcasting): the angle of ``R_aᵀ R_b``.

    Computed as ``atan2(|(R − Rᵀ)∨| / 2, (tr R − 1) / 2)``, accurate near 0 and near π (``acos`` of
    the trace loses half the digits there); the gradient is finite everywhere (zero at angle 0).
    Pass float64 matrices for errors far below a degree.
    """
    _, s, c = _angle_parts(R_a.transpose(-1, -2) @ R_b)
    return torch.atan2(s, c)


# ---------------------------------------------------------------------------------- alignment


def nearest_rotation(M: Tensor) -> Tensor:
    """The rotation [..., 3, 3] closest (Frobenius) to matrices [..., 3, 3]: ``U diag(1, 1, ±1) Vᵀ``.

    Maximises ``tr(Rᵀ M)`` over SO(3) (orthogonal Procrustes with a proper rotation, Kabsch). For a
    sum of rotations it is their chordal L2 mean.
    """
    U, _, Vt = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U @ Vt))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1)  # diag of the sign matrix
    return U @ (D[..., :, None] * Vt)


def umeyama(src: Tensor, dst: Tensor, with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity (or rigid) transform of point sets (Umeyama 1991).

    Args:
        src, dst: [..., N, 3] corresponding points (N >= 3, not collinear, for a unique answer);
            e.g. estimated and true camera centres.
        with_scale: fit a scale; False fits a rigid transform (scale 1, Kabsch).

    Returns:
        ``(R [..., 3, 3], t [..., 3], s [...])`` minimising ``Σ |dst_i − (s R src_i + t)|²``, with R a
        proper rotation. ``s`` is inf or NaN when ``src`` has no spread.
    """
    if src.shape != dst.shape or src.shape[-1] != 3:
        raise ValueError(f"umeyama needs matching [..., N, 3] point sets, got {tuple(src.shape)} and {tuple(dst.shape)}")
    n = src.shape[-2]
    mu_s, mu_d = src.mean(-2, keepdim=True), dst.mean(-2, keepdim=True)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.transpose(-1, -2) @ xs / n  # [..., 3, 3]
    U, S, Vt = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vt))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.cat([torch.ones_like(S[..., :2]), d[..., None]], dim=-1)  # diag of the sign matrix
    R = U @ (D[..., :, None] * Vt)
    if with_scale:
        var_s = (xs * xs).sum((-1, -2)) / n
        s = (S * D).sum(-1) / var_s
    else:
        s = torch.ones(src.shape[:-2], dtype=src.dtype, device=src.device)
    t = mu_d[..., 0, :] - s[..., None] * (R @ mu_s[..., 0, :, None])[..., 0]
    return R, t, s


# --------------------------------------------------------------------------------- projection


def project_points(points: Tensor, K: Tensor, w2c: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Project world points into cameras (OpenCV, pixel centres at i + 0.5).

    Args:
        points: [..., P, 3] world points.
        K: [..., 3, 3] intrinsics (last row 0 0 1).
        w2c: [..., 4, 4] (or [..., 3, 4]) world-to-camera transforms; for camera-to-world poses pass
            ``rigid_inverse(c2w)``. Batch dimensions broadcast, e.g. points [P, 3] with K [V, 3, 3]
            and w2c [V, 4, 4] give [V, P, ...].
        eps: depths are clamped to at least this before dividing (points behind the camera get
            meaningless pixel coordinates: select them with ``z > 0``).

    Returns:
        ``(uv [..., P, 2], z [..., P])``: continuous pixel coordinates and z-depth along the optical axis.
    """
    cam = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
    z = cam[..., 2]
    pix = cam @ K.transpose(-1, -2)
    uv = pix[..., :2] / z.clamp_min(eps)[..., None]
    return uv, z


def unproject_depth(depth: Tensor, K: Tensor, c2w: Tensor, pixel_offset: float = 0.5) -> Tensor:
    """World points [..., H, W, 3] of z-depth maps [..., H, W] (pixel (r, c) at (c + 0.5, r + 0.5);
    ``pixel_offset=0`` puts it at (c, r), as VGGT/DGGT's ``unproject_depth_map_to_point_map`` does).

    Args:
        depth: [..., H, W] depth along the optical axis (z, not ray length).
        K: [..., 3, 3] intrinsics (skew allowed; last row 0 0 1).
        c2w: [..., 4, 4] (or [..., 3, 4]) OpenCV camera-to-world.

    Every pixel gives a point (invalid depths give invalid points): select with a mask, e.g.
    ``unproject_depth(d, K, c2w)[d > 0]``. Inverse of :func:`project_points` for z > 0.
    """
    H, W = depth.shape[-2:]
    v, u = torch.meshgrid(
        torch.arange(H, dtype=depth.dtype, device=depth.device) + pixel_offset,
        torch.arange(W, dtype=depth.dtype, device=depth.device) + pixel_offset,
        indexing="ij",
    )
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy, sk = K[..., 0, 2, None, None], K[..., 1, 2, None, None], K[..., 0, 1, None, None]
    y = (v - cy) / fy
    x = (u - cx - sk * y) / fx
    cam = torch.stack([x * depth, y * depth, depth], dim=-1)  # [..., H, W, 3]
    return torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], cam) + c2w[..., None, None, :3, 3]


# -------------------------------------------------------------------------------- neighbours


KNN_BRUTE_MAX = 16384
"""Up to this many CPU points, :func:`knn_distances` (``method="auto"``) uses brute force."""


def knn_distances(points: Tensor, k: int = 3, lone: float = 1.0, chunk_size: int | None = None, method: str = "auto") -> Tensor:
    """Mean Euclidean distance from each point [P, D] to its ``k`` nearest *other* points: [P].

    With fewer than ``k + 1`` points the ``P − 1`` available neighbours are used; a lone point gets
    ``lone``. Duplicated points count as neighbours at distance 0. Computed in float64 and returned
    in ``points``' floating dtype (on its device), without gradients. ``method``: ``"kdtree"``
    (scipy.spatial.cKDTree, on the CPU), ``"brute"`` (exact pairwise distances in chunks of
    ``chunk_size`` query points, memory ``chunk_size x P`` float64; default: as many rows as fit
    in 8 MB, on the points' device) or ``"auto"``: brute for up to :data:`KNN_BRUTE_MAX` CPU
    points and on other devices, kdtree for more CPU points. Both give the same distances.
    (Importing scipy.spatial costs a process ~30 MB of resident memory for good, more than
    brute force's 8 MB at a time; brute force's time grows as P², 0.75 s for 10 000 points on
    one core, so larger CPU clouds take the tree.)
    """
    if method not in ("auto", "kdtree", "brute"):
        raise ValueError(f"unknown knn method '{method}' (auto, kdtree or brute)")
    if points.ndim != 2:
        raise ValueError(f"knn_distances needs points [P, D], got {tuple(points.shape)}")
    n = points.shape[0]
    dtype = points.dtype if points.is_floating_point() else torch.float32
    if n <= 1:
        return torch.full((n,), float(lone), dtype=dtype, device=points.device)
    kk = min(int(k), n - 1)
    if kk < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    p = points.detach().double()
    if method == "kdtree" or (method == "auto" and p.device.type == "cpu" and n > KNN_BRUTE_MAX):
        from scipy.spatial import cKDTree

        pn = p.cpu().numpy()
        dist, _ = cKDTree(pn).query(pn, k=kk + 1)  # the first neighbour is the point itself
        mean = torch.from_numpy(np.asarray(dist, dtype=np.float64).reshape(n, kk + 1)[:, 1:].mean(axis=1))
    else:
        rows = max(1, int(chunk_size) if chunk_size is not None else (1 << 20) // n)  # 8 MB of float64 distances
        # into one preallocated tensor: small per-chunk results kept alive between the chunks'
        # 8 MB distance blocks fragmented glibc's heap, which then grew by up to a block per
        # chunk (measured: +170 to +560 MB resident for 10 000 points, varying run to run)
        mean = torch.empty(n, dtype=p.dtype, device=p.device)
        for start in range(0, n, rows):
            d = torch.cdist(p[start:start + rows], p, compute_mode="donot_use_mm_for_euclid_dist")
            mean[start:start + rows] = d.topk(kk + 1, dim=1, largest=False).values[:, 1:].mean(dim=1)
    return mean.to(dtype=dtype, device=points.device)


# ------------------------------------------------------------------- frames of camera sets


def camera_similarity(src_c2w: Tensor, dst_c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The similarity ``(R, t, s)`` taking the world of cameras ``src_c2w`` [S, 4, 4] onto the world
    of the same cameras posed as ``dst_c2w`` [S, 4, 4]: rigid through camera 0, scaled by the ratio
    of the mean camera distances from camera 0 (scale 1 when the cameras barely move).

    This is how a network's predicted frame (camera 0 at the origin, unknown scale) is mapped onto
    known poses; :func:`apply_similarity` moves points, ``x -> s R x + t``.
    """
    d_src = (src_c2w[1:, :3, 3] - src_c2w[:1, :3, 3]).norm(dim=-1)
    d_dst = (dst_c2w[1:, :3, 3] - dst_c2w[:1, :3, 3]).norm(dim=-1)
    use_scale = len(d_src) > 0 and float(d_src.mean()) > 1e-6
    s = (d_dst.mean() / d_src.mean()) if use_scale else torch.ones((), dtype=src_c2w.dtype, device=src_c2w.device)
    R = dst_c2w[0, :3, :3] @ src_c2w[0, :3, :3].transpose(-1, -2)
    t = dst_c2w[0, :3, 3] - s * (R @ src_c2w[0, :3, 3])
    return R, t, s


def apply_similarity(points: Tensor, R: Tensor, t: Tensor, s: Tensor | float) -> Tensor:
    """``s R x + t`` for points [..., 3]."""
    return s * (points @ R.transpose(-1, -2)) + t


def transform_c2w(c2w: Tensor, R: Tensor, t: Tensor, s: Tensor | float) -> Tensor:
    """Camera-to-world poses [..., 4, 4] moved by the similarity ``(R, t, s)`` (rotations stay rotations)."""
    out = c2w.clone()
    out[..., :3, :3] = R @ c2w[..., :3, :3]
    out[..., :3, 3] = apply_similarity(c2w[..., :3, 3], R, t, s)
    return out
