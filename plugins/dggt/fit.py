"""``dggt.init=fit``: a DGGT-shaped 4D scene without the network weights (e.g. to run TTR).

Static part: Gaussians initialised from the scene (:mod:`recon_core.points`) and optimised for
a few steps with recon's Gaussian engine (:class:`recon_core.optim.GaussianOptimizer`, no
densification, :func:`recon_core.imageops.photometric_loss`) on a black background (the untrained
sky renders black), then kept as static Gaussians that never fade (a very long lifespan). Dynamic part, per input frame: the
pixels of that frame's dynamic mask, lifted to 3D with the view's depth (or, without one, the
depth the static fit renders) and coloured by the image. Cameras are the scene's own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from recon_core import GaussianRepresentation, InputError, OptimConfig, RunContext, Scene, View
from recon_core.gaussians import sh_to_rgb
from recon_core.imageops import photometric_loss
from recon_core.optim import EpochOrder, GaussianOptimizer, default_scene_scale
from recon_core.points import initial_points, splats_from_points

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


class StaticGaussians(GaussianRepresentation):
    """The static part while it is fitted (never registered: a plain Gaussian set)."""

    name = "dggt-static"


def fit_static(scene: Scene, ctx: RunContext, *, steps: int, num_points: int, seed: int = 0) -> StaticGaussians:
    """SH-degree-0 Gaussians from the scene's points, fitted to its training views on black."""
    generator = torch.Generator().manual_seed(seed)
    static = StaticGaussians(sh_degree=0)
    pc, _ = initial_points(scene, "auto", num_points, generator, log=ctx.log)
    static.set_splats(splats_from_points(pc, 0.1, 0, generator), ctx.device)
    views = scene.train_views or list(scene.views)
    engine = GaussianOptimizer(static, OptimConfig(densify=False), scene_scale=default_scene_scale(scene.bounds.radius),
                               total_steps=steps, generator=generator, views=len(views))
    order = EpochOrder(len(views))  # 3dgs-train's sampling: every view once per epoch
    black = torch.zeros(3, device=ctx.device)
    targets = [v.image_on(black.cpu()).to(ctx.device) for v in views]
    for step in range(steps):
        engine.schedule(step)
        i = order.next(generator)
        camera = views[i].camera.to(ctx.device)
        out = ctx.renderer.render(static, camera, background=black)
        engine.step(photometric_loss(out.rgb[0], targets[i]), step, out.info, camera)
    engine.finish()
    return static


def fit_pixel_gaussians(
    scene: Scene, views: Sequence[View], ctx: RunContext, *, steps: int, num_points: int, dynamic_stride: int, seed: int = 0,
) -> PixelGaussians:
    """Static fit of the scene + per-frame dynamic Gaussians of ``views`` (see module doc)."""
    if not isinstance(scene, Scene):
        raise InputError("dggt.init=fit needs posed views (a Scene); a video has no cameras to fit with")
    device, renderer = ctx.device, ctx.renderer
    static = fit_static(scene, ctx, steps=int(steps), num_points=int(num_points), seed=seed)
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
                out = renderer.render(static, view.camera.to(device), background=torch.zeros(3, device=device))
                depth, valid = out.depth[0, ..., 0], out.alpha[0, ..., 0] > 0.5
            parts.append(_dynamic_gaussians(view, frame, depth, valid, max(1, int(dynamic_stride))))
    return PixelGaussians(*[torch.cat(column, dim=0) for column in zip(*parts)])
