"""Space carving of the sparse inputs: what their silhouettes and depth maps say about occupancy.

ReconX's video diffusion model invents the surfaces that no input view sees (the far side of an
object); the Gaussians that render them come from the point cloud of the generated frames. Without
such a model the inputs still *bound* those surfaces. A voxel grid over a box is classified:

``FREE``
    outside the object silhouette of some input view (the visual hull's complement; a voxel
    projecting outside an input image counts as outside, so the object is assumed to be inside
    every input frame), or in front of the surface an input view observed (its depth map, with
    ``depth_tolerance`` x depth of slack): known to be empty.
``SURFACE``
    within the tolerance of an observed depth and not free: the observed surface.
``UNKNOWN``
    the rest: inside every silhouette and behind every observation. The unseen surface lies in here;
    its outer boundary (unknown voxels next to free space, :meth:`CarvedVolume.shell`) is the
    largest surface consistent with the inputs.

Views without an object mask (or alpha) do not carve by silhouette; views without depth do not
carve by depth. Conventions: OpenCV camera-to-world, pixel centres at i + 0.5, z-depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recon_core.cameras import Cameras
from recon_core.errors import InputError
from recon_core.geometry import project_points
from recon_core.scene import View

__all__ = ["FREE", "SURFACE", "UNKNOWN", "CarvedVolume", "carve", "view_mask"]

FREE, SURFACE, UNKNOWN = 0, 1, 2


def view_mask(view: View) -> Tensor | None:
    """(H, W) bool object silhouette of a view: its object mask, else alpha > 0.5, else None."""
    if view.has("object_mask"):
        return view.object_mask.to(torch.bool).cpu()
    if view.has("alpha"):
        return (view.alpha > 0.5).cpu()
    return None


@dataclass(frozen=True)
class CarvedVolume:
    """A voxel grid classified as FREE / SURFACE / UNKNOWN (see the module docstring).

    origin: [3] float32 lower corner of the grid; voxel: edge length of a voxel (scene units);
    state: (X, Y, Z) int8, voxel (i, j, k) centred at ``origin + (i + 0.5, j + 0.5, k + 0.5) * voxel``.
    """

    origin: Tensor
    voxel: float
    state: Tensor

    def centers(self) -> Tensor:
        """(X, Y, Z, 3) float32 voxel centres."""
        axes = [self.origin[i] + (torch.arange(n, dtype=torch.float32) + 0.5) * self.voxel for i, n in enumerate(self.state.shape)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def shell(self) -> Tensor:
        """[S, 3] centres of the UNKNOWN voxels with a FREE 6-neighbour: the outer boundary of the
        volume no input sees (voxels outside the grid count as free)."""
        free = F.pad((self.state == FREE).float()[None, None], (1, 1, 1, 1, 1, 1), value=1.0)[0, 0].bool()
        X, Y, Z = self.state.shape
        touches = torch.zeros(X, Y, Z, dtype=torch.bool)
        for dx, dy, dz in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            touches |= free[1 + dx : 1 + dx + X, 1 + dy : 1 + dy + Y, 1 + dz : 1 + dz + Z]
        return self.centers()[(self.state == UNKNOWN) & touches]

    def silhouette(self, camera: Cameras) -> Tensor:
        """(H, W) bool: pixels of ``camera`` (one camera) onto which some non-free voxel projects.

        Voxel centres are splatted onto their pixel and the mask is dilated by the largest
        projected voxel radius, so it covers (slightly over-covers) the occupied volume's image.
        """
        h, w = camera.size(0)
        pts = self.centers()[self.state != FREE]
        mask = torch.zeros(h, w, dtype=torch.bool)
        if len(pts) == 0:
            return mask
        z, uv = _project(pts, camera.K[0], camera.c2w[0])
        ok = z > 1e-6
        z, uv = z[ok], uv[ok]
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        mask.view(-1)[v[inside] * w + u[inside]] = True
        if not bool(inside.any()):
            return mask
        focal = float(camera.K[0, :2, :2].diagonal().max())
        radius = math.ceil(focal * self.voxel * math.sqrt(3) / 2 / float(z[inside].min()))
        if radius > 0:
            mask = F.max_pool2d(mask.float()[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0].bool()
        return mask


def _project(points: Tensor, K: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """z-depth [P] and continuous pixel coordinates [P, 2] of world ``points`` [P, 3] in a camera."""
    w2c = torch.linalg.inv(c2w.double()).float().cpu()
    uv, z = project_points(points, K.float().cpu(), w2c, eps=1e-9)
    return z, uv


def carve(views: Sequence[View], low: Tensor, high: Tensor, resolution: int = 128, depth_tolerance: float = 0.02) -> CarvedVolume:
    """Classify a grid over the box ``low``..``high`` ([3] each) by the views' silhouettes and depth.

    Args:
        views: the input views (cameras, object masks / alpha, optional ``depth`` z-depth maps).
        low, high: corners of the box to carve (e.g. the global point cloud's, padded).
        resolution: voxels along the box's longest side (cubic voxels).
        depth_tolerance: relative depth difference counted as the observed surface.
    """
    if resolution < 2:
        raise InputError(f"carving resolution must be at least 2, got {resolution}")
    low, high = low.float().cpu(), high.float().cpu()
    span = high - low
    if not bool((span > 0).all()):
        raise InputError("carving needs a box of positive size (is the point cloud flat or empty?)")
    voxel = float(span.max()) / int(resolution)
    dims = [max(1, math.ceil(float(s) / voxel)) for s in span]
    volume = CarvedVolume(low, voxel, torch.full(dims, UNKNOWN, dtype=torch.int8))
    pts = volume.centers().reshape(-1, 3)
    free = torch.zeros(len(pts), dtype=torch.bool)
    near = torch.zeros(len(pts), dtype=torch.bool)
    for view in views:
        mask = view_mask(view)
        depth = view.depth.float().cpu() if view.has("depth") else None
        if mask is None and depth is None:
            continue
        z, uv = _project(pts, view.camera.K[0], view.camera.c2w[0])
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (z > 0) & (u >= 0) & (u < view.width) & (v >= 0) & (v < view.height)
        u, v = u.clamp(0, view.width - 1), v.clamp(0, view.height - 1)
        if mask is not None:
            inside &= mask[v, u]
            free |= ~inside
        if depth is not None:
            d = depth[v, u]
            seen = inside & torch.isfinite(d) & (d > 0)
            free |= seen & (z < d * (1.0 - depth_tolerance))
            near |= seen & ((z - d).abs() <= d * depth_tolerance)
    state = torch.full((len(pts),), UNKNOWN, dtype=torch.int8)
    state[near] = SURFACE
    state[free] = FREE
    return CarvedVolume(low, voxel, state.reshape(dims))
