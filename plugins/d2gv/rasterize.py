"""Summation rasteriser for image-space 2D Gaussians (GaussianImage / D2GV), pure PyTorch.

Conventions (see also docs/conventions.md):

* Normalised positions ``xy`` in [-1, 1] map to pixel coordinates ``(xy + 1) / 2 * (W, H)``,
  so -1 and +1 are the outer *edges* of the image, x right, y down.
* Pixel ``(row i, column j)`` is sampled at its centre ``(j + 0.5, i + 0.5)`` (recon's
  convention). GaussianImage's kernel samples at ``(j, i)`` with the same position mapping, i.e.
  its images are shifted by half a pixel against ours; any fitted model absorbs that.
* Covariance from a lower-triangular Cholesky factor ``L = [[l11, 0], [l21, l22]]`` in pixels,
  ``Σ = L Lᵀ``; the conic is ``(a, b, c)`` with ``Σ⁻¹ = [[a, b], [b, c]]``.

Image model (accumulated summation, no alpha compositing, opacity 1)::

    C(p) = clamp( Σ_n w_n · c_n · α_n(p), 0, 1 ),
    α_n(p) = min(1, exp(-σ_n(p))),  σ = ½ (a dx² + c dy²) + b dx dy,  (dx, dy) = p - μ_n

where a Gaussian contributes to pixel p only when ``α_n(p) >= alpha_min`` (1/255) and p lies in
its square footprint ``|dx| <= r_n, |dy| <= r_n`` with ``r_n = ceil(3 √λmax(Σ_n))``. This rule does
not depend on any tiling, so the dense reference (``_reference.py``) computes the same image and
the same gradients. ``w_n`` is an optional per-Gaussian weight (the pruning mask).

How the work is organised: the CUDA reference bins Gaussians into 16×16 tiles because GPU
threads share a tile's Gaussian list in shared memory. On a CPU there is no such benefit and a
tile costs 256 evaluations per Gaussian touching it, even for a Gaussian of radius 2. Here each
Gaussian is evaluated on its own footprint window instead: Gaussians are grouped by radius into
buckets of window half-size R ∈ {1, 2, 3, 4, 6, 8, 12, …} (window side 2R+1), every bucket is evaluated as one batched tensor
expression, chunked to bound memory, and scattered into the image with ``index_add_``. Unlike
the reference kernel nothing is capped per tile (it renders only the first 256 Gaussians of a
tile). Gradients are plain autograd through these ops, hence exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RasterSettings", "project_cholesky", "rasterize_sum", "footprint_radii"]


@dataclass(frozen=True)
class RasterSettings:
    """Options of :func:`rasterize_sum` (and of its reference twin).

    Attributes:
        height, width: output size in pixels.
        alpha_min: contributions with α below this are skipped (the reference uses 1/255).
        clamp: clamp the summed colour to [0, 1] (the image model does; off only for debugging).
        chunk_evals: at most this many (Gaussian, pixel) evaluations are materialised at once.
    """

    height: int
    width: int
    alpha_min: float = 1.0 / 255.0
    clamp: bool = True
    chunk_evals: int = 1 << 22


def footprint_radii(cov: Tensor, n_sigma: float = 3.0) -> Tensor:
    """Integer footprint radius ``ceil(n_sigma · √λmax)`` in pixels.

    Args:
        cov: [..., 3] covariance entries (Σ11, Σ12, Σ22) in pixels².
    Returns:
        [...] int64 radii (not differentiable).
    """
    a, b, c = cov.detach().unbind(-1)
    mid = 0.5 * (a + c)
    lam_max = mid + torch.sqrt(torch.clamp(mid * mid - (a * c - b * b), min=0.0))
    return torch.ceil(n_sigma * torch.sqrt(lam_max.clamp_min(0.0))).long()


def project_cholesky(xy: Tensor, chol: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised positions + Cholesky factors → pixel means, conics and footprint radii.

    Args:
        xy: [..., N, 2] positions in [-1, 1] (already through tanh), x right, y down.
        chol: [..., N, 3] Cholesky entries (l11, l21, l22) in pixels; l11, l22 must be > 0.
        height, width: image size in pixels.
    Returns:
        means [..., N, 2] pixel coordinates (pixel centres at i + 0.5),
        conics [..., N, 3] (a, b, c) of Σ⁻¹,
        radii [..., N] int64 footprint radii ``ceil(3 √λmax)``.
    """
    assert xy.shape[-1] == 2 and chol.shape[-1] == 3 and xy.shape[:-1] == chol.shape[:-1], (xy.shape, chol.shape)
    scale = xy.new_tensor([0.5 * width, 0.5 * height])
    means = (xy + 1.0) * scale
    l11, l21, l22 = chol.unbind(-1)
    s11, s12, s22 = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    det = (l11 * l22) ** 2
    conics = torch.stack([s22 / det, -s12 / det, s11 / det], dim=-1)
    radii = footprint_radii(torch.stack([s11, s12, s22], dim=-1))
    return means, conics, radii


def _window_half_sizes(radii: Tensor) -> Tensor:
    """Window half-size per Gaussian: the smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, … that is ≥ r.

    Grouping by these values keeps the number of groups logarithmic while wasting at most
    (4/3)² of the evaluations on any window.
    """
    r = radii.clamp_min(1)
    pow2 = torch.pow(2, torch.ceil(torch.log2(r.double()))).long()
    three_quarters = (3 * pow2) // 4
    return torch.where((pow2 >= 4) & (three_quarters >= r), three_quarters, pow2)


def rasterize_sum(
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    radii: Tensor,
    weights: Tensor | None,
    settings: RasterSettings,
) -> Tensor:
    """Render B images of N 2D Gaussians by accumulated summation (see the module docstring).

    Args:
        means: [B, N, 2] pixel coordinates (x, y), pixel centres at i + 0.5.
        conics: [B, N, 3] (a, b, c) of the inverse covariance.
        colors: [B, N, C] colours (any C; 3 for RGB).
        radii: [B, N] int64 footprint radii (``project_cholesky``); Gaussians with radius 0 are skipped.
        weights: [B, N] per-Gaussian multipliers (pruning mask), or None for all ones.
        settings: output size and cut-offs.
    Returns:
        [B, H, W, C] float images, clamped to [0, 1] when ``settings.clamp``.
    """
    B, N, _ = means.shape
    C = colors.shape[-1]
    assert conics.shape == (B, N, 3) and colors.shape[:2] == (B, N) and radii.shape == (B, N), (
        means.shape,
        conics.shape,
        colors.shape,
        radii.shape,
    )
    assert weights is None or weights.shape == (B, N)
    H, W = settings.height, settings.width
    out = means.new_zeros(B * H * W, C)

    flat_means = means.reshape(B * N, 2)
    flat_conics = conics.reshape(B * N, 3)
    flat_colors = colors.reshape(B * N, C)
    flat_weights = None if weights is None else weights.reshape(B * N)
    flat_radii = radii.reshape(B * N)
    frame_of = torch.arange(B, device=means.device).repeat_interleave(N)

    alive = flat_radii > 0
    half = _window_half_sizes(flat_radii)
    for R in torch.unique(half[alive]).tolist():
        ids = torch.nonzero(alive & (half == R)).squeeze(1)
        side = 2 * int(R) + 1
        per_chunk = max(1, settings.chunk_evals // (side * side))
        offs = torch.arange(side, device=means.device)
        for start in range(0, ids.numel(), per_chunk):
            sel = ids[start : start + per_chunk]
            out = _splat_windows(
                out,
                flat_means[sel],
                flat_conics[sel],
                flat_colors[sel],
                None if flat_weights is None else flat_weights[sel],
                flat_radii[sel],
                frame_of[sel],
                offs,
                settings,
            )
    img = out.reshape(B, H, W, C)
    return img.clamp(0.0, 1.0) if settings.clamp else img


def _splat_windows(
    out: Tensor,
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    weights: Tensor | None,
    radii: Tensor,
    frame: Tensor,
    offs: Tensor,
    settings: RasterSettings,
) -> Tensor:
    """Evaluate M Gaussians on their square windows and add them into ``out`` [B*H*W, C].

    means [M, 2], conics [M, 3], colors [M, C], weights [M] | None, radii [M], frame [M];
    offs [S] are the window offsets 0..S-1 (S = 2R+1 ≥ 2r+1 for every radius r here).
    """
    H, W = settings.height, settings.width
    # First pixel column/row whose centre lies within r of the mean: ceil(μ - r - 0.5).
    m_det = means.detach()
    j0 = torch.ceil(m_det[:, 0] - radii - 0.5).long()
    i0 = torch.ceil(m_det[:, 1] - radii - 0.5).long()
    cols = j0[:, None] + offs[None, :]  # [M, S]
    rows = i0[:, None] + offs[None, :]  # [M, S]
    dx = (cols.to(means.dtype) + 0.5) - means[:, 0:1]  # [M, S]
    dy = (rows.to(means.dtype) + 0.5) - means[:, 1:2]  # [M, S]
    a, b, c = conics[:, 0, None, None], conics[:, 1, None, None], conics[:, 2, None, None]
    dxw, dyh = dx[:, None, :], dy[:, :, None]  # [M, 1, S] (x along last axis), [M, S, 1]
    sigma = 0.5 * (a * dxw * dxw + c * dyh * dyh) + b * dxw * dyh  # [M, S(rows), S(cols)]

    r = radii[:, None].to(means.dtype)
    in_x = (dx.detach().abs() <= r) & (cols >= 0) & (cols < W)  # [M, S]
    in_y = (dy.detach().abs() <= r) & (rows >= 0) & (rows < H)
    # α >= alpha_min  ⇔  σ <= -ln(alpha_min): exp, colours and the scatter run on kept entries only
    valid = in_y[:, :, None] & in_x[:, None, :] & (sigma.detach() <= -math.log(settings.alpha_min))
    g, i, j = valid.nonzero(as_tuple=True)  # [K] Gaussian, window row, window column
    alpha = torch.exp(-sigma[g, i, j]).clamp(max=1.0)
    contrib = alpha if weights is None else alpha * weights[g]
    pix = frame[g] * (H * W) + rows[g, i] * W + cols[g, j]
    values = contrib[:, None] * colors[g]  # [K, C]
    return out.index_add(0, pix, values)

