"""Global point cloud of a sparse set of posed views (ReconX stage 1; DUSt3R's role in the paper).

Sources (the ``reconx`` representation's ``pointcloud`` option), each a function
``(views, max_points, generator, settings) -> PointCloud`` in :data:`POINT_CLOUD_SOURCES`:

``depth``
    unproject the views' depth maps (``View.depth``, e.g. from a depth sensor or a loader field)
    with the known poses; foreground pixels only (object mask / alpha when present).
``triangulate``
    pycolmap: SIFT features of the sparse images, exhaustive matching, then triangulation with the
    *known* poses and intrinsics (``pycolmap.triangulate_points``; no pose estimation).
``dggt``
    the ``dggt`` network's depth and camera heads: predicted per-pixel depth, unprojected with the
    predicted cameras, then moved into the scene's frame by the similarity mapping the predicted
    input poses onto the known ones. Needs the published checkpoint; without it a
    MissingWeightsError names the file and where it is expected.
``auto``
    ``depth`` when every view has a depth map, else ``triangulate``.

:func:`complete_points` adds what no input sees: points on the outer boundary of the volume that
space carving (:mod:`.carving`) leaves unknown, coloured like their nearest observed points.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from recon_core.errors import InputError, MissingWeightsError
from recon_core.scene import PointCloud, View
from recon_core.geometry import unproject_depth
from recon_plugins.gaussians.init import points_from_depth

from .carving import CarvedVolume

__all__ = [
    "PointCloudSettings",
    "POINT_CLOUD_SOURCES",
    "global_point_cloud",
    "depth_points",
    "triangulated_points",
    "dggt_points",
    "points_from_network",
    "complete_points",
]


@dataclass(frozen=True)
class PointCloudSettings:
    """Options shared by the sources (the representation forwards its own).

    dggt_checkpoint: path of the DGGT checkpoint (None: its default location).
    dggt_min_confidence: keep DGGT depth pixels whose confidence is at least this quantile (0-1).
    device: where networks run.
    """

    dggt_checkpoint: str | None = None
    dggt_min_confidence: float = 0.3
    device: str = "cpu"


def depth_points(views: Sequence[View], max_points: int, generator: torch.Generator, settings: PointCloudSettings) -> PointCloud:
    """Unprojected depth maps of ``views`` with their known poses (see :func:`points_from_depth`)."""
    return points_from_depth(views, max_points, generator)


def _subsample(pc: PointCloud, max_points: int, generator: torch.Generator) -> PointCloud:
    if len(pc) <= max_points:
        return pc
    keep = torch.randperm(len(pc), generator=generator)[:max_points]
    return PointCloud(pc.points[keep], None if pc.colors is None else pc.colors[keep])


def triangulated_points(views: Sequence[View], max_points: int, generator: torch.Generator, settings: PointCloudSettings) -> PointCloud:
    """SIFT + exhaustive matching + triangulation with the known cameras (pycolmap)."""
    try:
        import pycolmap
    except ImportError:
        raise InputError("pointcloud=triangulate needs pycolmap (pip install pycolmap)") from None
    from PIL import Image

    if len(views) < 2:
        raise InputError("triangulation needs at least two views")
    tmp = Path(tempfile.mkdtemp(prefix="reconx-tri-"))
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # warnings and errors only
    try:
        image_dir = tmp / "images"
        image_dir.mkdir()
        names = []
        for i, v in enumerate(views):
            name = f"{i:04d}.png"
            arr = (v.image.float().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
            Image.fromarray(arr).save(image_dir / name)
            names.append(name)
        db = tmp / "database.db"
        pycolmap.extract_features(db, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                                  device=pycolmap.Device.cpu)
        pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
        rec = _known_pose_reconstruction(pycolmap, db, views, names)
        out = tmp / "sparse"
        out.mkdir()
        rec = pycolmap.triangulate_points(rec, db, image_dir, out)
        pts = [(p.xyz, p.color) for p in rec.points3D.values()]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pycolmap reports failures as assorted exception types
        raise InputError(f"pycolmap triangulation of the sparse views failed ({type(e).__name__}: {e}); "
                         f"use pointcloud=depth or pointcloud=dggt") from None
    finally:
        pycolmap.logging.minloglevel = previous_level
        shutil.rmtree(tmp, ignore_errors=True)
    if not pts:
        raise InputError("pycolmap triangulated no point from the sparse views (too few matches between widely spaced "
                         "views); use pointcloud=depth or pointcloud=dggt")
    points = torch.tensor(np.stack([p for p, _ in pts]), dtype=torch.float32)
    colors = torch.tensor(np.stack([c for _, c in pts]), dtype=torch.float32) / 255.0
    return _subsample(PointCloud(points, colors), max_points, generator)


def _known_pose_reconstruction(pycolmap, db: Path, views: Sequence[View], names: list[str]):  # noqa: ANN001, ANN202
    """A pycolmap Reconstruction holding the views' known intrinsics (PINHOLE, written back into the
    database too, as triangulation requires) and poses (frames registered), with no points yet."""
    database = pycolmap.Database.open(db)
    try:
        rec = pycolmap.Reconstruction()
        images = {im.name: im for im in database.read_all_images()}
        view_of = {im.image_id: views[names.index(name)] for name, im in images.items()}
        for cam in database.read_all_cameras():
            image = next(im for im in images.values() if im.camera_id == cam.camera_id)
            K = view_of[image.image_id].camera.K[0].double().numpy()
            cam.model = pycolmap.CameraModelId.PINHOLE
            cam.params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]  # COLMAP pixel centres are at i + 0.5 too
            database.update_camera(cam)
            rec.add_camera(cam)
        for rig in database.read_all_rigs():
            rec.add_rig(rig)
        frames = database.read_all_frames()
        for frame in frames:
            image = next(im for im in images.values() if im.frame_id == frame.frame_id)
            w2c = np.linalg.inv(view_of[image.image_id].camera.c2w[0].double().numpy())
            frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3])
            rec.add_frame(frame)
        for image in images.values():
            rec.add_image(image)
        for frame in frames:
            rec.register_frame(frame.frame_id)
        return rec
    finally:
        database.close()


def dggt_points(views: Sequence[View], max_points: int, generator: torch.Generator, settings: PointCloudSettings) -> PointCloud:
    """Depth + camera heads of the DGGT network, aligned to the known poses (see module doc)."""
    from recon_plugins.dggt.weights import CHECKPOINT_FILENAME, CHECKPOINT_SOURCE, default_checkpoint_path, load_network

    path = Path(settings.dggt_checkpoint) if settings.dggt_checkpoint else default_checkpoint_path()
    if not path.is_file():
        raise MissingWeightsError("reconx pointcloud=dggt", CHECKPOINT_FILENAME, path, CHECKPOINT_SOURCE)
    device = torch.device(settings.device)
    net = load_network(path, "full", device)
    return points_from_network(net, views, max_points, generator, settings.dggt_min_confidence)


def points_from_network(net: torch.nn.Module, views: Sequence[View], max_points: int, generator: torch.Generator,
                        min_confidence: float = 0.3) -> PointCloud:
    """Run a DGGT network (any size) on ``views``; its depth, unprojected with its predicted cameras
    and moved into the views' frame (similarity of predicted onto known input poses)."""
    from recon_plugins.dggt.pose_encoding import extrinsics_to_c2w, pose_encoding_to_extri_intri
    from recon_plugins.dggt.preprocess import plan_resize, resize_images
    from recon_plugins.dggt.representation import align_points

    w0, h0 = views[0].width, views[0].height
    if any((v.width, v.height) != (w0, h0) for v in views):
        raise InputError("pointcloud=dggt needs views of one size")
    plan = plan_resize(w0, h0, target_width=min(518, math.ceil(w0 / 14) * 14))
    device = next(net.parameters()).device
    images = resize_images(torch.stack([v.image.float() for v in views]), plan).to(device)
    with torch.no_grad():
        out = net(images, heads=("depth",))
    hw = (plan.height, plan.width)
    extri, K = pose_encoding_to_extri_intri(out.pose_enc[0].float(), hw)
    c2w_pred = extrinsics_to_c2w(extri).cpu()
    depth = out.depth[0, ..., 0].float().cpu()
    conf = out.depth_conf[0].float().cpu()
    threshold = torch.quantile(conf.flatten(), float(min_confidence))
    pts, cols = [], []
    for s in range(len(views)):
        valid = torch.isfinite(depth[s]) & (depth[s] > 0) & (conf[s] >= threshold)
        pts.append(unproject_depth(depth[s].double(), K[s].cpu().double(), c2w_pred[s].double())[valid].float())
        cols.append(images[s].permute(1, 2, 0).cpu()[valid])
    given = torch.stack([v.camera.c2w[0] for v in views]).float()
    points = align_points(torch.cat(pts), c2w_pred, given)
    return _subsample(PointCloud(points.float(), torch.cat(cols).clamp(0, 1)), max_points, generator)


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
