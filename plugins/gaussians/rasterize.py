"""3D Gaussian splatting rasteriser of the ``torch-3dgs`` renderer: PyTorch, plus compiled CPU kernels.

Each of the two halves of a render has a pair of twins, compiled C++ with OpenMP
(``rasterize_cpu.cpp``, built on first use by :mod:`._cpp`; CPU float32/float64 tensors) and pure
PyTorch (any device):

* projection + SH colours + packing of the visible pairs: :func:`pack_gaussians` (fused kernel
  with a hand-written backward, camera-pose gradients included) and :func:`_pack_gaussians`
  (PyTorch ops differentiated by autograd), picked by ``RasterizeSettings.projection``;
* binning + compositing: :func:`composite_gaussians` and :func:`_composite_gaussians`, picked
  by ``RasterizeSettings.backend``.

"auto" picks the compiled kernels for CPU tensors when they could be built (else PyTorch, with
one warning), and the projection follows the compositing; every combination gives the same
images and gradients (``tests/test_gaussians_cpu_kernel.py``,
``tests/test_gaussians_cpu_projection.py``). The rest of this docstring describes the PyTorch twins.

It follows gsplat's conventions so that images agree with the CUDA path (see
``docs/conventions.md``):

* cameras: world-to-camera OpenCV ``viewmats`` [C, 4, 4] and intrinsics ``Ks`` [C, 3, 3];
  pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5), the same as gsplat's
  kernels (``px = j + 0.5f``);
* EWA projection with the Jacobian evaluated at a mean clamped to 1.3x the field of view, the
  2D covariance dilated by ``eps2d`` (0.3 px²), near/far culling on camera z;
* a Gaussian whose ``opacity < 1/255`` is culled (it can never pass the alpha threshold);
* front-to-back compositing: ``alpha = min(0.999, o * exp(-sigma))``, a Gaussian with
  ``alpha < 1/255`` is skipped, and a pixel stops (exclusively) before the Gaussian that would
  bring its transmittance to ``<= 1e-4``;
* colours from SH: ``clamp_min(SH(dir) + 0.5, 0)`` with ``dir = mean - camera centre``.

Design (all vectorised; Python loops only over rounds of Gaussians and chunks of tiles):

1. :func:`project_gaussians` — EWA projection of every (camera, Gaussian) pair, by autograd.
2. Packing — keep visible pairs only (``M`` of them), evaluate their colours.
3. :func:`bin_gaussians` — each packed Gaussian covers the tiles its opacity-aware ellipse
   bounding box touches (no pixel outside it can reach ``alpha >= 1/255``, so the tighter box
   changes nothing in the image); pairs are generated front to back and put in (tile, depth)
   order by one stable int32 sort on the tile id.
4. :class:`_CompositeTiles` — a custom autograd function. Tiles (8x8 pixels by default) are
   composited ``batch_size`` Gaussians at a time: for a chunk of tiles, log-alpha of a whole
   [tiles, Gaussians, pixels] block is one GEMM of per-(tile, Gaussian) coefficients with fixed
   per-pixel monomials (u², uv, v², u, v, 1 in tile-local coordinates); transmittance comes from
   ``cumprod`` over the Gaussian axis with the stop rule as a mask. A tile leaves the loop once
   its list is exhausted or all its pixels are done, which is what makes dense scenes cheap.
   The backward is hand-written (checked by ``torch.autograd.gradcheck`` and against autograd
   through the brute-force reference): it walks the same blocks front to back, reusing the
   forward's blocks up to ``saved_block_elements`` and recomputing the rest; nothing of size
   [pixels, all Gaussians] is ever formed.

Memory is bounded by ``RasterizeSettings.max_block_elements`` (the largest temporaries are a
few float tensors of that many elements) plus ``saved_block_elements`` when training.
Differentiable with respect to means, quats, scales, opacities, colours / SH and ``viewmats``
(hence camera poses); not with respect to ``Ks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from recon_core.config import option
from recon_core.cpp_extension import cpp_disabled
from recon_core.errors import InputError
from recon_core.geometry import quat_to_rotmat

from . import _cpp

__all__ = [
    "ALPHA_THRESHOLD",
    "MAX_ALPHA",
    "TRANSMITTANCE_MIN",
    "RasterizeSettings",
    "Projection",
    "TileBins",
    "quat_scale_to_covar",
    "project_gaussians",
    "eval_sh_bases",
    "sh_to_colors",
    "bin_gaussians",
    "composite_tiles",
    "composite_gaussians",
    "select_backend",
    "select_projection",
    "PackedGaussians",
    "pack_gaussians",
    "rasterize_gaussians",
]

ALPHA_THRESHOLD = 1.0 / 255.0
"""A Gaussian whose alpha at a pixel is below this is skipped there (gsplat's ALPHA_THRESHOLD)."""
MAX_ALPHA = 0.999
"""Alpha is clamped to this, so transmittance never reaches 0 in one step."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel is done before the Gaussian that would bring its transmittance to <= this."""
_RADIUS_SIGMAS = 3.33
"""gsplat's projection radius in standard deviations (``radii`` output, matches ``_torch_impl``)."""
_PAD_LOG_OPACITY = -1.0e4
"""log-opacity of padding slots: exp() gives exactly 0, so they never contribute."""


@dataclass
class RasterizeSettings:
    """Options of the pure-PyTorch rasteriser (also the ``torch-3dgs`` renderer's config)."""

    tile_size: int = option(8, "tile edge in pixels; Gaussians are binned per tile (8 is fastest on CPU)", min=1)
    batch_size: int = option(
        32, "Gaussians composited per tile per round; tiles whose pixels are all done leave early", min=1,
    )
    max_block_elements: int = option(
        1 << 21,
        "largest [tiles, pixels, Gaussians] block evaluated at once; bounds memory "
        "(about 40 bytes per element in the backward)", min=1,
    )
    saved_block_elements: int = option(
        1 << 25,
        "when gradients are needed, forward blocks up to this many elements in total (about 17 "
        "bytes each) are kept for the backward instead of being recomputed", min=0,
    )
    backend: str = option(
        "auto",
        "compositing engine: 'cpp' (compiled, multi-threaded, CPU tensors), 'torch' (pure PyTorch, "
        "any device) or 'auto' (cpp for CPU tensors when it could be built, else torch)",
        choices=("auto", "cpp", "torch"),
    )
    projection: str = option(
        "auto",
        "projection + SH colours + packing: 'cpp' (fused compiled kernel, forward and backward, CPU tensors), "
        "'torch' (PyTorch ops and autograd, the reference) or 'auto' (cpp whenever the compositing backend is cpp)",
        choices=("auto", "cpp", "torch"),
    )
    cpp_tile_size: int = option(16, "tile edge in pixels of the compiled path (tile_size is the torch path's)", min=1)
    eps2d: float = option(0.3, "added to the 2D covariance diagonal (px²), as gsplat does", min=0)
    near_plane: float = option(0.01, "Gaussians with camera z <= this are culled", min=0)
    far_plane: float = option(1e10, "Gaussians with camera z >= this are culled", min=0)

    def __post_init__(self) -> None:
        if min(self.tile_size, self.cpp_tile_size, self.batch_size, self.max_block_elements) < 1:
            raise ValueError("tile_size, cpp_tile_size, batch_size and max_block_elements must be positive")
        for name in ("backend", "projection"):
            if getattr(self, name) not in ("auto", "cpp", "torch"):
                raise ValueError(f"{name} must be 'auto', 'cpp' or 'torch', got {getattr(self, name)!r}")


# ------------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class Projection:
    """Screen-space Gaussians for C cameras and N Gaussians (gsplat's unpacked layout).

    means2d: [C, N, 2] pixel coordinates (x, y); pixel (i, j) centre is (j + 0.5, i + 0.5).
    conics:  [C, N, 3] upper triangle (a, b, c) of the inverse dilated 2D covariance; the
             Mahalanobis term is sigma = 0.5 (a dx² + c dy²) + b dx dy.
    depths:  [C, N] camera-space z.
    radii:   [C, N, 2] int32 half extents ceil(3.33 sigma_x), ceil(3.33 sigma_y); 0 = culled.
    cov2d:   [C, N, 3] dilated 2D covariance upper triangle (xx, xy, yy).
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    cov2d: Tensor


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R S Sᵀ Rᵀ.

    Args:
        quats: [..., 4] wxyz, normalised here.
        scales: [..., 3] standard deviations along the rotated axes.

    Returns:
        [..., 3, 3] covariance.
    """
    return _rotation_scale(quats, scales) @ _rotation_scale(quats, scales).transpose(-1, -2)


def _rotation_scale(quats: Tensor, scales: Tensor) -> Tensor:
    """[..., 3, 3] matrix R(q) diag(s) (its columns are the scaled principal axes)."""
    return quat_to_rotmat(quats) * scales[..., None, :]


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """EWA perspective projection of N Gaussians into C pinhole cameras.

    Same outputs as gsplat's ``_torch_impl._fully_fused_projection`` (pinhole, no
    compensation). Differentiable with respect to ``means``, ``quats``, ``scales`` and
    ``viewmats`` (not ``Ks``). Culled pairs (behind the near plane, beyond the far plane or
    off-image) get radii 0; their other outputs are finite but meaningless.

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] rotations, wxyz.
        scales: [N, 3] activated scales.
        viewmats: [C, 4, 4] world-to-camera (OpenCV).
        Ks: [C, 3, 3] intrinsics, pixel centres at i + 0.5.
        width, height: image size in pixels.
        eps2d: dilation added to the 2D covariance diagonal.
        near_plane, far_plane: camera-z culling planes.

    Returns:
        :class:`Projection` with [C, N, ...] tensors.
    """
    assert means.ndim == 2 and means.shape[1] == 3, means.shape
    assert viewmats.ndim == 3 and viewmats.shape[1:] == (4, 4), viewmats.shape
    assert Ks.shape == (viewmats.shape[0], 3, 3), Ks.shape
    rot_c = viewmats[:, :3, :3]  # [C, 3, 3]
    t_c = viewmats[:, :3, 3]  # [C, 3]
    p_cam = torch.einsum("cij,nj->cni", rot_c, means) + t_c[:, None, :]  # [C, N, 3]
    depths = p_cam[..., 2]
    in_depth = (depths > near_plane) & (depths < far_plane)
    z = torch.where(in_depth, depths, torch.ones_like(depths))  # safe divisor for culled pairs

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Jacobian at the mean clamped to 1.3 x the field of view (gsplat / INRIA convention).
    half_fov_x, half_fov_y = 0.5 * width / fx, 0.5 * height / fy
    x_lim_pos, x_lim_neg = (width - cx) / fx + 0.3 * half_fov_x, cx / fx + 0.3 * half_fov_x
    y_lim_pos, y_lim_neg = (height - cy) / fy + 0.3 * half_fov_y, cy / fy + 0.3 * half_fov_y
    x_over_z = torch.minimum(torch.maximum(p_cam[..., 0] / z, -x_lim_neg), x_lim_pos)
    y_over_z = torch.minimum(torch.maximum(p_cam[..., 1] / z, -y_lim_neg), y_lim_pos)
    # cov2d = (J W)(J W)^T with W = R_cam R_q S and the Jacobian J = [[fx/z, 0, -fx x/z²],
    # [0, fy/z, -fy y/z²]] applied row by row (elementwise: no batched tiny matmuls)
    w_mat = torch.einsum("cij,njk->cnik", rot_c, _rotation_scale(quats, scales))  # [C, N, 3, 3]
    inv_z = 1.0 / z
    row_x = (fx * inv_z)[..., None] * (w_mat[..., 0, :] - x_over_z[..., None] * w_mat[..., 2, :])  # [C, N, 3]
    row_y = (fy * inv_z)[..., None] * (w_mat[..., 1, :] - y_over_z[..., None] * w_mat[..., 2, :])
    cov_xx = (row_x * row_x).sum(-1) + eps2d
    cov_yy = (row_y * row_y).sum(-1) + eps2d
    cov_xy = (row_x * row_y).sum(-1)
    det = (cov_xx * cov_yy - cov_xy * cov_xy).clamp_min(1e-10)
    conics = torch.stack([cov_yy / det, -cov_xy / det, cov_xx / det], dim=-1)

    uvw = torch.einsum("cij,cnj->cni", Ks[:, :2, :], p_cam)  # [C, N, 2]
    means2d = uvw / z[..., None]

    with torch.no_grad():
        radii = torch.stack(
            [torch.ceil(_RADIUS_SIGMAS * cov_xx.sqrt()), torch.ceil(_RADIUS_SIGMAS * cov_yy.sqrt())], dim=-1
        )
        inside = (
            (means2d[..., 0] + radii[..., 0] > 0)
            & (means2d[..., 0] - radii[..., 0] < width)
            & (means2d[..., 1] + radii[..., 1] > 0)
            & (means2d[..., 1] - radii[..., 1] < height)
        )
        radii = (radii * (in_depth & inside)[..., None]).int()
    cov2d = torch.stack([cov_xx, cov_xy, cov_yy], dim=-1)
    return Projection(means2d=means2d, conics=conics, depths=depths, radii=radii, cov2d=cov2d)


# ------------------------------------------------------------------------ spherical harmonics


def eval_sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Real spherical-harmonic basis (the 3DGS / gsplat sign convention), degrees 0–3.

    Args:
        degree: 0 to 3.
        dirs: [..., 3] directions (normalised here).

    Returns:
        [..., (degree + 1)²] basis values; index l² + l + m holds Y_l^m.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], 0.28209479177387814)]
    if degree >= 1:
        x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
        c1 = 0.4886025119029199
        out += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.31539156525252005 * (2.0 * zz - xx - yy),
            -1.0925484305920792 * x * z,
            0.5462742152960396 * (xx - yy),
        ]
    if degree >= 3:
        out += [
            -0.5900435899266435 * y * (3.0 * xx - yy),
            2.890611442640554 * x * y * z,
            -0.4570457994644658 * y * (4.0 * zz - xx - yy),
            0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            -0.4570457994644658 * x * (4.0 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def sh_to_colors(sh: Tensor, degree: int, dirs: Tensor) -> Tensor:
    """Colours from SH coefficients as gsplat renders them: ``clamp_min(SH(dir) + 0.5, 0)``.

    Args:
        sh: [..., K, 3] coefficients, K >= (degree + 1)².
        degree: SH degree to evaluate (0–3).
        dirs: [..., 3] viewing directions (mean - camera centre), any length.

    Returns:
        [..., 3] non-negative colours.
    """
    bases = eval_sh_bases(degree, dirs)  # [..., B]
    rgb = (bases[..., None] * sh[..., : bases.shape[-1], :]).sum(-2)
    return (rgb + 0.5).clamp_min(0.0)


# ------------------------------------------------------------------------------------ binning


@dataclass(frozen=True)
class TileBins:
    """Packed Gaussians binned into tiles of C images.

    Tiles are numbered ``camera * tiles_y * tiles_x + ty * tiles_x + tx``.

    ids:    [P] int64 packed-Gaussian index of each (tile, Gaussian) pair, sorted by tile and,
            within a tile, front to back by depth (ties by packed index).
    start:  [C * tiles_y * tiles_x] int64 offset of each tile's run in ``ids``.
    count:  [C * tiles_y * tiles_x] int64 length of each tile's run.
    """

    ids: Tensor
    start: Tensor
    count: Tensor
    tiles_x: int
    tiles_y: int
    tile_size: int


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor,  # [M, 2]
    cov2d: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    depths: Tensor,  # [M]
    camera_ids: Tensor,  # [M]
    n_cameras: int,
    width: int,
    height: int,
    tile_size: int,
) -> TileBins:
    """Assign packed Gaussians to the tiles their opacity-aware bounding box covers.

    The half extent is ``e * sigma`` per axis with ``e = sqrt(2 ln(255 o))`` (below 3.33 for
    o <= 1): outside that box the Mahalanobis term exceeds e²/2, so ``o exp(-sigma) < 1/255``
    and gsplat's compositing would skip the Gaussian anyway. Only tiles holding a pixel centre
    inside the box are listed.

    Args:
        means2d: [M, 2] pixel coordinates.
        cov2d: [M, 3] dilated covariance (xx, xy, yy).
        opacities: [M], each >= 1/255.
        depths: [M] camera z (sort key).
        camera_ids: [M] int64 camera of each packed Gaussian.
        n_cameras, width, height, tile_size: image layout.

    Returns:
        :class:`TileBins`.
    """
    device = means2d.device
    m = means2d.shape[0]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    n_tiles = n_cameras * tiles_x * tiles_y
    extent = torch.sqrt(2.0 * torch.log((opacities * 255.0).clamp_min(1.0))).clamp_max(_RADIUS_SIGMAS)
    half = extent[:, None] * torch.stack([cov2d[:, 0], cov2d[:, 2]], dim=-1).sqrt()  # [M, 2]
    limit = torch.tensor([width - 1, height - 1], device=device, dtype=means2d.dtype)
    # pixel indices whose centres (index + 0.5) lie in [mean - half, mean + half]
    # (clamped on both sides so that the int conversion below is always in range)
    lo = torch.minimum(torch.maximum(torch.ceil(means2d - half - 0.5), torch.zeros_like(limit)), limit + 1)
    hi = torch.maximum(torch.minimum(torch.floor(means2d + half - 0.5), limit), torch.full_like(limit, -1))
    nonempty = (lo <= hi).all(-1)
    tlo = torch.div(lo.int(), tile_size, rounding_mode="floor")
    thi = torch.div(hi.int(), tile_size, rounding_mode="floor")
    span = (thi - tlo + 1).clamp_min(0)  # [M, 2]
    counts = span[:, 0] * span[:, 1] * nonempty
    total = int(counts.sum())
    if total == 0:
        zeros = torch.zeros(n_tiles, dtype=torch.long, device=device)
        return TileBins(torch.zeros(0, dtype=torch.long, device=device), zeros, zeros.clone(), tiles_x, tiles_y, tile_size)

    # Work in depth order: pairs are generated front to back, so a stable sort by tile alone
    # yields (tile, depth) order, and the per-pair gathers below read memory sequentially.
    order = torch.argsort(depths, stable=True)
    counts, span_x = counts[order], span[order, 0]
    base = (camera_ids.int()[order] * (tiles_x * tiles_y) + tlo[order, 1] * tiles_x + tlo[order, 0]).int()
    owner = torch.repeat_interleave(torch.arange(m, device=device, dtype=torch.int32), counts)  # [P]
    first = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    # repeat_interleave(x, counts) == x[owner], but faster (as is index_select over x[idx])
    local = torch.arange(total, device=device, dtype=torch.int32) - torch.repeat_interleave(first, counts)
    width_tiles = torch.repeat_interleave(span_x, counts)
    row = torch.div(local, width_tiles, rounding_mode="floor")
    tile = torch.repeat_interleave(base, counts) + row * tiles_x + (local - row * width_tiles)
    _, perm = torch.sort(tile, stable=True)
    ids = order.index_select(0, owner.index_select(0, perm))
    count = torch.bincount(tile, minlength=n_tiles)
    start = torch.cumsum(count, 0) - count
    return TileBins(ids, start, count, tiles_x, tiles_y, tile_size)


# -------------------------------------------------------------------------------- compositing


def _pixel_monomials(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[P, 6] monomials (u², uv, v², u, v, 1) of each pixel centre relative to its tile centre."""
    idx = torch.arange(tile_size, device=device, dtype=dtype) + 0.5 - tile_size / 2
    v, u = torch.meshgrid(idx, idx, indexing="ij")  # row-major pixels within the tile
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], dim=-1)


def _tile_centres(tiles: Tensor, bins: TileBins, dtype: torch.dtype) -> Tensor:
    """[T, 2] pixel coordinates (x, y) of the centres of global tile ids ``tiles``."""
    in_image = tiles % (bins.tiles_x * bins.tiles_y)
    tx, ty = in_image % bins.tiles_x, torch.div(in_image, bins.tiles_x, rounding_mode="floor")
    return (torch.stack([tx, ty], dim=-1).to(dtype) + 0.5) * bins.tile_size


def _log_alpha_coefficients(mean: Tensor, conic: Tensor, log_opacity: Tensor, centre: Tensor) -> Tensor:
    """Coefficients of log(o) - sigma as a polynomial in tile-local pixel coordinates.

    With (mu, mv) = mean - centre and (u, v) the pixel centre relative to the tile centre,
    ``log o - 0.5 a (mu-u)² - b (mu-u)(mv-v) - 0.5 c (mv-v)²`` equals the dot product of the
    result with (u², uv, v², u, v, 1).

    Args:
        mean: [T, B, 2]; conic: [T, B, 3] (a, b, c); log_opacity: [T, B]; centre: [T, 2].

    Returns:
        [T, B, 6].
    """
    mu, mv = (mean - centre[:, None, :]).unbind(-1)
    a, b, c = conic.unbind(-1)
    lin_u = a * mu + b * mv
    lin_v = b * mu + c * mv
    const = log_opacity - 0.5 * (mu * lin_u + mv * lin_v)
    return torch.stack([-0.5 * a, -b, -0.5 * c, lin_u, lin_v, const], dim=-1)


def _log_alpha_coefficients_backward(
    grad: Tensor, mean: Tensor, conic: Tensor, opacity: Tensor, centre: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Chain rule through :func:`_log_alpha_coefficients` (with log_opacity = log(opacity)).

    Args:
        grad: [T, B, 6] gradient of the coefficients; other arguments as in the forward.

    Returns:
        gradients of mean [T, B, 2], conic [T, B, 3] and opacity [T, B].
    """
    mu, mv = (mean - centre[:, None, :]).unbind(-1)
    a, b, c = conic.unbind(-1)
    g0, g1, g2, g3, g4, g5 = grad.unbind(-1)
    lin_u = a * mu + b * mv
    lin_v = b * mu + c * mv
    g_mean = torch.stack([a * g3 + b * g4 - lin_u * g5, b * g3 + c * g4 - lin_v * g5], dim=-1)
    g_conic = torch.stack(
        [
            -0.5 * g0 + mu * g3 - 0.5 * mu * mu * g5,
            -g1 + mv * g3 + mu * g4 - mu * mv * g5,
            -0.5 * g2 + mv * g4 - 0.5 * mv * mv * g5,
        ],
        dim=-1,
    )
    return g_mean, g_conic, g5 / opacity


class _Blocks:
    """Machinery shared by the compositing forward and backward.

    All per-Gaussian inputs live in one table (one gather per batch) with a padding row at
    index M (log-opacity -1e4, so exp() gives exactly 0 and padded slots never contribute):
    columns [mean x, mean y, conic a, b, c, log opacity, features (D), 1]. The constant-1
    feature makes the feature matmul also return the sum of weights, i.e. 1 - transmittance.
    """

    def __init__(self, means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, bins: TileBins, settings: RasterizeSettings):
        m, dim = features.shape
        table = torch.cat([means2d, conics, opacities.log()[:, None], features, features.new_ones(m, 1)], dim=1)
        pad = table.new_zeros(1, table.shape[1])
        pad[0, 5] = _PAD_LOG_OPACITY
        self.table = torch.cat([table, pad])
        self.dim = dim
        self.pad = m
        self.bins = bins
        self.batch = settings.batch_size
        self.pixels = bins.tile_size * bins.tile_size
        # [6, P] as a transposed view of a contiguous [P, 6]: the faster BLAS layout for both uses
        self.monomials_t = _pixel_monomials(bins.tile_size, means2d.dtype, means2d.device).t()
        self.tiles_per_chunk = max(1, settings.max_block_elements // (self.pixels * self.batch))
        self.slot = torch.arange(self.batch, device=means2d.device)

    def gather(self, tiles: Tensor, round_: int) -> tuple[Tensor, Tensor]:
        """Packed ids [T, B] of the ``round_``-th batch of each tile's list and their table rows."""
        pos = round_ * self.batch + self.slot  # [B]
        valid = pos[None, :] < self.bins.count[tiles, None]
        idx = (self.bins.start[tiles, None] + pos[None, :]).clamp_max(max(self.bins.ids.shape[0] - 1, 0))
        ids = torch.where(valid, self.bins.ids.index_select(0, idx.reshape(-1)).view_as(idx), self.pad)
        return ids, self.table.index_select(0, ids.reshape(-1)).view(ids.shape + (self.table.shape[1],))

    def weights(self, tiles: Tensor, rows: Tensor, trans_in: Tensor) -> tuple[Tensor, ...]:
        """Alpha and blending weights of one batch of Gaussians for a chunk of tiles.

        Blocks are laid out [T, B, P] (tile, Gaussian slot, pixel) so that every matmul has a
        wide output (the fast case for CPU BLAS) and products over Gaussians run along dim 1.

        Args:
            tiles: [T] global tile ids; rows: [T, B, 7 + D] table rows (front to back);
            trans_in: [T, P] transmittance entering the batch, 0 for pixels already done.

        Returns:
            alpha [T, B, P] (clamped to 0.999, 0 where below 1/255), transmittance before each
            Gaussian [T, B, P], ``alive`` [T, B, P] or [T, 1, P] (composited, i.e. not stopped
            and not done), ``alive_last`` [T, P] (still running after the batch), weights
            w = alpha * T_before * alive [T, B, P], 1 - alpha [T, B, P], and the transmittance
            after the batch's last composited Gaussian [T, P] (a product, like the compiled
            path's, not 1 - sum of weights: near T = 1e-4 the difference matters in float32).
        """
        n, batch = rows.shape[:2]
        centre = _tile_centres(tiles, self.bins, rows.dtype)
        coef = _log_alpha_coefficients(rows[..., 0:2], rows[..., 2:5], rows[..., 5], centre)  # [T, B, 6]
        log_alpha = (coef.reshape(n * batch, 6) @ self.monomials_t).view(n, batch, self.pixels)
        # exp() of values that underflow is slow on CPU: floor at -30 (alpha ~ 1e-13), then
        # gsplat's rule: alpha = min(0.999, .), and alpha < 1/255 is skipped (set to exactly 0)
        alpha = log_alpha.clamp_min_(-30.0).exp_().clamp_max_(MAX_ALPHA)
        alpha = F.threshold(alpha, _below(ALPHA_THRESHOLD, alpha.dtype), 0.0)
        one_minus = torch.rsub(alpha, 1.0)
        # trans[:, 0] = T entering the batch, trans[:, i + 1] = T after Gaussian i
        trans = alpha.new_empty(n, batch + 1, self.pixels)
        trans[:, 0] = trans_in
        one_minus[:, 0] *= trans_in  # fold T_in into the product, then restore the row
        torch.cumprod(one_minus, dim=1, out=trans[:, 1:])
        one_minus[:, 0] = 1.0 - alpha[:, 0]
        before, after = trans[:, :-1], trans[:, 1:]
        alive_last = after[:, -1] > TRANSMITTANCE_MIN  # [T, P]; False: done, or stops in this batch
        if bool((~alive_last & (trans_in > 0)).any()):  # some pixel stops here: mask per Gaussian
            alive = after > TRANSMITTANCE_MIN
            weights = before.sub(after).mul_(alive)
            # alive is monotone along the batch: T after the last alive Gaussian is trans[:, count]
            trans_out = trans.gather(1, alive.sum(1, keepdim=True)).squeeze(1)
        else:  # nobody stops: every pixel still running is alive throughout (done ones have T = 0)
            alive = (trans_in > 0)[:, None, :]
            weights = before - after
            trans_out = after[:, -1]
        return alpha, before, alive, alive_last, weights, one_minus, trans_out


def _below(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``value`` (threshold() keeps x > t; we keep x >= value)."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.zeros_like(v)))


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back compositing of packed 2D Gaussians into tiles, with a hand-written backward.

    Inputs: means2d [M, 2], conics [M, 3], opacities [M] (each >= 1/255), features [M, D].
    Outputs: features [n_tiles, P, D] = sum_i w_i f_i and final transmittance [n_tiles, P],
    with P = tile_size² pixels per tile in row-major order.

    Tiles are processed in rounds of ``batch_size`` Gaussians; the state of the tiles still in
    play (accumulated features and sum of weights [A, D + 1, P], done flags [A, P]) is kept
    compact, so chunks are plain slices. A tile leaves when its list is exhausted or all its
    pixels are done. The backward replays the same rounds front to back with the same
    chunking, keeping per pixel the transmittance and the running sum of w_k <dL/dF, f_k>;
    with ``keep_blocks`` the forward's blocks (alpha, T before, alive, weights, 1 - alpha)
    are reused up to ``settings.saved_block_elements`` elements.

    Gradient (per pixel, composited Gaussians i, T_i before i, F = sum_k w_k f_k):
    dL/dalpha_i = T_i <g, f_i> - (<g, F> + gT T_final - sum_{k<=i} w_k <g, f_k>) / (1 - alpha_i),
    then d alpha / d log_alpha = alpha (zero where alpha was clamped to 0.999 or skipped), and
    log_alpha = log o - sigma is linear in the per-pair coefficients.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, bins: TileBins, width: int, height: int, settings: RasterizeSettings, keep_blocks: bool):  # type: ignore[override]
        blocks = _Blocks(means2d, conics, opacities, features, bins, settings)
        budget = settings.saved_block_elements if keep_blocks else 0
        saved: list[tuple[Tensor, ...] | None] = []  # per (round, chunk), in order
        n_tiles, pixels, dim = bins.count.shape[0], blocks.pixels, features.shape[1]
        result = features.new_zeros(n_tiles, dim + 1, pixels)  # channels first; last: sum of weights
        active = torch.nonzero(bins.count > 0).squeeze(1)
        state = features.new_zeros(active.shape[0], dim + 1, pixels)
        result_t = features.new_ones(n_tiles, pixels)  # transmittance, a running product
        tstate = features.new_ones(active.shape[0], pixels)
        done = ~_pixel_in_image(bins, width, height)[active]
        rounds: list[Tensor] = []
        r = 0
        while active.numel() > 0:
            rounds.append(active)
            for sl in _chunks(active.shape[0], blocks.tiles_per_chunk):
                tiles = active[sl]
                _, rows = blocks.gather(tiles, r)
                acc = state[sl]  # a view: updated in place
                trans_in = tstate[sl].masked_fill(done[sl], 0.0)
                block = blocks.weights(tiles, rows, trans_in)
                alive_last, weights = block[3], block[4]
                tstate[sl] = torch.where(done[sl], tstate[sl], block[6])
                if budget >= weights.numel():
                    budget -= weights.numel()
                    saved.append(block)
                else:
                    saved.append(None)
                acc += torch.bmm(rows[..., 6:].transpose(1, 2), weights)  # [T, D + 1, P]
                done[sl] |= ~alive_last
            r += 1
            keep = (bins.count[active] > r * blocks.batch) & ~done.all(-1)
            if not bool(keep.all()):
                leave = ~keep
                result[active[leave]] = state[leave]
                result_t[active[leave]] = tstate[leave]
                active, state, tstate, done = active[keep], state[keep], tstate[keep], done[keep]
        out = result[:, :dim].transpose(1, 2).contiguous()  # [n_tiles, P, D]
        trans = result_t
        ctx.save_for_backward(means2d, conics, opacities, features, out, trans)
        ctx.rounds, ctx.bins, ctx.settings, ctx.size = rounds, bins, settings, (width, height)
        ctx.blocks = saved
        return out, trans

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, grad_trans: Tensor):  # type: ignore[override]
        means2d, conics, opacities, features, out, trans_final = ctx.saved_tensors
        bins: TileBins = ctx.bins
        blocks = _Blocks(means2d, conics, opacities, features, bins, ctx.settings)
        dim = features.shape[1]
        grad_table = blocks.table.new_zeros(blocks.table.shape[0], 6 + dim)
        width, height = ctx.size
        in_image = _pixel_in_image(bins, width, height)
        # d T_final / d alpha_i = -T_final / (1 - alpha_i): folds into one per-pixel constant
        pixel_const = (grad_out * out).sum(-1) + grad_trans * trans_final  # [n_tiles, P]
        active = ctx.rounds[0] if ctx.rounds else torch.zeros(0, dtype=torch.long, device=means2d.device)
        g_out, const = grad_out[active].transpose(1, 2).contiguous(), pixel_const[active]  # [A, D, P], [A, P]
        tstate = trans_final.new_ones(active.shape[0], blocks.pixels)  # as in the forward
        running = torch.zeros_like(tstate)  # sum over composited k of w_k <dL/dF, f_k>
        done = ~in_image[active]
        saved = iter(ctx.blocks)
        for r, now in enumerate(ctx.rounds):
            if now.shape[0] != active.shape[0]:  # tiles left after the previous round
                keep = torch.isin(active, now)
                active, g_out, const = active[keep], g_out[keep], const[keep]
                tstate, running, done = tstate[keep], running[keep], done[keep]
            for sl in _chunks(active.shape[0], blocks.tiles_per_chunk):
                tiles = active[sl]
                ids, rows = blocks.gather(tiles, r)
                trans_in = tstate[sl].masked_fill(done[sl], 0.0)
                block = next(saved, None)  # None: not kept, or a second backward (retain_graph)
                if block is None:
                    block = blocks.weights(tiles, rows, trans_in)
                alpha, before, alive, alive_last, weights, one_minus, trans_out = block
                stopped = ~alive_last
                g = g_out[sl]  # [T, D, P]
                h = torch.bmm(rows[..., 6 : 6 + dim], g)  # [T, B, P]: <dL/dF, f_i>
                cum = torch.cumsum(weights * h, dim=1).add_(running[sl, None, :])
                # dL/dalpha_i = T_i h_i - (<g, F> + gT T_final - sum_{k<=i} w_k h_k) / (1 - alpha_i)
                g_alpha = (cum - const[sl, None, :]).div_(one_minus).addcmul_(before, h)
                smooth = alive & (alpha < MAX_ALPHA)  # clamped alphas pass no gradient; skipped ones are 0
                g_log_alpha = g_alpha.mul_(alpha).mul_(smooth)  # d alpha / d log_alpha = alpha
                n_t, batch = ids.shape
                g_coef = (blocks.monomials_t @ g_log_alpha.view(n_t * batch, -1).t()).t().reshape(n_t, batch, 6)
                centre = _tile_centres(tiles, bins, rows.dtype)
                gm, gc, go = _log_alpha_coefficients_backward(
                    g_coef, rows[..., 0:2], rows[..., 2:5], rows[..., 5].exp(), centre
                )
                g_feat = torch.bmm(g, weights.transpose(1, 2)).transpose(1, 2)  # [T, B, D]
                grad_table.index_add_(0, ids.reshape(-1), torch.cat([gm, gc, go[..., None], g_feat], dim=-1).reshape(-1, 6 + dim))
                running[sl] = cum[:, -1]
                tstate[sl] = torch.where(done[sl], tstate[sl], trans_out)
                done[sl] |= stopped
        m = means2d.shape[0]
        grad_table = grad_table[:m]
        ctx.blocks = []  # free them; a second backward recomputes
        return grad_table[:, 0:2], grad_table[:, 2:5], grad_table[:, 5], grad_table[:, 6:], None, None, None, None, None


def _pixel_in_image(bins: TileBins, width: int, height: int) -> Tensor:
    """[n_tiles, P] bool: whether each tile pixel lies inside the image (border tiles overhang)."""
    ts = bins.tile_size
    device = bins.count.device
    local = torch.arange(ts, device=device)
    tile = torch.arange(bins.tiles_x * bins.tiles_y, device=device)
    tx, ty = tile % bins.tiles_x, torch.div(tile, bins.tiles_x, rounding_mode="floor")
    x = tx[:, None, None] * ts + local[None, None, :]
    y = ty[:, None, None] * ts + local[None, :, None]
    inside = ((x < width) & (y < height)).reshape(tile.shape[0], ts * ts)
    n_cams = bins.count.shape[0] // tile.shape[0]
    return inside.repeat(n_cams, 1)


def composite_tiles(
    means2d: Tensor,  # [M, 2]
    conics: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    features: Tensor,  # [M, D]
    bins: TileBins,
    n_cameras: int,
    width: int,
    height: int,
    settings: RasterizeSettings,
) -> tuple[Tensor, Tensor]:
    """Composite binned packed Gaussians into images (differentiable in all float inputs).

    Returns:
        features [C, H, W, D] = sum_i w_i f_i (no background) and alpha [C, H, W, 1] = 1 - T.
    """
    keep_blocks = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, opacities, features))
    out, trans = _CompositeTiles.apply(means2d, conics, opacities, features, bins, width, height, settings, keep_blocks)
    ts = bins.tile_size

    def untile(x: Tensor) -> Tensor:
        d = x.shape[-1]
        x = x.reshape(n_cameras, bins.tiles_y, bins.tiles_x, ts, ts, d).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n_cameras, bins.tiles_y * ts, bins.tiles_x * ts, d)[:, :height, :width]

    return untile(out), 1.0 - untile(trans[..., None])


# ------------------------------------------------------------ binning + compositing (both paths)


def select_backend(settings: RasterizeSettings, reference: Tensor) -> str:
    """The compositing engine ``settings.backend`` resolves to for tensors like ``reference``.

    ``"auto"`` gives ``"cpp"`` for float32/float64 CPU tensors when the compiled extension
    could be built (the first call builds it; a failure warns once), else ``"torch"``.
    ``"cpp"`` raises :class:`~recon_core.errors.InputError` when that is impossible.
    """
    return _resolve(settings.backend, "backend", reference)


def select_projection(settings: RasterizeSettings, reference: Tensor) -> str:
    """The projection ``settings.projection`` resolves to: ``"auto"`` follows
    :func:`select_backend` (the fused C++ projection whenever the compositing is compiled);
    ``"cpp"`` and ``"torch"`` as for :func:`select_backend`."""
    if settings.projection == "auto":
        return select_backend(settings, reference)
    return _resolve(settings.projection, "projection", reference)


def _resolve(choice: str, what: str, reference: Tensor) -> str:
    if choice == "torch":
        return "torch"
    usable = reference.device.type == "cpu" and reference.dtype in (torch.float32, torch.float64)
    if choice == "cpp":
        if not usable:
            raise InputError(
                f"{what} 'cpp' needs float32/float64 CPU tensors, got {reference.dtype} on {reference.device}; "
                f"use {what} 'torch' (or 'auto') on other devices"
            )
        if _cpp.extension() is None:
            reason = "RECON_NO_CPP is set" if cpp_disabled() else "it could not be built (see the warning above)"
            raise InputError(f"{what} 'cpp' is unavailable: {reason}; use {what} 'torch' or 'auto'")
        return "cpp"
    return "cpp" if usable and _cpp.extension() is not None else "torch"


def composite_gaussians(
    means2d: Tensor,  # [M, 2]
    conics: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    features: Tensor,  # [M, D]
    cov2d: Tensor,  # [M, 3]
    depths: Tensor,  # [M]
    camera_ids: Tensor,  # [M]
    n_cameras: int,
    width: int,
    height: int,
    settings: RasterizeSettings,
) -> tuple[Tensor, Tensor]:
    """Bin packed Gaussians into tiles and composite them, with the compiled CPU kernels.

    The tile lists are those of :func:`bin_gaussians` (opacity-aware boxes, front to back by
    depth, ties by packed index) with ``settings.cpp_tile_size``; each tile is one OpenMP work
    item (``torch.get_num_threads()`` threads), each pixel runs gsplat's loop. The backward
    replays each pixel front to back (the formula of :class:`_CompositeTiles`) and sums
    per-(tile, Gaussian) gradient slots, so results do not depend on the thread count.
    Differentiable in means2d, conics, opacities and features; ``cov2d`` and ``depths`` only
    place Gaussians in tiles. Needs contiguous-able float32/float64 CPU tensors.

    Args:
        means2d, conics, opacities, features: packed Gaussians (opacities >= 1/255).
        cov2d: [M, 3] dilated 2D covariance (xx, xy, yy), for the tile boxes.
        depths: [M] camera z, the sort key.
        camera_ids: [M] int64 camera of each packed Gaussian.

    Returns:
        features [C, H, W, D] = sum_i w_i f_i (no background) and alpha [C, H, W, 1] = 1 - T.
    """
    ext = _cpp.extension()
    if ext is None:
        raise InputError("the compiled CPU rasteriser is unavailable; use _composite_gaussians (pure PyTorch)")
    image, alpha = _CompositeCpp.apply(
        means2d, conics, opacities, features, cov2d.detach(), depths.detach(), camera_ids,
        (n_cameras, width, height, settings.cpp_tile_size), ext,
    )
    return image, alpha[..., None]


def _composite_gaussians(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    cov2d: Tensor,
    depths: Tensor,
    camera_ids: Tensor,
    n_cameras: int,
    width: int,
    height: int,
    settings: RasterizeSettings,
) -> tuple[Tensor, Tensor]:
    """PyTorch implementation of :func:`composite_gaussians` (any device): :func:`bin_gaussians`
    with ``settings.tile_size``, then :func:`composite_tiles`. Same arguments and outputs."""
    bins = bin_gaussians(
        means2d.detach(), cov2d.detach(), opacities.detach(), depths.detach(), camera_ids,
        n_cameras, width, height, settings.tile_size,
    )
    return composite_tiles(means2d, conics, opacities, features, bins, n_cameras, width, height, settings)


class _CompositeCpp(torch.autograd.Function):
    """Autograd wrapper of the compiled kernels (``rasterize_cpu.cpp``): binning + compositing."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, cov2d, depths, camera_ids, geometry, ext):  # type: ignore[override]
        n_cameras, width, height, tile_size = geometry
        dtype = means2d.dtype
        means2d, conics, opacities, features, cov2d = (
            t.detach().to(dtype).contiguous() for t in (means2d, conics, opacities, features, cov2d)
        )
        offsets, ids = ext.bin_gaussians(
            means2d, cov2d, opacities, depths.to(dtype).contiguous(), camera_ids.long().contiguous(),
            n_cameras, width, height, tile_size,
        )
        image, alpha, trans, last = ext.composite_forward(
            means2d, conics, opacities, cov2d, features, offsets, ids, n_cameras, width, height, tile_size
        )
        ctx.save_for_backward(means2d, conics, opacities, cov2d, features, offsets, ids, trans, last)
        ctx.geometry, ctx.ext = geometry, ext
        return image, alpha  # alpha = sum of weights = 1 - trans

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_image: Tensor, grad_alpha: Tensor):  # type: ignore[override]
        means2d, conics, opacities, cov2d, features, offsets, ids, trans, last = ctx.saved_tensors
        n_cameras, width, height, tile_size = ctx.geometry
        g_means, g_conics, g_opac, g_feat = ctx.ext.composite_backward(
            means2d, conics, opacities, cov2d, features, offsets, ids, trans, last,
            grad_image.to(trans.dtype).contiguous(), grad_alpha.neg().to(trans.dtype).contiguous(),
            n_cameras, width, height, tile_size,
        )
        return g_means, g_conics, g_opac, g_feat, None, None, None, None, None


# ---------------------------------------------------------- projection + SH + packing (both paths)


@dataclass(frozen=True)
class PackedGaussians:
    """The visible (camera, Gaussian) pairs, camera-major then by Gaussian index (M of them).

    means2d [M, 2], conics [M, 3], opacities [M] and features [M, 4] (rgb, camera z) are
    differentiable; cov2d [M, 3] (tile boxes), camera_ids / gaussian_ids [M] (int64) and radii
    [M, 2] (int32) are not. A pair is visible when both radii are positive (in front of the
    near plane, its 3.33-sigma box meets the image) and its opacity is at least 1/255.
    """

    means2d: Tensor
    conics: Tensor
    opacities: Tensor
    features: Tensor
    cov2d: Tensor
    camera_ids: Tensor
    gaussian_ids: Tensor
    radii: Tensor


def _pack_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, colors: Tensor | None, sh: Tensor | None, sh_degree: int,
    settings: RasterizeSettings, info: dict | None,
) -> PackedGaussians:
    """PyTorch twin of :func:`pack_gaussians` (any device): :func:`project_gaussians`, then the
    visible pairs' colours (:func:`sh_to_colors`), all by autograd. ``info`` (when given) gets
    gsplat's unpacked layout: ``means2d`` [C, N, 2] with its gradient retained, ``radii`` [C, N, 2]."""
    n_cams = viewmats.shape[0]
    proj = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, settings.eps2d, settings.near_plane, settings.far_plane
    )
    if info is not None:
        if proj.means2d.requires_grad:
            proj.means2d.retain_grad()
        info.update(means2d=proj.means2d, radii=proj.radii, width=width, height=height, n_cameras=n_cams, gaussian_ids=None)
    with torch.no_grad():
        visible = (proj.radii > 0).all(-1) & (opacities >= ALPHA_THRESHOLD)[None, :]
        cam_ids, gauss_ids = torch.nonzero(visible, as_tuple=True)
        flat = cam_ids * means.shape[0] + gauss_ids
    depths = proj.depths.reshape(-1).index_select(0, flat)
    if sh is not None:
        # camera centres as gsplat computes them (same gradient w.r.t. viewmats as the CUDA path)
        centres = torch.linalg.inv(viewmats)[:, :3, 3]
        rgb = sh_to_colors(sh.index_select(0, gauss_ids), sh_degree, means.index_select(0, gauss_ids) - centres[cam_ids])
    else:
        rgb = colors.index_select(0, gauss_ids)
    return PackedGaussians(
        means2d=proj.means2d.reshape(-1, 2).index_select(0, flat),
        conics=proj.conics.reshape(-1, 3).index_select(0, flat),
        opacities=opacities.index_select(0, gauss_ids),
        features=torch.cat([rgb, depths[:, None]], dim=-1),
        cov2d=proj.cov2d.detach().reshape(-1, 3).index_select(0, flat),
        camera_ids=cam_ids,
        gaussian_ids=gauss_ids,
        radii=proj.radii[cam_ids, gauss_ids],
    )


def pack_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, colors: Tensor | None, sh: Tensor | None, sh_degree: int,
    settings: RasterizeSettings, info: dict | None,
) -> PackedGaussians:
    """Project, colour and pack in one compiled kernel (``project_forward`` / ``project_backward``
    in ``rasterize_cpu.cpp``), CPU float32/float64 tensors: the same pairs, values and gradients
    as :func:`_pack_gaussians` (means, quats, scales, opacities, colours / SH and ``viewmats``;
    not ``Ks``). Each Gaussian is one work item of the forward and of the hand-written backward;
    the camera gradients are summed per fixed chunk of Gaussians, so results do not depend on
    the thread count. The camera centres of the SH directions are ``inverse(viewmats)[:, :3, 3]``
    as in the twin; the kernel returns their gradient and autograd carries it through that
    inverse (C 4x4 matrices) to the poses.

    ``info`` (when given) gets gsplat's *packed* layout: ``means2d`` [M, 2] (gradient retained),
    ``radii`` [M, 2], ``gaussian_ids`` and ``camera_ids`` [M], ``packed=True``, which gsplat's
    strategies read as they do from gsplat's packed renderer.
    """
    ext = _cpp.extension()
    if ext is None:
        raise InputError("the compiled CPU projection is unavailable; use _pack_gaussians (pure PyTorch)")
    if sh is not None:
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"SH degree must be 0..3, got {sh_degree}")
        centres = torch.linalg.inv(viewmats)[:, :3, 3] if sh_degree > 0 else viewmats.new_zeros(viewmats.shape[0], 3)
        table, degree = sh, sh_degree
    else:
        centres, table, degree = viewmats.new_zeros(viewmats.shape[0], 3), colors, -1
    geometry = (degree, width, height, float(settings.eps2d), float(settings.near_plane), float(settings.far_plane))
    m2d, conics, opac, feats, cov2d, cam_ids, gauss_ids, radii, _ = _ProjectCpp.apply(
        means, quats, scales, opacities, table, viewmats, centres, Ks.detach(), geometry, ext
    )
    if info is not None:
        if m2d.requires_grad:
            m2d.retain_grad()
        info.update(means2d=m2d, radii=radii, width=width, height=height, n_cameras=viewmats.shape[0],
                    gaussian_ids=gauss_ids, camera_ids=cam_ids, packed=True)
    return PackedGaussians(m2d, conics, opac, feats, cov2d, cam_ids, gauss_ids, radii)


class _ProjectCpp(torch.autograd.Function):
    """Autograd wrapper of the fused projection kernels (``project_forward`` / ``project_backward``)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, table, viewmats, centres, Ks, geometry, ext):  # type: ignore[override]
        degree, width, height, eps2d, near_plane, far_plane = geometry
        dtype = means.dtype
        inputs = [t.detach().to(dtype).contiguous() for t in (means, quats, scales, opacities, table, viewmats, centres, Ks)]
        outs = ext.project_forward(*inputs[:5], degree, *inputs[5:], width, height, eps2d, near_plane, far_plane)
        ctx.save_for_backward(*inputs, outs[-1])
        ctx.geometry, ctx.ext = geometry, ext
        ctx.mark_non_differentiable(*outs[4:])
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_means2d, g_conics, g_opac, g_features, *_):  # type: ignore[override]
        *inputs, index = ctx.saved_tensors
        degree, width, height, eps2d, near_plane, far_plane = ctx.geometry
        dtype = inputs[0].dtype
        grads = ctx.ext.project_backward(
            *inputs[:5], degree, *inputs[5:], width, height, eps2d, near_plane, far_plane, index,
            *(g.to(dtype).contiguous() for g in (g_means2d, g_conics, g_opac, g_features)),
        )
        return (*grads, None, None, None)


# ------------------------------------------------------------------------------- whole render


def rasterize_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    colors: Tensor | None = None,  # [N, 3]
    sh: Tensor | None = None,  # [N, K, 3]
    sh_degree: int = 0,
    background: Tensor | None = None,  # [C, 3] or [3]
    settings: RasterizeSettings | None = None,
    info: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render N Gaussians into C same-sized pinhole cameras (pure PyTorch, any device).

    Differentiable with respect to means, quats, scales, opacities, colors / sh, background
    and ``viewmats`` (so a pose parameterised upstream, e.g. ``inverse(c2w)``, gets gradients).

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] wxyz rotations (normalised here).
        scales: [N, 3] activated scales.
        opacities: [N] in [0, 1].
        viewmats: [C, 4, 4] world-to-camera OpenCV matrices.
        Ks: [C, 3, 3] intrinsics, pixel centres at i + 0.5.
        width, height: image size.
        colors: [N, 3] view-independent colours (give exactly one of colors and sh).
        sh: [N, K, 3] SH coefficients, evaluated to ``sh_degree`` along mean - camera centre.
        sh_degree: 0–3.
        background: [3] or [C, 3] colour composited as rgb + (1 - alpha) * background.
        settings: :class:`RasterizeSettings`.
        info: when given, filled in gsplat's shape for densification strategies: ``means2d``
            (its gradient retained when it has one), ``radii``, ``width``, ``height``,
            ``n_cameras``; unpacked ([C, N, 2]) from the PyTorch projection, packed ([M, 2],
            with ``gaussian_ids``, ``camera_ids`` and ``packed=True``) from the fused one.

    Returns:
        rgb [C, H, W, 3], alpha [C, H, W, 1], depth [C, H, W, 1]. Depth is the expected camera
        z of the composited Gaussians, sum_i w_i z_i / alpha, and 0 where alpha is 0.
    """
    settings = settings or RasterizeSettings()
    if (colors is None) == (sh is None):
        raise ValueError("give exactly one of colors and sh")
    n_cams = viewmats.shape[0]
    pack = pack_gaussians if select_projection(settings, means) == "cpp" else _pack_gaussians
    p = pack(means, quats, scales, opacities, viewmats, Ks, width, height, colors, sh, sh_degree, settings, info)
    means2d, conics, opac, features, cov2d, cam_ids = p.means2d, p.conics, p.opacities, p.features, p.cov2d, p.camera_ids
    depths = features[:, 3].detach()
    composite = composite_gaussians if select_backend(settings, means) == "cpp" else _composite_gaussians
    image, alpha = composite(means2d, conics, opac, features, cov2d, depths, cam_ids, n_cams, width, height, settings)
    rgb_out = image[..., :3]
    depth = image[..., 3:] / alpha.clamp_min(1e-10)
    if background is not None:
        bg = background.reshape(-1, 1, 1, 3) if background.ndim == 2 else background.reshape(1, 1, 1, 3)
        rgb_out = rgb_out + (1.0 - alpha) * bg
    return rgb_out, alpha, depth
