"""``dggt.init=fit``: a DGGT-shaped 4D scene without the network weights (e.g. to run TTR).

Static part: a ``3dgs`` representation initialised from the scene and optimised for a few
steps with ``3dgs-train`` on a black background (the untrained sky renders black), then kept
as static Gaussians that never fade (a very long lifespan). Dynamic part, per input frame: the
pixels of that frame's dynamic mask, lifted to 3D with the view's depth (or, without one, the
depth the static fit renders) and coloured by the image. Cameras are the scene's own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from recon_core.components import RunContext, Renderer
from recon_core.errors import InputError
from recon_core.gaussians import sh_to_rgb
from recon_core.scene import Scene, View

from .composition import PixelGaussians, unproject_depth

__all__ = ["fit_pixel_gaussians", "STATIC_LIFESPAN"]

STATIC_LIFESPAN = 1.0e4
"""γ of fitted static Gaussians: fading is 0.1^((Δτ/γ)²), i.e. none within any input window."""


def _dynamic_gaussians(view: View, frame: int, depth: Tensor, valid: Tensor, stride: int) -> list[Tensor]:
    """Per-pixel Gaussians of ``view``'s dynamic mask (every ``stride``-th row and column)."""
    mask = view.dynamic_mask.to(depth.device) & valid
    sub = torch.zeros_like(mask)
    sub[::stride, ::stride] = True
    mask = mask & sub
    cam = view.camera.to(depth.device)
    points = unproject_depth(depth[None], cam.K, cam.c2w)[0][mask]
    n = points.shape[0]
    footprint = (depth / cam.K[0, 0, 0])[mask] * stride  # one Gaussian covers stride x stride pixels
    return [
        points, view.image.to(depth.device)[mask].float(), torch.full((n,), 0.8, device=depth.device),
        footprint[:, None].expand(n, 3) * 0.5, torch.tensor([1.0, 0, 0, 0], device=depth.device).expand(n, 4),
        torch.full((n,), STATIC_LIFESPAN, device=depth.device), torch.full((n,), frame, dtype=torch.long, device=depth.device),
        torch.ones(n, dtype=torch.bool, device=depth.device),
    ]


def fit_pixel_gaussians(
    scene: Scene, views: Sequence[View], renderer: Renderer, device: torch.device, *, steps: int, num_points: int,
    dynamic_stride: int, seed: int = 0,
) -> PixelGaussians:
    """Static 3dgs fit of ``views`` + per-frame dynamic Gaussians (see module doc)."""
    from recon_plugins.gaussians import GaussianSplat, GaussianSplatConfig, GaussianTrainConfig, GaussianTrainer

    if not isinstance(scene, Scene):
        raise InputError("dggt.init=fit needs posed views (a Scene); a video has no cameras to fit with")
    static = GaussianSplat(GaussianSplatConfig(sh_degree=0, num_points=int(num_points), seed=seed))
    static.build(scene, device=device)
    trainer = GaussianTrainer(GaussianTrainConfig(steps=int(steps), background=[0.0, 0.0, 0.0], densify=False))
    trainer.setup(static, scene, RunContext(device=device, seed=seed, renderer=renderer))
    for step in range(trainer.total_steps):
        trainer.step(step)
    with torch.no_grad():
        g = static.gaussians(None)
        n = len(g)
        parts = [[
            g.means, sh_to_rgb(g.sh[:, 0]).clamp(0, 1), g.opacities, g.scales, g.quats,
            torch.full((n,), STATIC_LIFESPAN, device=device), torch.zeros(n, dtype=torch.long, device=device),
            torch.zeros(n, dtype=torch.bool, device=device),
        ]]
        for frame, view in enumerate(views):
            if not view.has("dynamic_mask"):
                continue
            if view.has("depth"):
                depth = view.depth.to(device).float()
                valid = depth > 0
            else:
                out = renderer.render(static, view.camera.to(device))
                depth, valid = out.depth[0, ..., 0], out.alpha[0, ..., 0] > 0.5
            parts.append(_dynamic_gaussians(view, frame, depth, valid, max(1, int(dynamic_stride))))
    return PixelGaussians(*[torch.cat(column, dim=0) for column in zip(*parts)])
