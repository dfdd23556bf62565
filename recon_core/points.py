"""Where 3D Gaussians start: point clouds, unprojected depth maps, random points; their first splats.

Conventions (docs/conventions.md): cameras are OpenCV camera-to-world, intrinsics K have pixel
centres at i + 0.5, so pixel (u, v) (column u, row v) has its centre at (u + 0.5, v + 0.5) and
unprojects along ``K^-1 [u + 0.5, v + 0.5, 1]``. Depth maps hold z-depth along the optical axis
(0 = unknown). Every random choice takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import InputError
from .gaussians import num_sh_bases, rgb_to_sh
from .geometry import knn_distances, unproject_depth
from .scene import Bounds, PointCloud, Scene, View

__all__ = ["unproject_valid_depth", "points_from_depth", "random_points", "initial_points", "splats_from_points"]


def unproject_valid_depth(depth: Tensor, K: Tensor, c2w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """World points of the valid pixels of a z-depth map (:func:`recon_core.geometry.unproject_depth`).

    Args:
        depth: (H, W) float z-depth along the optical axis; 0 or non-finite = no point.
        K: (3, 3) intrinsics, pixel centres at i + 0.5.
        c2w: (4, 4) OpenCV camera-to-world.
        mask: optional (H, W) bool; only True pixels give points.

    Returns:
        points [P, 3] float32 world coordinates and pixel_index [P] int64 (row-major v * W + u).
    """
    valid = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        valid &= mask.to(torch.bool)
    idx = torch.nonzero(valid.reshape(-1), as_tuple=False)[:, 0]
    world = unproject_depth(depth.double(), K.double(), c2w.double()).reshape(-1, 3)[idx]
    return world.float(), idx


def _foreground(view: View) -> Tensor | None:
    """Pixels belonging to the scene content: object mask, else alpha > 0.5, else None (all)."""
    if view.has("object_mask"):
        return view.object_mask.to(torch.bool)
    if view.has("alpha"):
        return view.alpha > 0.5
    return None


def points_from_depth(views: Sequence[View], max_points: int, generator: torch.Generator) -> PointCloud:
    """Unproject the depth maps of ``views`` (foreground pixels only) into a coloured point cloud.

    Each view contributes at most ``ceil(max_points / len(views_with_depth))`` points, drawn
    uniformly without replacement; colours are the pixels' image colours.
    """
    with_depth = [v for v in views if v.has("depth")]
    if not with_depth:
        raise InputError("depth initialisation needs views with depth maps, and none of the training views has one")
    per_view = -(-max_points // len(with_depth))
    points, colors = [], []
    for view in with_depth:
        depth = view.depth
        if depth.shape != (view.height, view.width):
            raise InputError(f"depth map is {tuple(depth.shape)}, expected {(view.height, view.width)}", view.path)
        pts, idx = unproject_valid_depth(depth.float(), view.camera.K[0], view.camera.c2w[0], _foreground(view))
        if len(idx) > per_view:
            keep = torch.randperm(len(idx), generator=generator)[:per_view]
            pts, idx = pts[keep], idx[keep]
        points.append(pts)
        colors.append(view.image.reshape(-1, 3)[idx].float())
    pts, cols = torch.cat(points), torch.cat(colors)
    if len(pts) == 0:
        raise InputError("the depth maps hold no valid foreground depth (all zero or masked out)")
    return PointCloud(points=pts, colors=cols.clamp(0, 1))


def random_points(bounds: Bounds, n: int, generator: torch.Generator) -> PointCloud:
    """``n`` points uniform in the bounding sphere, with uniform random colours."""
    direction = torch.randn(n, 3, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    radius = bounds.radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    points = bounds.center.float().cpu() + direction * radius
    return PointCloud(points=points, colors=torch.rand(n, 3, generator=generator))


def initial_points(scene: Scene, method: str, num_points: int, generator: torch.Generator) -> tuple[PointCloud, str]:
    """Pick the starting point cloud by ``method`` (auto|points|depth|random); returns it and the method used.

    ``auto`` prefers the scene's point cloud, then depth maps of the training views, then random.
    ``points`` subsamples the scene's cloud to ``num_points`` when it is larger.
    """
    train = scene.train_views or scene.views
    if method == "auto":
        if scene.point_cloud is not None and len(scene.point_cloud) > 0:
            method = "points"
        elif any(v.has("depth") for v in train):
            method = "depth"
        else:
            method = "random"
    if method == "points":
        pc = scene.point_cloud
        if pc is None or len(pc) == 0:
            raise InputError("init=points needs a point cloud (COLMAP points3D or ply_file_path), and the scene has none", scene.source)
        if len(pc) > num_points:
            keep = torch.randperm(len(pc), generator=generator)[:num_points]
            pc = PointCloud(pc.points[keep], None if pc.colors is None else pc.colors[keep])
        if pc.colors is None:
            pc = PointCloud(pc.points, torch.full((len(pc), 3), 0.5))
        return PointCloud(pc.points.float().cpu(), pc.colors.float().cpu()), method
    if method == "depth":
        return points_from_depth(train, num_points, generator), method
    if method == "random":
        return random_points(scene.bounds, num_points, generator), method
    raise InputError(f"unknown init '{method}': use auto, points, depth or random")


def splats_from_points(pc: PointCloud, opacity: float, sh_degree: int, generator: torch.Generator,
                       scales: Tensor | None = None, scale_factor: float = 1.0) -> dict[str, Tensor]:
    """Raw splats of one isotropic Gaussian per point: the point's colour as SH DC, ``opacity``
    everywhere, a random rotation (gsplat's habit) and scale ``scale_factor x scales`` [P] (world
    units; default: the mean distance to the 3 nearest neighbours, as 3DGS, at least 1e-7)."""
    n = len(pc)
    if scales is None:
        scales = knn_distances(pc.points.float(), 3).clamp_min(1e-7)
    scales = scales * float(scale_factor)
    colors = pc.colors if pc.colors is not None else torch.full((n, 3), 0.5)
    quats = torch.rand(n, 4, generator=generator)
    return {
        "means": pc.points.float(),
        "quats": quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12),
        "scales": torch.log(scales.float().clamp_min(1e-12))[:, None].repeat(1, 3),
        "opacities": torch.full((n,), float(torch.logit(torch.tensor(float(opacity))))),
        "sh0": rgb_to_sh(colors.float())[:, None, :],
        "shN": torch.zeros(n, num_sh_bases(sh_degree) - 1, 3),
    }
