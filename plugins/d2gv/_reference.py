"""Dense brute-force version of ``rasterize.rasterize_sum`` (for parity tests only).

``_rasterize_sum_dense`` is a PyTorch implementation of :func:`rasterize_sum` that evaluates every
Gaussian at every pixel ([B, H·W, N] tensors), with the same contribution rule: pixel centres at
i + 0.5, α = min(1, exp(-σ)), skipped when α < ``alpha_min`` or outside the square footprint
``|dx|, |dy| <= r``, summed, clamped to [0, 1]. It skips nothing for speed, so it only fits small
images and few Gaussians.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rasterize import RasterSettings

__all__ = ["_rasterize_sum_dense"]


def _rasterize_sum_dense(
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    radii: Tensor,
    weights: Tensor | None,
    settings: RasterSettings,
) -> Tensor:
    """PyTorch dense implementation of ``rasterize_sum``: same arguments, same [B, H, W, C] output."""
    B, N, _ = means.shape
    H, W = settings.height, settings.width
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=means.dtype, device=means.device) + 0.5,
        torch.arange(W, dtype=means.dtype, device=means.device) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # [P, 2]
    d = pix[None, :, None, :] - means[:, None, :, :]  # [B, P, N, 2]
    dx, dy = d[..., 0], d[..., 1]
    a, b, c = (conics[..., k][:, None, :] for k in range(3))
    sigma = 0.5 * (a * dx**2 + c * dy**2) + b * dx * dy
    alpha = torch.minimum(torch.exp(-sigma), torch.ones_like(sigma))
    r = radii[:, None, :].to(means.dtype)
    keep = (dx.abs() <= r) & (dy.abs() <= r) & (alpha >= settings.alpha_min) & (radii[:, None, :] > 0)
    w = alpha * keep
    if weights is not None:
        w = w * weights[:, None, :]
    img = torch.einsum("bpn,bnc->bpc", w, colors).reshape(B, H, W, colors.shape[-1])
    return img.clamp(0.0, 1.0) if settings.clamp else img
