"""Driving sequences: the DGGT folder layout, and transforms.json streets with sky masks.

**DGGT layout** (xiaomi-research/dggt ``datasets/dataset.py``, written by its Waymo preprocessing,
which follows drivestudio)::

    <scene>/images/{t:03d}_{cam}.jpg          frame t of camera cam (Waymo: 0 front, 1 front-left, ...)
    <scene>/sky_masks/{t:03d}_{cam}.png       255 = sky (.png, .jpg or .jpeg, as DGGT reads both)
    <scene>/fine_dynamic_masks/all/{t:03d}_{cam}.png   255 = dynamic object (optional; .png/.jpg/.jpeg)
    <scene>/ego_pose/{t:03d}.txt              4x4 vehicle-to-world (optional)
    <scene>/extrinsics/{cam}.txt              4x4 camera-to-vehicle, Waymo camera axes
                                              (x forward, y left, z up) (optional)
    <scene>/intrinsics/{cam}.txt              9 numbers f_u f_v c_u c_v k1 k2 p1 p2 k3 (optional)

DGGT's data root (``--image_dir`` of its scripts: ``<root>/<scene>/images/...``, scenes named
``000``, ``001``, ...) loads too: ``scene`` picks the scene folder (needed when there are several).
Masks are read at threshold 0.5, so JPEG noise around 0 and 255 changes nothing.

With ego poses and extrinsics, c2w = inv(ego_pose[first]) @ ego_pose[t] @ extrinsic[cam] @ W,
where W turns OpenCV camera axes into Waymo ones (x_w = z_cv, y_w = -x_cv, z_w = -y_cv); the
world is the vehicle frame of the first loaded frame. Intrinsics are used as written (Waymo's
principal point is taken to follow recon's pixel-centre convention), distortion becomes
(k1, k2, p1, p2, k3, 0).

**Unknown poses** (no ``ego_pose/`` or ``extrinsics/``, as for DGGT's pose-free input): every
camera gets c2w = identity and, without ``intrinsics/``, K from ``unknown_fov_deg`` (horizontal
field of view) with a centred principal point. The scene is marked with the attribute
``poses_known = False`` (read it with :func:`poses_known`), so pose-predicting representations
(dggt) know to estimate cameras and pose-dependent ones can refuse. Frame times are
``(t - start_idx) / fps`` seconds.

**Streets in transforms.json** (the ``street`` benchmark): a nerfstudio transforms.json whose
frames carry ``sky_mask_path`` (and ``time``) is read by the nerfstudio parser, with this loader's
frame selection, and detected with a higher score (20) than the generic reader (10).

Frame selection: ``views`` (camera ids, e.g. "0,1,2"), ``start_idx``, ``sequence_length``
(0 = to the end) and ``interval`` pick frames t = start_idx + k * interval.
Masks are resized by block selection only (sky: a block stays sky only if all of it is sky, so
thin lamp posts survive any downscale). Bounds: the sphere around the camera centres, widened to
at least ``scene_radius`` metres (what a driving reconstruction should cover beyond the path).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon_core import Bounds, Cameras, InputError, Loader, Scene, option

from . import imageio
from .common import FrameSpec, build_views, report_missing
from .nerfstudio import parse_transforms

__all__ = ["DggtLoader", "poses_known", "OPENCV_TO_WAYMO"]

OPENCV_TO_WAYMO = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""Columns: the OpenCV camera axes (right, down, forward) written in Waymo camera axes (forward, left, up)."""

_NAME = re.compile(r"^(\d+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def poses_known(scene: Scene) -> bool:
    """False when a loader had no poses and put every camera at the identity (see module notes)."""
    return scene.poses_known


def _read_txt_matrix(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise InputError("file is missing", path)
    try:
        arr = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (ValueError, OSError) as e:
        raise InputError(f"not a text file of numbers ({e})", path) from None
    if arr.size != int(np.prod(shape)):
        raise InputError(f"expected {int(np.prod(shape))} numbers, found {arr.size}", path)
    arr = arr.reshape(shape)
    if not np.isfinite(arr).all():
        raise InputError("contains NaN or infinite values", path)
    return arr


def _street_json(path: Path) -> bool:
    """A transforms.json whose frames carry sky masks (read only its first frame)."""
    file = path / "transforms.json"
    if not file.is_file():
        return False
    try:
        meta = json.loads(file.read_text())
        frames = meta.get("frames") if isinstance(meta, dict) else None
        return bool(frames) and isinstance(frames[0], dict) and "sky_mask_path" in frames[0]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


_MASK_SUFFIXES = (".png", ".jpg", ".jpeg")


def _mask_file(folder: Path, stem: str) -> Path:
    """``folder/stem`` with the first mask suffix present (.png, .jpg, .jpeg), else the .png name
    (so a missing mask is reported under the name DGGT's layout uses first)."""
    for suffix in _MASK_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return folder / f"{stem}.png"


def _scene_folders(path: Path) -> list[Path]:
    """Scene folders of a DGGT data root (sub-folders holding images/ in DGGT's naming)."""
    if not path.is_dir() or (path / "images").is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and _dggt_images(p))


def _dggt_images(path: Path) -> dict[tuple[int, int], Path]:
    """{(t, cam): image} of a DGGT scene folder."""
    folder = path / "images"
    if not folder.is_dir():
        return {}
    out = {}
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            out[(int(m.group(1)), int(m.group(2)))] = p
    return out


@dataclass
class DggtConfig:
    views: tuple[int, ...] = option((0,), "camera ids to load, e.g. 0,1,2 (Waymo: 0 front, 1 front-left, 2 front-right)", min=0)
    start_idx: int = option(0, "first frame index (t) to load", min=0)
    sequence_length: int = option(0, "number of frames to load (0 = to the end)", min=0)
    interval: int = option(1, "load every interval-th frame", min=1)
    fps: float = option(10.0, "frame rate of the DGGT layout (Waymo: 10 Hz); time = (t - start_idx) / fps", min=1e-12)
    downscale: float | None = option(None, "divide image sizes by this (antialiased; masks by block selection); "
                                           "unset: automatic, to a long side of at most 1600 pixels (a warning says so)", min=1)
    unknown_fov_deg: float = option(60.0, "horizontal field of view assumed when intrinsics/ is missing", min=1e-6, max=179.999)
    scene_radius: float = option(30.0, "minimum bounds radius in metres around the camera path", min=0)
    scene: str | None = option(None, "DGGT data root (<root>/<scene>/images): the scene folder to load, e.g. 000 "
                                     "(default: the only one)")
    strict: bool = option(False, "transforms.json streets: stop with an error at a frame whose image file is missing "
                                 "(default: skip such frames with one warning)")


class DggtLoader(Loader):
    """DGGT driving folders (images/{t:03d}_{cam}.jpg, sky_masks/, ...) and transforms.json streets with sky masks."""

    name = "dggt"
    description = "driving sequences: DGGT/Waymo-processed folders, or transforms.json with sky masks and times"
    Config = DggtConfig
    provides = frozenset({"scene"})

    def detect(self, path: Path) -> int:
        path = Path(path)
        if not path.is_dir():
            return 0
        if _dggt_images(path) or _scene_folders(path):
            return 20
        return 20 if _street_json(path) else 0

    def _scene_dir(self, path: Path) -> Path:
        """``path`` itself, or the chosen scene of a DGGT data root."""
        scenes = _scene_folders(path)
        if not scenes:
            return path
        names = [p.name for p in scenes]
        if self.config.scene is not None:
            if self.config.scene not in names:
                raise InputError(f"no scene '{self.config.scene}' here (scenes: {', '.join(names[:10])})", path)
            return path / self.config.scene
        if len(scenes) > 1:
            raise InputError(f"a DGGT data root with {len(scenes)} scenes ({', '.join(names[:10])}): choose one with "
                             f"--set {self.name}.scene=NAME", path)
        return scenes[0]

    def _select(self, indices: list[int]) -> list[int]:
        c = self.config
        if c.interval < 1 or c.start_idx < 0 or c.sequence_length < 0:
            raise InputError(f"bad frame selection: start_idx={c.start_idx}, sequence_length={c.sequence_length}, interval={c.interval}")
        have = set(indices)
        last = max(indices)
        stop = last + 1 if c.sequence_length == 0 else c.start_idx + c.sequence_length * c.interval
        picked = [t for t in range(c.start_idx, min(stop, last + 1), c.interval)]
        if c.sequence_length and len(picked) < c.sequence_length:
            raise InputError(f"asked for {c.sequence_length} frames from {c.start_idx} every {c.interval}, but frames end at {last}")
        missing = [t for t in picked if t not in have]
        if missing:
            raise InputError(f"frames {missing[:5]} are missing from the sequence")
        if not picked:
            raise InputError(f"no frames at or after start_idx={c.start_idx} (last frame is {last})")
        return picked

    def load(self, path: Path) -> Scene:
        path = Path(path)
        if not path.is_dir():
            raise InputError("a driving dataset must be a folder", path)
        path = self._scene_dir(path)
        if _dggt_images(path):
            frames, known = self._dggt_frames(path)
        elif (path / "transforms.json").is_file():
            frames, known = self._street_frames(path), True
        else:
            raise InputError("neither a DGGT folder (images/{t:03d}_{cam}.jpg) nor a transforms.json", path)
        views = build_views(frames, downscale=self.config.downscale, loader=self.name)
        cams = Cameras.cat([v.camera for v in views])
        b = Bounds.from_cameras(cams)
        scene = Scene(
            name=path.resolve().name,
            views=views,
            bounds=Bounds(center=b.center, radius=max(b.radius, self.config.scene_radius)),
            source=path,
        )
        scene.poses_known = known
        return scene

    def _street_frames(self, path: Path) -> list[FrameSpec]:
        data = parse_transforms(path)
        report_missing(data.missing, data.total, strict=self.config.strict, option=f"{self.name}.strict")
        frames = data.frames
        if all(f.time is not None for f in frames):
            frames = sorted(frames, key=lambda f: f.time)  # type: ignore[arg-type, return-value]
        keep = set(self._select(list(range(len(frames)))))
        return [f for i, f in enumerate(frames) if i in keep]

    def _dggt_frames(self, path: Path) -> tuple[list[FrameSpec], bool]:
        c = self.config
        files = _dggt_images(path)
        cams = list(dict.fromkeys(int(v) for v in c.views))
        if not cams:
            raise InputError("no camera ids given in 'views'")
        per_cam = {cam: sorted(t for (t, k) in files if k == cam) for cam in cams}
        for cam, ts in per_cam.items():
            if not ts:
                have = sorted({k for (_, k) in files})
                raise InputError(f"no images of camera {cam} (cameras present: {have})", path / "images")
        common = sorted(set.intersection(*(set(ts) for ts in per_cam.values())))
        if not common:
            raise InputError(f"cameras {cams} have no frame index in common", path / "images")
        picked = self._select(common)
        has_pose = (path / "ego_pose").is_dir() and (path / "extrinsics").is_dir()
        intr_dir = path / "intrinsics"
        ego0 = _read_txt_matrix(path / "ego_pose" / f"{picked[0]:03d}.txt", (4, 4)) if has_pose else None
        frames = []
        for cam in cams:
            intr = _read_txt_matrix(intr_dir / f"{cam}.txt", (9,)) if intr_dir.is_dir() else None
            ext = _read_txt_matrix(path / "extrinsics" / f"{cam}.txt", (4, 4)) if has_pose else None
            for t in picked:
                image = files[(t, cam)]
                if intr is not None:
                    fx, fy, cx, cy = intr[:4]
                    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
                    dist = np.array([intr[4], intr[5], intr[6], intr[7], intr[8], 0.0])
                    dist = dist if dist.any() else None
                else:
                    info = imageio.probe_image(image)
                    f = 0.5 * info.width / math.tan(math.radians(c.unknown_fov_deg) / 2)
                    K = np.array([[f, 0.0, info.width / 2], [0.0, f, info.height / 2], [0.0, 0.0, 1.0]])
                    dist = None
                if has_pose:
                    assert ego0 is not None and ext is not None
                    ego = _read_txt_matrix(path / "ego_pose" / f"{t:03d}.txt", (4, 4))
                    c2w = np.linalg.inv(ego0) @ ego @ ext @ OPENCV_TO_WAYMO
                else:
                    c2w = np.eye(4)
                stem = f"{t:03d}_{cam}"
                sky = _mask_file(path / "sky_masks", stem)
                dyn = _mask_file(path / "fine_dynamic_masks" / "all", stem)
                frames.append(
                    FrameSpec(
                        name=stem,
                        image=image,
                        K=K,
                        c2w=c2w,
                        distortion=dist,
                        time=(t - c.start_idx) / c.fps,
                        sky_mask=sky if (path / "sky_masks").is_dir() else None,
                        dynamic_mask=dyn if (path / "fine_dynamic_masks" / "all").is_dir() else None,
                        source=path,
                    )
                )
        return frames, has_pose

