"""Where 3D Gaussians start: point clouds, unprojected depth maps, triangulated features, random
points; their first splats.

Conventions (docs/conventions.md): cameras are OpenCV camera-to-world, intrinsics K have pixel
centres at i + 0.5, so pixel (u, v) (column u, row v) has its centre at (u + 0.5, v + 0.5) and
unprojects along ``K^-1 [u + 0.5, v + 0.5, 1]``. Depth maps hold z-depth along the optical axis
(0 = unknown). Every random choice takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import InputError
from .gaussians import num_sh_bases, rgb_to_sh
from .geometry import knn_distances, unproject_depth
from .scene import Bounds, PointCloud, Scene, View

__all__ = [
    "subsample_points",
    "unproject_valid_depth",
    "points_from_depth",
    "triangulated_points",
    "can_triangulate",
    "random_points",
    "initial_points",
    "splats_from_points",
    "INIT_METHODS",
]

INIT_METHODS = ("auto", "points", "depth", "triangulate", "random")
"""Methods of :func:`initial_points`."""


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


def subsample_points(pc: PointCloud, max_points: int, generator: torch.Generator) -> PointCloud:
    """At most ``max_points`` of ``pc``, chosen at random with ``generator`` (all when fewer)."""
    if len(pc) <= max_points:
        return pc
    keep = torch.randperm(len(pc), generator=generator)[:max_points]
    return PointCloud(pc.points[keep], None if pc.colors is None else pc.colors[keep])


def can_triangulate(views: Sequence[View]) -> str | None:
    """Why :func:`triangulated_points` cannot run on ``views`` (None: it can)."""
    try:
        import pycolmap  # noqa: F401
    except ImportError:
        return "pycolmap is not installed (pip install pycolmap)"
    if len(views) < 2:
        return f"triangulation needs at least 2 posed views, the scene has {len(views)}"
    return None


def triangulated_points(views: Sequence[View], max_points: int, generator: torch.Generator, *,
                        max_features: int = 8192, max_reproj_error: float = 4.0) -> PointCloud:
    """Points triangulated from the views' images with their *known* cameras (pycolmap).

    SIFT features of every view, exhaustive matching, then ``pycolmap.triangulate_points`` on a
    reconstruction holding the given intrinsics (PINHOLE from ``K``; distortion is not modelled)
    and poses: no pose is estimated, so the points are in the views' world frame. Colours are the
    mean colour of each point's observations.

    Args:
        views: >= 2 views with images and cameras (OpenCV c2w, K with pixel centres at i + 0.5,
            which is COLMAP's convention too).
        max_points: at most this many points are returned (uniform subsample with ``generator``).
        max_features: SIFT features per image.
        max_reproj_error: pixels; observations further from their point are filtered out.
    Returns:
        float32 CPU points [P, 3] and colours [P, 3] in [0, 1]. Raises InputError when pycolmap is
        missing, fewer than 2 views are given, or no point could be triangulated.
    """
    reason = can_triangulate(views)
    if reason is not None:
        raise InputError(reason)
    import pycolmap
    from PIL import Image

    from .progress import progress_bar

    tmp = Path(tempfile.mkdtemp(prefix="recon-triangulate-"))
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # warnings and errors only
    try:
        with progress_bar("triangulating (features, matching, points)", len(views) + 2) as advance:
            image_dir = tmp / "images"
            image_dir.mkdir()
            names = []
            for i, v in enumerate(views):
                name = f"{i:05d}.png"
                arr = (v.image.float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
                Image.fromarray(arr).save(image_dir / name)
                names.append(name)
                advance()
            db = tmp / "database.db"
            extraction = pycolmap.FeatureExtractionOptions()
            extraction.sift.max_num_features = int(max_features)
            pycolmap.extract_features(db, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                                      extraction_options=extraction, device=pycolmap.Device.cpu)
            pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
            advance()
            rec = _known_pose_reconstruction(pycolmap, db, views, names)
            out = tmp / "sparse"
            out.mkdir()
            options = pycolmap.IncrementalPipelineOptions()
            options.mapper.filter_max_reproj_error = float(max_reproj_error)
            rec = pycolmap.triangulate_points(rec, db, image_dir, out, options=options)
            advance()
            pts = [(p.xyz, p.color) for p in rec.points3D.values()]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pycolmap reports failures as assorted exception types
        raise InputError(f"pycolmap triangulation of the posed views failed ({type(e).__name__}: {e})") from None
    finally:
        pycolmap.logging.minloglevel = previous_level
        shutil.rmtree(tmp, ignore_errors=True)
    if not pts:
        raise InputError(f"pycolmap triangulated no point from the {len(views)} posed views (too few feature matches: "
                         "untextured images, or views too far apart)")
    points = torch.tensor(np.stack([p for p, _ in pts]), dtype=torch.float32)
    colors = torch.tensor(np.stack([c for _, c in pts]), dtype=torch.float32) / 255.0
    return subsample_points(PointCloud(points, colors), max_points, generator)


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
            K = view_of[image.image_id].camera.K[0].double().cpu().numpy()
            cam.model = pycolmap.CameraModelId.PINHOLE
            cam.params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]  # COLMAP pixel centres are at i + 0.5 too
            database.update_camera(cam)
            rec.add_camera(cam)
        for rig in database.read_all_rigs():
            rec.add_rig(rig)
        frames = database.read_all_frames()
        for frame in frames:
            image = next(im for im in images.values() if im.frame_id == frame.frame_id)
            w2c = np.linalg.inv(view_of[image.image_id].camera.c2w[0].double().cpu().numpy())
            frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3])
            rec.add_frame(frame)
        for image in images.values():
            rec.add_image(image)
        for frame in frames:
            rec.register_frame(frame.frame_id)
        return rec
    finally:
        database.close()


def random_points(bounds: Bounds, n: int, generator: torch.Generator) -> PointCloud:
    """``n`` points uniform in the bounding sphere, with uniform random colours."""
    direction = torch.randn(n, 3, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    radius = bounds.radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    points = bounds.center.float().cpu() + direction * radius
    return PointCloud(points=points, colors=torch.rand(n, 3, generator=generator))


def initial_points(scene: Scene, method: str, num_points: int, generator: torch.Generator,
                   log: Callable[[str], None] | None = None) -> tuple[PointCloud, str]:
    """Pick the starting point cloud by ``method`` (auto|points|depth|triangulate|random); returns it
    and the method used.

    ``auto`` takes the scene's point cloud, else the training views' depth maps, else points
    triangulated from the training views with their known poses (when pycolmap is importable and
    there are >= 2 training views; a failed triangulation falls back), else random points.
    ``log`` gets one line saying which was used and why. ``points`` subsamples the scene's cloud to
    ``num_points`` when it is larger.
    """
    say = log if log is not None else (lambda line: None)
    train = scene.train_views or scene.views
    if method == "auto":
        if scene.point_cloud is not None and len(scene.point_cloud) > 0:
            method = "points"
            say(f"init: the scene's point cloud ({len(scene.point_cloud)} points)")
        elif any(v.has("depth") for v in train):
            method = "depth"
            say("init: unprojected depth maps (the scene has no point cloud)")
        else:
            reason = can_triangulate(train) if scene.poses_known else "the scene's poses are not known"
            if reason is None:
                try:
                    pc = triangulated_points(train, num_points, generator)
                except InputError as e:
                    reason = str(e)
                else:
                    say(f"init: {len(pc)} points triangulated from {len(train)} posed training views "
                        "(the scene has no point cloud and no depth maps)")
                    return pc, "triangulate"
            say(f"init: {num_points} random points in the scene bounds — no point cloud, no depth maps, "
                f"and no triangulation: {reason}")
            method = "random"
    if method == "points":
        pc = scene.point_cloud
        if pc is None or len(pc) == 0:
            raise InputError("init=points needs a point cloud (COLMAP points3D or ply_file_path), and the scene has none", scene.source)
        pc = subsample_points(pc, num_points, generator)
        if pc.colors is None:
            pc = PointCloud(pc.points, torch.full((len(pc), 3), 0.5))
        return PointCloud(pc.points.float().cpu(), pc.colors.float().cpu()), method
    if method == "depth":
        return points_from_depth(train, num_points, generator), method
    if method == "triangulate":
        return triangulated_points(train, num_points, generator), method
    if method == "random":
        return random_points(scene.bounds, num_points, generator), method
    raise InputError(f"unknown init '{method}': use {', '.join(INIT_METHODS)}")


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
