"""Differentiable image comparisons shared by refiners (losses) and evaluators (metrics).

Images are float tensors in [0, 1] shaped (H, W, 3) or (N, H, W, 3); masks are bool (H, W) or
(N, H, W). SSIM follows Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5),
C1 = (0.01)^2, C2 = (0.03)^2 and 'valid' filtering (no padding), as skimage does with
``gaussian_weights=True, use_sample_covariance=False, data_range=1``.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim_map", "ssim", "gaussian_window"]


def _batched(x: Tensor) -> Tensor:
    """(H, W, C) or (N, H, W, C) → (N, C, H, W)."""
    if x.ndim == 3:
        x = x[None]
    return x.permute(0, 3, 1, 2)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all (or only masked) pixels and channels."""
    err = (pred - target) ** 2
    if mask is not None:
        m = mask.to(err.dtype)[..., None].expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1)
    else:
        mse = err.mean()
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def ssim_map(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM, (N, H - ws + 1, W - ws + 1, C) ('valid' region), differentiable."""
    x, y = _batched(pred), _batched(target)
    c = x.shape[1]
    g = gaussian_window(window_size, sigma, x.dtype, x.device)
    wx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    wy = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)

    def blur(t: Tensor) -> Tensor:  # separable Gaussian filter, valid region only
        return F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.permute(0, 2, 3, 1)


def ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None, window_size: int = 11) -> Tensor:
    """Mean SSIM; with a mask, averaged over window centres whose pixel is inside the mask."""
    s = ssim_map(pred, target, window_size)
    if mask is None:
        return s.mean()
    m = mask if mask.ndim == 3 else mask[None]
    r = window_size // 2
    m = m[:, r : m.shape[1] - r, r : m.shape[2] - r].to(s.dtype)[..., None].expand_as(s)
    return (s * m).sum() / m.sum().clamp_min(1)


