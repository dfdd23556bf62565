"""``sphere-tracing`` renderer for SDF representations (``idr``).

For each camera, rays through pixel centres (i + 0.5) are traced in chunks (no gradients). A pixel
is covered (alpha 1) when its ray hits the surface inside the bounding sphere; its colour comes from
the rendering network at the hit (normal from the SDF gradient, view direction −v), else the
background. Depth is the z-depth ``t · (v · z_cam)`` of the hit (0 where alpha is 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recon_core import CameraRenderer, Cameras, InputError, RenderOutput, Representation, option

from .representation import IDRRepresentation, pixel_rays

__all__ = ["SphereTracingRenderer", "pixel_grid"]


def pixel_grid(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """[H·W, 2] pixel-centre coordinates (u, v) = (i + 0.5, j + 0.5), row-major."""
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(-1, 2).float() + 0.5


class SphereTracingRenderer(CameraRenderer):
    """Renders an SDF representation by IDR's sphere tracing (see module docstring)."""

    name = "sphere-tracing"
    description = "IDR sphere tracing of an SDF representation (rgb, alpha = hit, depth)"
    requires = frozenset({"sdf"})

    @dataclass
    class Config:
        chunk: int | None = option(None, "rays per chunk; none: the representation's chunk setting", min=1)

    def render(self, rep: Representation, cameras: Cameras, *, background: Tensor | None = None) -> RenderOutput:
        """rgb [N, H, W, 3] (``background`` [3], default black, where no surface is hit), alpha and
        z-depth [N, H, W, 1] for every camera; a static SDF ignores ``cameras.times``."""
        if not isinstance(rep, IDRRepresentation):
            raise InputError(f"sphere-tracing renders the idr representation, not '{rep.name}'")
        dev = rep.center.device
        cameras = cameras.to(dev)
        bg = torch.zeros(3, device=dev) if background is None else background.to(dev).reshape(3)
        chunk = self.config.chunk or rep.config.chunk
        rgbs, alphas, depths = [], [], []
        for i in range(len(cameras)):
            h, w = cameras.size(i)
            uv = pixel_grid(h, w, dev)
            rgb = bg.expand(h * w, 3).clone()
            alpha = torch.zeros(h * w, device=dev)
            depth = torch.zeros(h * w, device=dev)
            z_axis = cameras.c2w[i, :3, 2]
            for s in range(0, h * w, chunk):
                sl = slice(s, min(s + chunk, h * w))
                n = sl.stop - sl.start
                o, d = pixel_rays(cameras.K[i].expand(n, 3, 3), cameras.c2w[i].expand(n, 4, 4), uv[sl])
                o_n, d_n = rep.network_rays(o, d)
                tr = rep.trace(o_n, d_n)
                hit = tr.hit & tr.in_sphere
                if not hit.any():
                    continue
                idx = hit.nonzero().squeeze(1)
                pts = o_n[idx] + tr.t[idx, None] * d_n[idx]
                shaded = rep.shade(pts, d_n[idx], create_graph=False)
                rgb[sl.start + idx] = shaded.rgb.detach()
                alpha[sl.start + idx] = 1.0
                depth[sl.start + idx] = tr.t[idx] * rep.scale * (d[idx] @ z_axis)
            rgbs.append(rgb.reshape(h, w, 3))
            alphas.append(alpha.reshape(h, w, 1))
            depths.append(depth.reshape(h, w, 1))
        return RenderOutput(rgb=torch.stack(rgbs), alpha=torch.stack(alphas), depth=torch.stack(depths))
