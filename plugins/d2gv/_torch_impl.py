"""PyTorch twins of the compiled ops in ``rasterize.py`` (gsplat's ``_torch_impl`` pattern).

``_rasterize_sum`` is the PyTorch implementation of :func:`rasterize.rasterize_sum`: same
arguments, same image and contribution rule (module docstring of ``rasterize.py``), runs on any
device and is differentiable by plain autograd. It is what ``rasterize_sum`` uses on CUDA, when
the C++ extension cannot be built, or when ``RasterSettings(backend="torch")`` asks for it.

How the work is organised: rather than 16×16 tiles (the compiled CPU kernel and the CUDA
reference tile the image), each Gaussian is evaluated on its own footprint window: Gaussians are
grouped by radius into buckets of window half-size R ∈ {1, 2, 3, 4, 6, 8, 12, …} (window side
2R+1), every bucket is evaluated as one batched tensor expression, chunked to bound memory
(``RasterSettings.chunk_evals``), and only the kept (Gaussian, pixel) pairs are scattered into
the image with ``index_add``. In tensor form this wastes far less work than tiles would (a
radius-2 Gaussian would cost a whole 16×16 tile per tile it touches).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .rasterize import RasterSettings

__all__ = ["_rasterize_sum"]


def _window_half_sizes(radii: Tensor) -> Tensor:
    """Window half-size per Gaussian: the smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, … that is ≥ r.

    Grouping by these values keeps the number of groups logarithmic while wasting at most
    (4/3)² of the evaluations on any window.
    """
    r = radii.clamp_min(1)
    pow2 = torch.pow(2, torch.ceil(torch.log2(r.double()))).long()
    three_quarters = (3 * pow2) // 4
    return torch.where((pow2 >= 4) & (three_quarters >= r), three_quarters, pow2)


def _rasterize_sum(
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    radii: Tensor,
    weights: Tensor | None,
    settings: RasterSettings,
) -> Tensor:
    """PyTorch implementation of :func:`rasterize.rasterize_sum` (per-Gaussian windows, see the module docstring).

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

