"""The ``render-fix`` generator: extra views along a camera path between the inputs (ReconX stage 2).

ReconX generates the in-between frames with a video diffusion model conditioned on the global
point cloud. ``render-fix`` produces them without one:

1. **path** (:func:`camera_path`): the input cameras are ordered by azimuth around their common
   look-at point (the least-squares intersection of their optical axes) and ``num_views`` cameras
   are spread over the segments between neighbours (a closed loop with ``closed``), in proportion
   to each segment's angle. ``orbit``: the camera centre moves on the sphere around the look-at
   point (direction slerped, distance interpolated) and looks at it, its "up" interpolated from the
   two inputs'; ``linear``: centres interpolated linearly, rotations slerped.
2. **render** the current reconstruction at each camera (the run's renderer, the representation's
   background).
3. **fix**: with ``fix=auto`` the run's fixer when it has one (``--fixer difix``; each render gets
   its nearest input image as reference), else ``none``: the render is kept. ``reproject`` (opt-in)
   reprojects every rendered surface pixel (rendered depth) into the input views and, where an
   input view sees the same surface (depth test), replaces the render by its colour (the
   best-agreeing view's). On ``split_sparse3`` these copies of the inputs carry no new information
   and their resampling noise cost 0.3-0.6 dB of test PSNR at 1000 steps (docs/benchmarks.md), hence
   the default.
4. **confidence** (:func:`recon_plugins.reconx.confidence.consistency_map`): photometric agreement
   of the final image with the input views that see the same surface; ``unseen`` where no input
   sees it (including empty pixels: the background no input confirms).
5. **free space** (``free_space``): pixels whose ray crosses only space the inputs prove empty
   (outside a silhouette or in front of an observed depth, :mod:`.carving`) become the background
   with confidence 1.

Views are named ``gen-0000`` …; the scene and the representation are not modified; the result
depends only on its inputs (no randomness).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from recon_core.cameras import Cameras
from recon_core.components import Generator, RunContext, Representation
from recon_core.config import option
from recon_core.errors import InputError
from recon_core.gaussians import GaussianRepresentation
from recon_core.geometry import slerp, slerp_rotmat
from recon_core.scene import Scene, View

from .carving import carve, view_mask
from .confidence import ConsistencySettings, consistency_map

__all__ = ["RenderFixGenerator", "RenderFixConfig", "look_at_point", "camera_path"]


@dataclass
class RenderFixConfig:
    num_views: int = option(12, "how many views to generate along the path", min=1)
    path: str = option("orbit", "camera path: orbit (around the look-at point) or linear", choices=("orbit", "linear"))
    closed: bool = option(True, "also interpolate between the last and the first input (a loop, for 360° captures)")
    fix: str = option("auto", "auto (the run's fixer, else none), fixer, reproject (observed colours replace the "
                              "render), none (the render itself, weighted by its consistency with the inputs)",
                      choices=("auto", "fixer", "reproject", "none"))
    depth_tolerance: float = option(0.03, "relative depth difference still counted as the same surface", min=0)
    color_sigma: float = option(0.1, "colour difference scale of the photometric agreement", min=1e-12)
    unseen: float = option(0.3, "confidence of pixels no input view sees", min=0, max=1)
    free_space: bool = option(True, "pixels whose ray crosses only space the inputs show empty (outside their "
                                    "silhouettes or in front of their depth, carving.py) become background, confidence 1")
    carve_resolution: int = option(128, "free_space: voxels along the longest side of the carved box", min=2)


def look_at_point(c2w: Tensor, fallback: Tensor) -> Tensor:
    """The point closest (least squares) to every camera's optical axis; ``fallback`` [3] when the
    axes are (nearly) parallel. c2w [N, 4, 4] OpenCV (the axis is the camera's +z)."""
    c = c2w[:, :3, 3].double()
    d = torch.nn.functional.normalize(c2w[:, :3, 2].double(), dim=-1)
    proj = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # [N, 3, 3]
    A, b = proj.sum(0), (proj @ c[:, :, None]).sum(0)[:, 0]
    if len(c2w) < 2 or torch.linalg.cond(A) > 1e6:
        return fallback.double()
    return torch.linalg.solve(A, b)


def camera_path(cameras: Cameras, n: int, pivot: Tensor, mode: str = "orbit", closed: bool = True) -> Cameras:
    """``n`` cameras between the input ``cameras`` (see the module docstring), intrinsics and size of
    the nearer input of each segment. Returns float32 Cameras (OpenCV camera-to-world)."""
    m = len(cameras)
    if m < 2 or n < 1:
        raise InputError("a camera path needs at least two input cameras and one view to generate")
    c2w = cameras.c2w.double()
    pivot = pivot.double()
    offsets = c2w[:, :3, 3] - pivot
    up = torch.nn.functional.normalize(-c2w[:, :3, 1].mean(0), dim=0)
    a = torch.nn.functional.normalize(offsets[0] - (offsets[0] @ up) * up, dim=0)
    b = torch.linalg.cross(up, a)
    azimuth = torch.atan2(offsets @ b, offsets @ a)
    order = torch.argsort(azimuth).tolist()
    segments = [(order[i], order[i + 1]) for i in range(m - 1)] + ([(order[-1], order[0])] if closed and m > 2 else [])
    dirs = torch.nn.functional.normalize(offsets, dim=-1)
    angles = np.array([float(torch.arccos(torch.clamp(dirs[i] @ dirs[j], -1, 1))) + 1e-9 for i, j in segments])
    counts = np.floor(n * angles / angles.sum()).astype(int)
    for k in np.argsort(-(n * angles / angles.sum() - counts))[: n - counts.sum()]:  # largest remainders
        counts[k] += 1
    poses, Ks, sizes = [], [], []
    for (i, j), count in zip(segments, counts):
        if count == 0:
            continue
        ri, rj = offsets[i].norm(), offsets[j].norm()
        for step in range(count):
            t = (step + 1) / (count + 1)
            pose = torch.eye(4, dtype=torch.float64)
            if mode == "orbit":
                pos = pivot + slerp(dirs[i], dirs[j], t, shortest=False) * ((1 - t) * ri + t * rj)
                forward = torch.nn.functional.normalize(pivot - pos, dim=0)
                down = (1 - t) * c2w[i, :3, 1] + t * c2w[j, :3, 1]
                right = torch.nn.functional.normalize(torch.linalg.cross(down, forward), dim=0)
                down = torch.linalg.cross(forward, right)
                pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, pos
            elif mode == "linear":
                pose[:3, :3] = slerp_rotmat(c2w[i, :3, :3], c2w[j, :3, :3], t)
                pose[:3, 3] = (1 - t) * c2w[i, :3, 3] + t * c2w[j, :3, 3]
            else:
                raise InputError(f"unknown camera path '{mode}' (orbit or linear)")
            near = i if t <= 0.5 else j
            poses.append(pose)
            Ks.append(cameras.K[near].double())
            sizes.append((int(cameras.width[near]), int(cameras.height[near])))
    return Cameras.create(torch.stack(Ks).float(), torch.stack(poses).float(), [w for w, _ in sizes], [h for _, h in sizes])


class RenderFixGenerator(Generator):
    """Views along a path between the inputs: render the current model, fix, score by consistency."""

    name = "render-fix"
    description = "ReconX-style extra views without a diffusion model: render, fix (fixer or reprojection), consistency confidence"
    Config = RenderFixConfig
    requires = frozenset({"gaussians-3d"})

    def generate(self, rep: Representation, scene: Scene, ctx: RunContext) -> list[View]:
        cfg = self.config
        inputs = scene.train_views or list(scene.views)
        if len(inputs) < 2:
            raise InputError("render-fix needs at least two input views to generate views between them", scene.source)
        input_cams = scene.cameras(inputs)
        fallback = scene.point_cloud.points.mean(0) if scene.point_cloud is not None and len(scene.point_cloud) else scene.bounds.center
        pivot = look_at_point(input_cams.c2w, fallback.cpu())
        cams = camera_path(input_cams, int(cfg.num_views), pivot, cfg.path, cfg.closed)
        mode = cfg.fix if cfg.fix != "auto" else ("fixer" if ctx.fixer is not None else "none")
        if mode == "fixer" and ctx.fixer is None:
            raise InputError("render-fix.fix=fixer needs a fixer in the run (e.g. --fixer difix)")
        settings = ConsistencySettings(cfg.depth_tolerance, cfg.color_sigma, cfg.unseen)
        bg = ctx.background_color().cpu()

        volume = None
        if cfg.free_space and any(view_mask(v) is not None for v in inputs):
            box = _box_points(rep, scene)
            if box is not None and len(box):
                low, high = box.min(0).values, box.max(0).values
                pad = 0.05 * float((high - low).norm())
                volume = carve(inputs, low - pad, high + pad, int(cfg.carve_resolution), float(cfg.depth_tolerance))
        with torch.no_grad():
            others = []
            for v in inputs:  # input colours over the same background, with the model's depth
                out = ctx.renderer.render(rep, v.camera.to(ctx.device), background=bg.to(ctx.device))
                others.append((_surface_depth(out.depth[0], out.alpha[0]), v.image_on(bg), v.camera.K[0], v.camera.c2w[0]))
            views = []
            for k in range(len(cams)):
                cam = cams[k]
                out = ctx.renderer.render(rep, cam.to(ctx.device), background=bg.to(ctx.device))
                if out.depth is None or out.alpha is None:
                    raise InputError(f"render-fix needs depth and alpha from the renderer; {ctx.renderer.name} gives none")
                image = out.rgb[0].detach().float().clamp(0, 1).cpu()
                depth = _surface_depth(out.depth[0], out.alpha[0])
                if mode == "fixer":
                    ref = _nearest(inputs, cam)
                    image = ctx.fixer.fix(image[None].to(ctx.device), ref.image_on(bg)[None].to(ctx.device))[0]
                    image = image.detach().float().clamp(0, 1).cpu()
                conf, seen, color = consistency_map(depth, image, cam.K[0], cam.c2w[0], others, settings)
                if mode == "reproject":  # observed colours replace the render; they agree with their view
                    image = torch.where(seen[..., None], color, image)
                    conf = torch.where(seen, torch.ones_like(conf), conf)
                conf = torch.where(depth > 0, conf, torch.full_like(conf, cfg.unseen))
                if volume is not None:  # known empty space: the background, for certain
                    empty = ~volume.silhouette(cam)
                    image = torch.where(empty[..., None], bg.to(image), image)
                    conf = torch.where(empty, torch.ones_like(conf), conf)
                views.append(View(f"gen-{k:04d}", cam, image.contiguous(), "train", confidence=conf.contiguous()))
        return views


def _box_points(rep: Representation, scene: Scene) -> Tensor | None:
    """Points [P, 3] (CPU) whose box is carved: the Gaussians' means, else the scene's point cloud, else None."""
    if isinstance(rep, GaussianRepresentation) and len(rep):
        return rep.splats["means"].detach().float().cpu()
    return scene.point_cloud.points.float().cpu() if scene.point_cloud is not None else None


def _surface_depth(depth: Tensor, alpha: Tensor) -> Tensor:
    """(H, W) rendered z-depth where the render is mostly opaque (alpha > 0.5), else 0, on the CPU."""
    d = depth[..., 0].detach().float().cpu()
    return torch.where(alpha[..., 0].detach().cpu() > 0.5, d, torch.zeros_like(d))


def _nearest(views: Sequence[View], camera: Cameras) -> View:
    centre = camera.centers[0]
    return min(views, key=lambda v: float((v.camera.centers[0] - centre).norm()))
