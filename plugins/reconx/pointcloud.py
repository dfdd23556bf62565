"""Global point cloud of a sparse set of posed views (ReconX stage 1; DUSt3R's role in the paper).

Sources (the ``reconx`` representation's ``pointcloud`` option), each a function
``(views, max_points, generator, settings) -> PointCloud`` in :data:`POINT_CLOUD_SOURCES`:

``depth``
    unproject the views' depth maps (``View.depth``, e.g. from a depth sensor or a loader field)
    with the known poses; foreground pixels only (object mask / alpha when present).
``triangulate``
    pycolmap: SIFT features of the sparse images, exhaustive matching, then triangulation with the
    *known* poses and intrinsics (``pycolmap.triangulate_points``; no pose estimation): the core's
    :func:`recon_core.points.triangulated_points`, the one implementation.
``dggt``
    the run's ``dggt`` representation (created through the run, so ``--set dggt.KEY=VALUE``
    applies, e.g. ``dggt.checkpoint``), built on copies of the views: the centres and colours of
    its static Gaussians, moved from its predicted frame into the scene's by the similarity that
    maps the predicted input poses onto the known ones (:func:`recon_core.geometry.camera_similarity`).
    Needs the published checkpoint; without it a MissingWeightsError names the file and where it
    is expected.
``auto``
    ``depth`` when every view has a depth map, else ``triangulate``.

:func:`complete_points` adds what no input sees: points on the outer boundary of the volume that
space carving (:mod:`.carving`) leaves unknown, coloured like their nearest observed points.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from recon_core import Bounds, Cameras, InputError, RunContext, Scene
from recon_core.gaussians import GaussianRepresentation, sh_to_rgb
from recon_core.geometry import apply_similarity, camera_similarity
from recon_core.points import points_from_depth, subsample_points
from recon_core.points import triangulated_points as core_triangulated_points
from recon_core.scene import PointCloud, View

from .carving import CarvedVolume

__all__ = [
    "PointCloudSettings",
    "POINT_CLOUD_SOURCES",
    "global_point_cloud",
    "depth_points",
    "triangulated_points",
    "dggt_points",
    "complete_points",
]


@dataclass(frozen=True)
class PointCloudSettings:
    """What the sources share: the run's context (``dggt`` builds a representation through it)."""

    ctx: RunContext | None = None


def depth_points(views: Sequence[View], max_points: int, generator: torch.Generator, settings: PointCloudSettings) -> PointCloud:
    """Unprojected depth maps of ``views`` with their known poses (see :func:`points_from_depth`)."""
    return points_from_depth(views, max_points, generator)


def triangulated_points(views: Sequence[View], max_points: int, generator: torch.Generator, settings: PointCloudSettings) -> PointCloud:
    """SIFT + exhaustive matching + triangulation with the known cameras: the core's
    :func:`recon_core.points.triangulated_points` (pycolmap)."""
    try:
        return core_triangulated_points(views, max_points, generator)
    except InputError as e:
        raise InputError(f"pointcloud=triangulate: {e}; use pointcloud=depth or pointcloud=dggt") from None


def dggt_points(views: Sequence[View], max_points: int, generator: torch.Generator, settings: PointCloudSettings) -> PointCloud:
    """The static Gaussians of the run's ``dggt`` representation, in the views' frame (module doc)."""
    ctx = settings.ctx
    if ctx is None or ctx.create is None:
        raise InputError("pointcloud=dggt needs a run context that can create the dggt representation")
    rep = ctx.create("representation", "dggt")
    if not isinstance(rep, GaussianRepresentation):
        raise InputError("pointcloud=dggt: the installed 'dggt' is not a Gaussian representation with cameras")
    copies = [copy.copy(v) for v in views]  # dggt writes its predicted cameras into the views it is given
    rep.build(Scene("reconx-inputs", copies, Bounds.from_cameras(Cameras.cat([v.camera for v in copies]))), ctx)
    with torch.no_grad():
        g = rep.gaussians(None)
        predicted = rep.cameras()
        if predicted is None or len(predicted) != len(views):
            raise InputError("pointcloud=dggt: the dggt representation returned no camera per input view")
        given = torch.stack([v.camera.c2w[0] for v in views]).float()
        R, t, s = camera_similarity(predicted.c2w.float().cpu(), given)
        points = apply_similarity(g.means.float().cpu(), R, t, s)
        colors = sh_to_rgb(g.sh[:, 0].float().cpu()).clamp(0, 1)
    return subsample_points(PointCloud(points, colors), max_points, generator)


def _auto(views: Sequence[View], max_points: int, generator: torch.Generator, settings: PointCloudSettings) -> PointCloud:
    if all(v.has("depth") for v in views):
        return depth_points(views, max_points, generator, settings)
    return triangulated_points(views, max_points, generator, settings)


PointCloudSource = Callable[[Sequence[View], int, torch.Generator, PointCloudSettings], PointCloud]

POINT_CLOUD_SOURCES: dict[str, PointCloudSource] = {
    "auto": _auto,
    "depth": depth_points,
    "triangulate": triangulated_points,
    "dggt": dggt_points,
}
"""Global point-cloud sources by name (add one by inserting a function here)."""


def global_point_cloud(views: Sequence[View], source: str, max_points: int, generator: torch.Generator,
                       settings: PointCloudSettings = PointCloudSettings()) -> PointCloud:
    """The global point cloud of ``views`` from ``source`` (float32 points and colours on the CPU)."""
    if source not in POINT_CLOUD_SOURCES:
        raise InputError(f"unknown point-cloud source '{source}'; known: {', '.join(POINT_CLOUD_SOURCES)}")
    pc = POINT_CLOUD_SOURCES[source](views, max_points, generator, settings)
    colors = pc.colors if pc.colors is not None else torch.full((len(pc), 3), 0.5)
    return PointCloud(pc.points.float().cpu(), colors.float().cpu())


def complete_points(pc: PointCloud, volume: CarvedVolume, generator: torch.Generator, neighbours: int = 8) -> PointCloud:
    """Points for the surface no input sees (ReconX gets it from its generated frames).

    One point per voxel of ``volume.shell()`` (the boundary of the unobserved volume), placed
    uniformly at random inside its voxel, coloured with the mean colour of its ``neighbours``
    nearest points of ``pc`` (the observed surface): a conservative surface and a smooth guess of
    its colour. Returns only the new points (float32, CPU).
    """
    shell = volume.shell()
    if len(shell) == 0 or len(pc) == 0:
        return PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    points = shell + (torch.rand(shell.shape, generator=generator) - 0.5) * volume.voxel
    observed = pc.points.float().cpu()
    colors = pc.colors.float().cpu() if pc.colors is not None else torch.full((len(pc), 3), 0.5)
    k = min(int(neighbours), len(observed))
    out = []
    for chunk in points.split(4096):  # bounded memory: a 4096 x P distance matrix at a time
        idx = torch.cdist(chunk, observed).topk(k, largest=False).indices
        out.append(colors[idx].mean(1))
    return PointCloud(points, torch.cat(out))
