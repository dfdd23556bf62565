"""COLMAP sparse models (``cameras``/``images``/``points3D``, binary or text) read with pycolmap.

Layouts accepted (``PATH`` given to ``recon run --data``):

* ``PATH/sparse/0/`` (or ``PATH/sparse/`` itself) holding the model, images in ``PATH/images/``;
* ``PATH`` itself a model folder; images then in ``PATH/../../images`` (for ``x/sparse/0``) or
  the folder named by the ``images`` option (relative to the dataset root).

Conventions (checked): COLMAP stores world-to-camera poses in the OpenCV camera frame
(x right, y down, z forward), so c2w = inverse(cam_from_world) with no axis flip. COLMAP's image
coordinates put the centre of the top-left pixel at (0.5, 0.5) (its SIFT keypoints are shifted by
+0.5), the same as recon's "pixel centres at i + 0.5", so cx, cy are used unchanged.
Supported camera models → K and OpenCV distortion (k1, k2, p1, p2):
SIMPLE_PINHOLE (f cx cy), PINHOLE (fx fy cx cy), SIMPLE_RADIAL (f cx cy k → k1=k),
RADIAL (f cx cy k1 k2), OPENCV (fx fy cx cy k1 k2 p1 p2). Others raise InputError. Distortion is
undone at load (:mod:`.undistort`): the views get a new pinhole K and no distortion.
A registered image whose file is missing is skipped with one warning (``strict=true``: an
InputError); every ``test_every``-th image by name is a test view (``common.hold_out_every``);
with ``downscale`` unset, images over 1600 px on the long side are downscaled with a warning.
EXIF orientation is not applied by default: COLMAP's cameras describe the pixels as stored.
The 3D points with their colours become :attr:`Scene.point_cloud`; bounds hold 97% of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon_core import Cameras, InputError, Loader, PointCloud, Scene, option

from .common import FrameSpec, bounds_from_points, build_views, hold_out_every, report_missing

__all__ = ["ColmapLoader", "ColmapModel", "find_model", "read_model", "camera_to_opencv"]

SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def _has_model(folder: Path) -> bool:
    return any((folder / f"cameras{s}").is_file() and (folder / f"images{s}").is_file() for s in (".bin", ".txt"))


def find_model(path: Path, model: str = "") -> tuple[Path, Path]:
    """(model folder, dataset root) for ``path``; ``model`` names the model folder explicitly."""
    path = Path(path)
    if model:
        m = Path(model) if Path(model).is_absolute() else path / model
        if not _has_model(m):
            raise InputError("no COLMAP model (cameras.bin/.txt and images.bin/.txt) in this folder", m)
        return m, path
    if _has_model(path):
        root = path.parent.parent if path.parent.name == "sparse" else (path.parent if path.name == "sparse" else path)
        return path, root
    for cand in (path / "sparse" / "0", path / "sparse", path / "colmap" / "sparse" / "0"):
        if _has_model(cand):
            return cand, path
    sub = sorted(p for p in (path / "sparse").glob("*") if p.is_dir() and _has_model(p)) if (path / "sparse").is_dir() else []
    if sub:
        return sub[0], path
    raise InputError("no COLMAP model found (looked in ., sparse/0, sparse, sparse/*)", path)


def camera_to_opencv(model: str, params: np.ndarray, where: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A COLMAP camera → (K (3, 3), OpenCV distortion (k1, k2, p1, p2) or None for pinholes)."""
    p = [float(x) for x in params]
    expected = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}
    if model not in expected:
        raise InputError(f"camera model {model} is not supported (supported: {', '.join(SUPPORTED_MODELS)})", where)
    if len(p) != expected[model]:
        raise InputError(f"camera model {model} needs {expected[model]} parameters, got {len(p)}", where)
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    else:
        fx, fy, cx, cy = p[:4]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    dist: np.ndarray | None
    if model == "SIMPLE_RADIAL":
        dist = np.array([p[3], 0.0, 0.0, 0.0])
    elif model == "RADIAL":
        dist = np.array([p[3], p[4], 0.0, 0.0])
    elif model == "OPENCV":
        dist = np.array(p[4:8])
    else:
        dist = None
    return K, dist


@dataclass
class ColmapImage:
    """A registered image: name (relative to the image folder), K, size (H, W), OpenCV c2w, distortion."""

    name: str
    K: np.ndarray
    size: tuple[int, int]
    c2w: np.ndarray
    distortion: np.ndarray | None


@dataclass
class ColmapModel:
    """A parsed model. points [P, 3] float64, colors [P, 3] uint8."""

    images: list[ColmapImage]
    points: np.ndarray
    colors: np.ndarray


def read_model(folder: Path) -> ColmapModel:
    """Read a COLMAP model with pycolmap (binary preferred when both exist), images sorted by name."""
    import pycolmap

    folder = Path(folder)
    rec = pycolmap.Reconstruction()
    try:
        rec.read(str(folder))
    except Exception as e:  # noqa: BLE001 - pycolmap raises RuntimeError/ValueError on bad files
        raise InputError(f"COLMAP model cannot be read ({type(e).__name__}: {str(e).strip()[:300]})", folder) from None
    images = []
    for image in rec.images.values():
        if not image.has_pose:
            continue
        cam = rec.cameras[image.camera_id]
        K, dist = camera_to_opencv(cam.model.name, np.asarray(cam.params), folder / "cameras")
        w2c = np.eye(4)
        w2c[:3, :] = np.asarray(image.cam_from_world().matrix())
        if not np.isfinite(w2c).all():
            raise InputError(f"image {image.name} has a non-finite pose", folder / "images")
        images.append(ColmapImage(image.name, K, (int(cam.height), int(cam.width)), np.linalg.inv(w2c), dist))
    if not images:
        raise InputError("COLMAP model has no registered images", folder)
    images.sort(key=lambda im: im.name)
    if rec.points3D:
        pts = np.stack([np.asarray(p.xyz, dtype=np.float64) for p in rec.points3D.values()])
        cols = np.stack([np.asarray(p.color, dtype=np.uint8) for p in rec.points3D.values()])
    else:
        pts, cols = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
    return ColmapModel(images, pts, cols)


@dataclass
class ColmapConfig:
    images: str = option("images", "image folder, relative to the dataset root")
    model: str = option("", "model folder relative to the dataset root (default: sparse/0, sparse or the path itself)")
    downscale: float | None = option(None, "divide image sizes by this (antialiased; intrinsics scaled to match); "
                                           "unset: automatic, to a long side of at most 1600 pixels (a warning says so)", min=1)
    test_every: int = option(8, "every N-th image (sorted by name) is a test view; 0 = all train", min=0)
    mask_dir: str = option("", "optional folder of object masks named like the images (PNG)")
    strict: bool = option(False, "stop with an error at a registered image whose file is missing (default: skip such "
                                 "images with one warning)")
    exif_orientation: bool = option(False, "apply the EXIF orientation tag of the images; off by default because COLMAP "
                                           "reads the pixels as stored and its cameras describe those")


class ColmapLoader(Loader):
    """A COLMAP sparse model (binary or text) with its images; 3D points become the point cloud."""

    name = "colmap"
    description = "COLMAP sparse model (sparse/0 cameras/images/points3D) with its images"
    Config = ColmapConfig
    provides = frozenset({"scene"})

    def detect(self, path: Path) -> int:
        path = Path(path)
        if not path.is_dir():
            return 0
        try:
            find_model(path, self.config.model)
        except InputError:
            return 0
        # ns-process-data output has both; its transforms.json (splits, applied_transform) wins.
        return 5 if (path / "transforms.json").is_file() else 10

    def load(self, path: Path) -> Scene:
        path = Path(path)
        if not path.is_dir():
            raise InputError("a COLMAP dataset must be a folder", path)
        model_dir, root = find_model(path, self.config.model)
        model = read_model(model_dir)
        image_dir = root / self.config.images
        if not image_dir.is_dir():
            raise InputError(f"image folder '{self.config.images}' for the COLMAP model is missing", image_dir)
        mask_dir = root / self.config.mask_dir if self.config.mask_dir else None
        frames = []
        missing = []
        for i, im in enumerate(model.images):
            if not (image_dir / im.name).is_file():
                missing.append((f"registered image {im.name}", image_dir / im.name))
                continue
            mask = None
            if mask_dir is not None:
                mask = mask_dir / Path(im.name).with_suffix(".png")
            frames.append(
                FrameSpec(
                    name=Path(im.name).stem,
                    image=image_dir / im.name,
                    K=im.K,
                    c2w=im.c2w,
                    size=im.size,
                    distortion=im.distortion,
                    object_mask=mask,
                    source=model_dir / "images",
                    exif=self.config.exif_orientation,
                )
            )
        report_missing(missing, len(model.images), strict=self.config.strict, option=f"{self.name}.strict")
        hold_out_every(frames, self.config.test_every, f"{self.name}.test_every")
        views = build_views(frames, downscale=self.config.downscale, loader=self.name,
                            exif_option=f"{self.name}.exif_orientation")
        cloud = None
        if len(model.points):
            cloud = PointCloud(
                points=torch.from_numpy(model.points).float(),
                colors=torch.from_numpy(model.colors.astype(np.float32) / 255.0),
            )
        cams = Cameras.cat([v.camera for v in views])
        bounds = bounds_from_points(None if cloud is None else cloud.points, cams)
        return Scene(name=root.resolve().name, views=views, bounds=bounds, point_cloud=cloud, source=path)

