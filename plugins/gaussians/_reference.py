"""Naive brute-force twins of :mod:`recon_plugins.gaussians.rasterize`, for tests and benchmarks.

Written differently on purpose and slow on purpose: no tiles, no binning, no cumprod trick, no
hand-written gradients. Every pixel looks at every Gaussian; Gaussians are visited one at a
time in depth order, exactly like gsplat's per-pixel CUDA loop (vectorised over pixels only).
Projection and SH come from gsplat's own pure-PyTorch reference (``gsplat.cuda._torch_impl``),
so a full render here shares no code with the fast path. Gradients are plain autograd.

Memory grows with pixels x Gaussians for the autograd graph: use small scenes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["composite_reference", "render_reference"]


def composite_reference(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    features: Tensor,  # [C, N, D]
    depths: Tensor,  # [C, N]
    visible: Tensor,  # [C, N] bool
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """gsplat's compositing rules, pixel by pixel, over all visible Gaussians sorted by depth.

    Rules: ``alpha = min(0.999, o exp(-sigma))`` with ``sigma = 0.5 (a dx² + c dy²) + b dx dy``
    and ``(dx, dy) = mean - pixel centre`` (centre of pixel (i, j) at (j + 0.5, i + 0.5));
    skip when ``sigma < 0`` or ``alpha < 1/255``; stop before the Gaussian that would bring the
    transmittance to ``<= 1e-4``.

    Returns:
        features [C, H, W, D] = sum_i w_i f_i and alpha [C, H, W, 1] = 1 - T.
    """
    n_cams = means2d.shape[0]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means2d.dtype, device=means2d.device) + 0.5,
        torch.arange(width, dtype=means2d.dtype, device=means2d.device) + 0.5,
        indexing="ij",
    )
    images, alphas = [], []
    for cam in range(n_cams):
        out = features.new_zeros(height, width, features.shape[-1])
        trans = features.new_ones(height, width)
        done = torch.zeros(height, width, dtype=torch.bool, device=means2d.device)
        order = [int(i) for i in torch.argsort(depths[cam]) if visible[cam, i]]
        for i in order:
            dx = means2d[cam, i, 0] - xs
            dy = means2d[cam, i, 1] - ys
            a, b, c = conics[cam, i]
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = torch.clamp(opacities[cam, i] * torch.exp(-sigma), max=0.999)
            use = (sigma >= 0) & (alpha >= 1.0 / 255.0) & ~done
            next_trans = trans * (1.0 - alpha)
            stop = use & (next_trans <= 1e-4)
            done = done | stop
            take = use & ~stop
            out = out + torch.where(take, alpha * trans, torch.zeros_like(alpha))[..., None] * features[cam, i]
            trans = torch.where(take, next_trans, trans)
        images.append(out)
        alphas.append(1.0 - trans[..., None])
    return torch.stack(images), torch.stack(alphas)


def render_reference(
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
    background: Tensor | None = None,  # [3] or [C, 3]
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference for :func:`~recon_plugins.gaussians.rasterize.rasterize_gaussians` (same I/O).

    Projection: gsplat's ``_fully_fused_projection``; SH: gsplat's ``_spherical_harmonics``
    with ``clamp_min(. + 0.5, 0)``; Gaussians with opacity < 1/255 are dropped, as gsplat's
    CUDA projection does.

    Returns:
        rgb [C, H, W, 3], alpha [C, H, W, 1], expected depth [C, H, W, 1] (0 where alpha = 0).
    """
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane
    )
    n_cams = viewmats.shape[0]
    visible = (radii > 0).all(-1) & (opacities >= 1.0 / 255.0)[None]
    if sh is not None:
        centres = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None] - centres[:, None]  # [C, N, 3]
        rgb = torch.clamp_min(_spherical_harmonics(sh_degree, dirs, sh.expand(n_cams, *sh.shape)) + 0.5, 0.0)
    else:
        rgb = colors.expand(n_cams, *colors.shape)
    features = torch.cat([rgb, depths[..., None]], dim=-1)
    image, alpha = composite_reference(
        means2d, conics, opacities.expand(n_cams, -1), features, depths, visible, width, height
    )
    depth = torch.where(alpha > 0, image[..., 3:] / alpha.clamp_min(1e-30), torch.zeros_like(alpha))
    out = image[..., :3]
    if background is not None:
        out = out + (1.0 - alpha) * background.reshape(-1, 1, 1, 3)
    return out, alpha, depth
