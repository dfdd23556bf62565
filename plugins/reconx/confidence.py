"""Per-pixel confidence maps C_i for the confidence-aware loss (ReconX, Liu et al. 2024, eq. 9).

A *confidence source* turns the views a refiner trains on (and, when it needs one, the current
reconstruction) into one float32 (H, W) map in [0, 1] per view: 0 = ignore the pixel, 1 = as
trustworthy as a captured image. Sources are looked up by name in :data:`CONFIDENCE_SOURCES`
(another package may add its own with :func:`register_confidence_source`):

``supplied``
    ``View.confidence`` when the view carries one (a loader field, a depth network's confidence
    such as DUSt3R / VGGT / DGGT ``depth_conf``, or a generator's map), else all ones.
``consistency``
    ``supplied`` times a multi-view consistency map computed from the current reconstruction, so
    the loss works with no learned model: each view's rendered depth is unprojected, reprojected
    into every other view, and a pixel is *supported* by view j when the reprojected point is
    not occluded there (its z agrees with view j's rendered depth within ``depth_tolerance`` x z)
    and the colours agree (``exp(-|c_i - c_j|_1 / (3 sigma))``). The map is the best support
    over the other views; pixels no other view sees get ``unseen`` (they are not contradicted,
    only unverified); pixels the reconstruction does not cover (alpha < 0.5) get 1 (nothing to
    compare, and the background must still be fitted).
``none``
    all ones (the plain photometric loss).

Conventions: OpenCV camera-to-world, pixel centres at i + 0.5, z-depth (docs/conventions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from recon_core.components import Renderer, Representation
from recon_core.errors import InputError
from recon_core.scene import View
from recon_core.geometry import project_points, rigid_inverse, unproject_depth

__all__ = [
    "ConsistencySettings",
    "ConfidenceSource",
    "CONFIDENCE_SOURCES",
    "register_confidence_source",
    "confidence_maps",
    "supplied_confidence",
    "reproject",
    "consistency_map",
]


@dataclass(frozen=True)
class ConsistencySettings:
    """Thresholds of the multi-view consistency confidence.

    depth_tolerance: relative z difference (|z_proj - z_j| / z_j) below which a point is visible in j.
    color_sigma: per-channel colour difference scale of the photometric agreement.
    unseen: confidence of pixels that no other view sees.
    """

    depth_tolerance: float = 0.03
    color_sigma: float = 0.1
    unseen: float = 0.5


ConfidenceSource = Callable[[Sequence[View], Sequence[Tensor], "Representation | None", "Renderer | None", ConsistencySettings], list[Tensor]]
"""(views, target images [(H, W, 3)], rep, renderer, settings) → one (H, W) map per view."""


def supplied_confidence(view: View) -> Tensor:
    """``view.confidence`` clamped to [0, 1] (float32, on the CPU), or ones when the view has none."""
    if view.has("confidence"):
        c = view.confidence.float().cpu()
        if c.shape != (view.height, view.width):
            raise InputError(f"confidence of view {view.name} is {tuple(c.shape)}, expected {(view.height, view.width)}", view.path)
        return c.clamp(0.0, 1.0)
    return torch.ones(view.height, view.width)


def reproject(depth: Tensor, K_src: Tensor, c2w_src: Tensor, K_dst: Tensor, c2w_dst: Tensor) -> tuple[Tensor, Tensor]:
    """Where each pixel of a source z-depth map lands in a destination camera.

    Args:
        depth: (H, W) z-depth of the source view (0 = no surface).
        K_src, K_dst: (3, 3) intrinsics, pixel centres at i + 0.5.
        c2w_src, c2w_dst: (4, 4) OpenCV camera-to-world.

    Returns:
        uv (H, W, 2) continuous pixel coordinates in the destination image (pixel (u, v) has its
        centre at (u + 0.5, v + 0.5)), and z (H, W) the point's depth in the destination camera.
    """
    world = unproject_depth(depth.double(), K_src.double().to(depth.device), c2w_src.double().to(depth.device))
    uv, z = project_points(world, K_dst.double().to(depth.device), rigid_inverse(c2w_dst.double().to(depth.device)), eps=1e-12)
    return uv.float(), z.float()


def _sample(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear sample of (H, W, C) ``image`` at continuous pixel coordinates uv (H', W', 2)."""
    h, w = image.shape[:2]
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], dim=-1)[None]
    out = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None].float(), grid, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0)


def consistency_map(
    depth: Tensor,
    image: Tensor,
    K: Tensor,
    c2w: Tensor,
    others: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
    settings: ConsistencySettings = ConsistencySettings(),
) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-view support of one view's pixels by other views.

    Args:
        depth: (H, W) z-depth of this view (0 = no surface); image: (H, W, 3) its colours.
        K, c2w: its intrinsics and OpenCV camera-to-world.
        others: per other view ``(depth_j, image_j, K_j, c2w_j)`` with the same meanings.
        settings: thresholds (see :class:`ConsistencySettings`).

    Returns:
        confidence (H, W) in [0, 1] (best support over the other views; ``settings.unseen`` where
        no other view sees the pixel, 1 where ``depth`` is 0), seen (H, W) bool (some other view
        sees the pixel), and the colour (H, W, 3) of the best-supporting view (``image`` where unseen).
    """
    h, w = depth.shape
    surface = depth > 0
    best = torch.zeros(h, w, device=depth.device)
    seen = torch.zeros(h, w, dtype=torch.bool, device=depth.device)
    color = image.clone().float()
    for depth_j, image_j, K_j, c2w_j in others:
        uv, z = reproject(depth, K, c2w, K_j, c2w_j)
        hj, wj = depth_j.shape
        inside = surface & (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < wj) & (uv[..., 1] >= 0) & (uv[..., 1] < hj)
        ui = uv[..., 0].floor().long().clamp(0, wj - 1)
        vi = uv[..., 1].floor().long().clamp(0, hj - 1)
        z_j = depth_j[vi, ui]
        visible = inside & (z_j > 0) & ((z - z_j).abs() <= settings.depth_tolerance * z_j)
        c_j = _sample(image_j, uv)
        agree = torch.exp(-(image.float() - c_j).abs().sum(-1) / (3.0 * settings.color_sigma))
        support = torch.where(visible, agree, torch.zeros_like(agree))
        better = support > best
        color = torch.where((better & visible)[..., None], c_j, color)
        best = torch.maximum(best, support)
        seen |= visible
    conf = torch.where(seen, best, torch.full_like(best, settings.unseen))
    conf = torch.where(surface, conf, torch.ones_like(conf))
    return conf.clamp(0.0, 1.0), seen, color


def _supplied(views: Sequence[View], targets: Sequence[Tensor], rep: Representation | None, renderer: Renderer | None,
              settings: ConsistencySettings) -> list[Tensor]:
    return [supplied_confidence(v) for v in views]


def _none(views: Sequence[View], targets: Sequence[Tensor], rep: Representation | None, renderer: Renderer | None,
          settings: ConsistencySettings) -> list[Tensor]:
    return [torch.ones(v.height, v.width) for v in views]


def _consistency(views: Sequence[View], targets: Sequence[Tensor], rep: Representation | None, renderer: Renderer | None,
                 settings: ConsistencySettings) -> list[Tensor]:
    if rep is None or renderer is None:
        raise InputError("the 'consistency' confidence needs the current reconstruction and a renderer")
    depths = []
    with torch.no_grad():
        for v in views:
            device = next(iter(rep.parameters())).device
            out = renderer.render(rep, v.camera.to(device))
            if out.depth is None or out.alpha is None:
                raise InputError(f"the 'consistency' confidence needs depth and alpha from the renderer; {renderer.name} gives none")
            d = out.depth[0, ..., 0].detach().cpu().float()
            depths.append(torch.where(out.alpha[0, ..., 0].detach().cpu() > 0.5, d, torch.zeros_like(d)))
    maps = []
    for i, v in enumerate(views):
        others = [(depths[j], targets[j].cpu(), views[j].camera.K[0], views[j].camera.c2w[0]) for j in range(len(views)) if j != i]
        conf, _, _ = consistency_map(depths[i], targets[i].cpu(), v.camera.K[0], v.camera.c2w[0], others, settings)
        maps.append(conf * supplied_confidence(v))
    return maps


CONFIDENCE_SOURCES: dict[str, ConfidenceSource] = {"supplied": _supplied, "consistency": _consistency, "none": _none}
"""Confidence sources by name (the ``confidence.source`` option)."""


def register_confidence_source(name: str, source: ConfidenceSource) -> None:
    """Make ``source`` selectable as ``--set confidence.source=NAME``; a taken name raises ValueError."""
    if name in CONFIDENCE_SOURCES:
        raise ValueError(f"confidence source '{name}' already exists")
    CONFIDENCE_SOURCES[name] = source


def confidence_maps(name: str, views: Sequence[View], targets: Sequence[Tensor], rep: Representation | None = None,
                    renderer: Renderer | None = None, settings: ConsistencySettings = ConsistencySettings()) -> list[Tensor]:
    """One float32 (H, W) map in [0, 1] per view, on the CPU, from the source called ``name``."""
    if name not in CONFIDENCE_SOURCES:
        raise InputError(f"unknown confidence source '{name}'; known: {', '.join(sorted(CONFIDENCE_SOURCES))}")
    maps = CONFIDENCE_SOURCES[name](views, targets, rep, renderer, settings)
    for v, m in zip(views, maps):
        if m.shape != (v.height, v.width):
            raise InputError(f"confidence source '{name}' gave a {tuple(m.shape)} map for view {v.name}, expected {(v.height, v.width)}")
    return [m.float().cpu().clamp(0.0, 1.0) for m in maps]
