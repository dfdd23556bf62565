"""nerfstudio / instant-ngp ``transforms.json`` and Blender/NeRF-synthetic ``transforms_{train,val,test}.json``.

Fields read (top level = shared by all frames; any may be overridden per frame):

* intrinsics ``fl_x fl_y cx cy w h``, or Blender's ``camera_angle_x`` (horizontal field of view,
  radians; then cx = w/2, cy = h/2 and w, h come from the image header);
* ``camera_model``: PINHOLE / SIMPLE_PINHOLE / OPENCV with ``k1 k2 p1 p2 [k3]`` / OPENCV_FISHEYE
  with ``k1 k2 k3 k4`` (others raise InputError); absent: OPENCV, or OPENCV_FISHEYE with
  instant-ngp's ``is_fisheye``. Coefficients are read per frame or at the top level (instant-ngp)
  and undone at load (:mod:`.undistort`): views get a new pinhole K and no distortion;
* per frame: ``file_path``, ``transform_matrix`` (OpenGL camera-to-world, converted with
  :func:`recon_core.opengl_to_opencv`), ``mask_path`` (object mask, 255 = object),
  ``depth_file_path`` / ``depth_path`` (``.npy`` metric z-depth, or a 16-bit PNG holding
  depth / ``depth_scale``; default scale 0.001 = millimetres, nerfstudio's convention),
  ``sky_mask_path`` (255 = sky), ``dynamic_mask_path``, ``time`` (seconds, D-NeRF style 4D;
  dropped when every frame has the same time, which describes a static scene),
  ``split`` (train/val/test);
* ignored: instant-ngp's ``aabb_scale``, ``sharpness``, ``camera_angle_x`` next to ``fl_x``;
* top level: ``{train,val,test}_filenames`` (split by file name), ``ply_file_path`` (initial
  point cloud, in the same frame as the poses), ``applied_transform`` (3x4 or 4x4: the transform
  ns-process-data already applied to both the poses and the PLY to go from the original
  capture frame to this one. It is validated and exposed by :func:`parse_transforms`, but
  nothing needs applying: poses and points are already consistent).

Split file (option ``split_file``): a JSON object ``{"train": [file paths], "test": [...]}`` (``val``
allowed too; the format of the benchmark's ``split_sparse3.json``), paths written as the frames'
``file_path`` (relative to the transforms file's folder). Only the listed frames are loaded, each
with the split that lists it, in the transforms file's order; a listed path that no frame has, or
one listed under two splits, is an InputError naming the split file.

Real captures (see docs/conventions.md, "Loaders"): a frame whose image file is missing is
skipped with one warning (``strict=true``: InputError); with no split in the data every
``test_every``-th frame in file-name order is a test view; EXIF orientation is applied (``w``,
``h`` describe the displayed image; ``exif_orientation=false`` for metadata written from the
stored pixels); with ``downscale`` unset, images larger than 1600 px on the long side are
downscaled with a warning.

Pixel centres: nerfstudio and Blender use i + 0.5 (cx = w/2 for a centred camera), as recon does.
RGBA images: alpha becomes ``View.alpha`` and the object mask (alpha > 0.5, unless a mask_path
is given); RGB is composited onto the ``background`` option.
Bounds: the sphere around the point cloud when there is one, else around the camera centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon_core import Cameras, InputError, Loader, Scene, opengl_to_opencv, option

from . import imageio
from .common import (FrameSpec, as_float, as_matrix, bounds_from_points, build_views, hold_out_every, read_json, read_ply_points,
                     report_missing, resolve_file)

__all__ = ["NerfstudioLoader", "TransformsData", "parse_transforms", "transforms_files", "apply_split_file"]

SPLITS = ("train", "val", "test")
DISTORTION_MODELS = {"OPENCV": (("k1", "k2", "p1", "p2", "k3"), "opencv"), "OPENCV_FISHEYE": (("k1", "k2", "k3", "k4"), "fisheye")}
"""camera_model → (keys in OpenCV order, model of :mod:`.undistort`)."""
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


@dataclass
class TransformsData:
    """Everything parsed from one or more transforms files (nothing read from pixels yet)."""

    frames: list[FrameSpec]
    ply_path: Path | None = None
    applied_transform: np.ndarray | None = None
    files: list[Path] = field(default_factory=list)
    missing: list[tuple[str, Path]] = field(default_factory=list)
    """("frame i", image path) of each frame whose image file is missing (not in ``frames``)."""
    total: int = 0
    """How many frames the files list, missing ones included."""
    has_split: bool = False
    """Whether the data says which frames are test views (Blender files, ``*_filenames``, ``split``)."""


def transforms_files(path: Path) -> list[tuple[Path, str | None]]:
    """The metadata files for ``path`` with the split each implies (None: per frame)."""
    path = Path(path)
    if path.is_file():
        return [(path, None)]
    if (path / "transforms.json").is_file():
        return [(path / "transforms.json", None)]
    blender = [(path / f"transforms_{s}.json", s) for s in SPLITS if (path / f"transforms_{s}.json").is_file()]
    return blender


def _get(frame: dict, meta: dict, key: str) -> Any:
    return frame[key] if key in frame else meta.get(key)


def _intrinsics(frame: dict, meta: dict, image: Path, source: Path, exif: bool = True) -> tuple[np.ndarray, tuple[int, int] | None]:
    """K (3, 3) and the (H, W) the metadata states (None when only the header knows)."""
    w, h = _get(frame, meta, "w"), _get(frame, meta, "h")
    size: tuple[int, int] | None = None
    if w is not None or h is not None:
        if w is None or h is None:
            raise InputError("'w' and 'h' must be given together", source)
        wf, hf = as_float(w, "w", source, positive=True), as_float(h, "h", source, positive=True)
        if not (wf.is_integer() and hf.is_integer()):
            raise InputError(f"image size must be whole pixels, got w={w}, h={h}", source)
        size = (int(hf), int(wf))
    fl_x, fl_y = _get(frame, meta, "fl_x"), _get(frame, meta, "fl_y")
    angle_x = _get(frame, meta, "camera_angle_x")
    if fl_x is None and angle_x is None:
        raise InputError("missing intrinsics: need 'fl_x' (with fl_y, cx, cy) or Blender's 'camera_angle_x'", source)
    hh, ww = size if size is not None else imageio.probe_image(image, exif).size  # Blender: size from the header
    if fl_x is not None:
        fx = as_float(fl_x, "fl_x", source, positive=True)
        fy = as_float(fl_y, "fl_y", source, positive=True) if fl_y is not None else fx
    else:
        ax = as_float(angle_x, "camera_angle_x", source, positive=True)
        if ax >= math.pi:
            raise InputError(f"camera_angle_x must be below pi radians, got {ax}", source)
        fx = 0.5 * ww / math.tan(0.5 * ax)
        angle_y = _get(frame, meta, "camera_angle_y")
        fy = 0.5 * hh / math.tan(0.5 * as_float(angle_y, "camera_angle_y", source, positive=True)) if angle_y is not None else fx
    cx, cy = _get(frame, meta, "cx"), _get(frame, meta, "cy")
    if (cx is None or cy is None) and fl_x is not None and angle_x is None:
        raise InputError("missing intrinsics: 'cx' and 'cy' are required with 'fl_x'", source)
    cxf = as_float(cx, "cx", source) if cx is not None else ww / 2.0
    cyf = as_float(cy, "cy", source) if cy is not None else hh / 2.0
    return np.array([[fx, 0.0, cxf], [0.0, fy, cyf], [0.0, 0.0, 1.0]]), size


def _distortion(frame: dict, meta: dict, source: Path, where: str) -> tuple[np.ndarray | None, str]:
    """(coefficients or None, model) of a frame: its own keys, else the top-level ones.

    OPENCV → OpenCV's (k1, k2, p1, p2[, k3]); OPENCV_FISHEYE → (k1, k2, k3, k4). Without
    ``camera_model`` the model is OPENCV, or OPENCV_FISHEYE when instant-ngp's ``is_fisheye`` is true.
    """
    model = _get(frame, meta, "camera_model")
    if model is None:
        model = "OPENCV_FISHEYE" if _get(frame, meta, "is_fisheye") is True else "OPENCV"
    if not isinstance(model, str):
        raise InputError(f"camera_model must be a string, got {model!r}", source)
    if model in PINHOLE_MODELS:
        return None, "opencv"
    if model not in DISTORTION_MODELS:
        raise InputError(f"camera_model {model} is not supported (supported: {', '.join([*DISTORTION_MODELS, *PINHOLE_MODELS])})", source)
    keys, kind = DISTORTION_MODELS[model]
    value = {k: as_float(_get(frame, meta, k) or 0.0, f"{k} of {where}", source) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    if kind == "opencv" and value["k4"] != 0.0:
        # nerfstudio's k4 multiplies r^8, a term OpenCV's model does not have (its k4 divides).
        raise InputError(f"k4 of {where} is not supported with camera_model OPENCV (an r^8 term OpenCV cannot undo)", source)
    if kind == "fisheye" and (value["p1"] or value["p2"]):
        raise InputError(f"OPENCV_FISHEYE has no tangential terms, but {where} gives p1/p2", source)
    d = np.asarray([value[k] for k in keys])
    if kind == "opencv" and d[4] == 0.0:
        d = d[:4]
    return (d if d.any() else None), kind


def _file(frame: dict, base: Path, key: str, source: Path) -> Path | None:
    if frame.get(key) is None:
        return None
    return resolve_file(base, frame[key], key, source)


def _image_file(base: Path, rel: Any, source: Path) -> Path:
    p = resolve_file(base, rel, "file_path", source)
    if not p.suffix and not p.exists() and p.with_suffix(".png").exists():  # Blender: "./train/r_0"
        p = p.with_suffix(".png")
    return p


def parse_transforms(path: Path, *, exif: bool = True) -> TransformsData:
    """Parse the transforms file(s) of ``path`` into frames (validated fields, no pixel reads).

    A frame whose image file is missing is left out and listed in ``missing`` (the loader
    reports it with :func:`.common.report_missing`); ``exif``: see :attr:`FrameSpec.exif`.
    """
    files = transforms_files(path)
    if not files:
        raise InputError("no transforms.json (or transforms_train.json) found", path)
    frames: list[FrameSpec] = []
    missing: list[tuple[str, Path]] = []
    total = 0
    has_split = any(s is not None for _, s in files)
    ply_path, applied = None, None
    for file, file_split in files:
        meta = read_json(file)
        base = file.parent
        if not isinstance(meta, dict):
            raise InputError("top level must be a JSON object", file)
        raw_frames = meta.get("frames")
        if not isinstance(raw_frames, list):
            raise InputError("missing 'frames' list", file)
        by_name: dict[str, str] = {}
        for s in SPLITS:
            names = meta.get(f"{s}_filenames")
            if names is None:
                continue
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise InputError(f"'{s}_filenames' must be a list of file names", file)
            for n in names:
                by_name[Path(n).as_posix()] = s
            has_split = True
        if meta.get("ply_file_path") is not None:
            ply_path = resolve_file(base, meta["ply_file_path"], "ply_file_path", file)
        if meta.get("applied_transform") is not None:
            applied = as_matrix(meta["applied_transform"], [(3, 4), (4, 4)], "applied_transform", file)
        for i, fr in enumerate(raw_frames):
            where = f"frame {i}"
            if not isinstance(fr, dict):
                raise InputError(f"{where} must be a JSON object", file)
            if "file_path" not in fr:
                raise InputError(f"{where} has no 'file_path'", file)
            if "transform_matrix" not in fr:
                raise InputError(f"{where} has no 'transform_matrix'", file)
            image = _image_file(base, fr["file_path"], file)
            total += 1
            if not image.is_file():  # instant-ngp skips such frames; so do we (the loader warns once)
                missing.append((f"{where} (file_path {fr['file_path']!r} in {file.name})", image))
                continue
            K, size = _intrinsics(fr, meta, image, file, exif)
            c2w_gl = as_matrix(fr["transform_matrix"], [(4, 4), (3, 4)], f"transform_matrix of {where}", file)
            c2w = opengl_to_opencv(torch.from_numpy(c2w_gl)).numpy()
            split = fr.get("split")
            has_split = has_split or split is not None
            if split is None:
                split = by_name.get(Path(fr["file_path"]).as_posix()) or by_name.get(image.name) or file_split or "train"
            if split not in SPLITS:
                raise InputError(f"{where} has split {split!r}; expected one of {', '.join(SPLITS)}", file)
            time = None if fr.get("time") is None else as_float(fr["time"], f"time of {where}", file)
            distortion, model = _distortion(fr, meta, file, where)
            depth_key = "depth_file_path" if fr.get("depth_file_path") is not None else "depth_path"
            frames.append(
                FrameSpec(
                    name=image.stem,
                    image=image,
                    K=K,
                    c2w=c2w,
                    split=split,
                    size=size,
                    distortion=distortion,
                    distortion_model=model,
                    time=time,
                    object_mask=_file(fr, base, "mask_path", file),
                    sky_mask=_file(fr, base, "sky_mask_path", file),
                    dynamic_mask=_file(fr, base, "dynamic_mask_path", file),
                    depth=_file(fr, base, depth_key, file),
                    source=file,
                    exif=exif,
                )
            )
    if not frames:
        if missing:
            raise InputError(f"the images of all {total} frames are missing (first: {missing[0][0]})", missing[0][1])
        raise InputError("transforms file lists no frames", files[0][0])
    timed = [f.time is not None for f in frames]
    if any(timed) and not all(timed):
        raise InputError("'time' is given for some frames but not all", files[0][0])
    if all(timed) and len({f.time for f in frames}) == 1:  # one shared time: a static scene
        for f in frames:
            f.time = None
    names = [f.name for f in frames]
    if len(set(names)) != len(names):  # e.g. Blender train/r_0 and test/r_0
        for f in frames:
            f.name = f.image.relative_to(files[0][0].parent).with_suffix("").as_posix() if f.image.is_relative_to(files[0][0].parent) else f.image.stem
    return TransformsData(frames, ply_path, applied, [f for f, _ in files], missing, total, has_split)


@dataclass
class NerfstudioConfig:
    downscale: float | None = option(None, "divide image sizes by this (antialiased; intrinsics scaled to match); "
                                           "unset: automatic, to a long side of at most 1600 pixels (a warning says so)", min=1)
    background: tuple[float, float, float] = option((1.0, 1.0, 1.0), "RGB in [0, 1] that RGBA images are composited onto", min=0, max=1)
    depth_scale: float = option(0.001, "metres per unit of 16-bit PNG depth (nerfstudio: millimetres)", min=0)
    alpha_mask: bool = option(True, "use the alpha channel of RGBA images as object mask when no mask_path is given")
    split_file: str | None = option(None, "JSON {\"train\": [file paths], \"test\": [...]} (paths as the frames' file_path; "
                                          "relative to the data folder or absolute): load only these frames, with these splits")
    test_every: int = option(8, "when the data has no split: every N-th frame in file-name order is a test view, as in the "
                                "colmap loader; 0 = all train", min=0)
    strict: bool = option(False, "stop with an error at a frame whose image file is missing (default: skip such frames "
                                 "with one warning, as instant-ngp does)")
    exif_orientation: bool = option(True, "apply the EXIF orientation tag of the images (phone photos); false: use the "
                                          "pixels as stored, when the transforms were written from them")


class NerfstudioLoader(Loader):
    """nerfstudio transforms.json and Blender transforms_{train,val,test}.json."""

    name = "nerfstudio"
    description = "nerfstudio / instant-ngp transforms.json, Blender NeRF-synthetic (OpenGL poses → OpenCV)"
    Config = NerfstudioConfig
    provides = frozenset({"scene"})

    def detect(self, path: Path) -> int:
        path = Path(path)
        if path.is_file():
            return 10 if path.suffix == ".json" and path.name.startswith("transforms") else 0
        return 10 if path.is_dir() and transforms_files(path) else 0

    def load(self, path: Path) -> Scene:
        data = parse_transforms(Path(path), exif=self.config.exif_orientation)
        report_missing(data.missing, data.total, strict=self.config.strict, option=f"{self.name}.strict")
        if self.config.split_file:
            root = Path(path) if Path(path).is_dir() else Path(path).parent
            split_path = Path(self.config.split_file).expanduser()
            data.frames = apply_split_file(data.frames, split_path if split_path.is_absolute() else root / split_path, root)
        elif not data.has_split:
            hold_out_every(data.frames, self.config.test_every, f"{self.name}.test_every")
        for f in data.frames:
            f.alpha_mask = self.config.alpha_mask
        views = build_views(
            data.frames,
            downscale=self.config.downscale,
            background=imageio.parse_background(tuple(self.config.background)),
            depth_scale=self.config.depth_scale,
            loader=self.name,
            exif_option=f"{self.name}.exif_orientation",
        )
        return make_scene(Path(path), views, data)


def apply_split_file(frames: list[FrameSpec], split_file: Path, base: Path) -> list[FrameSpec]:
    """The ``frames`` a split file lists, each given the split that lists it (see the module doc).

    Paths in the file are relative to ``base`` (the transforms file's folder) or absolute; a path
    without a suffix also matches a ``.png`` frame (Blender writes ``./train/r_0``).
    """
    from recon_core.rundir import read_json as read_object

    doc = read_object(split_file, "split")
    unknown = sorted(set(doc) - set(SPLITS))
    if unknown:
        raise InputError(f"split file has unknown key(s) {', '.join(unknown)}; expected {', '.join(SPLITS)}", split_file)
    by_path: dict[Path, int] = {}
    for i, f in enumerate(frames):
        image = f.image.resolve()
        by_path[image] = i
        by_path.setdefault(image.with_suffix(""), i)
    chosen: dict[int, str] = {}
    for split in SPLITS:
        entries = doc.get(split, [])
        if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
            raise InputError(f"split file's '{split}' must be a list of file paths", split_file)
        for entry in entries:
            i = by_path.get(resolve_file(base, entry, f"{split} entry", split_file).resolve())
            if i is None:
                raise InputError(f"split file lists {entry!r} under '{split}', but no frame of the transforms has that file_path",
                                 split_file)
            if chosen.get(i, split) != split:
                raise InputError(f"split file lists {entry!r} under both '{chosen[i]}' and '{split}'", split_file)
            chosen[i] = split
    if not chosen:
        raise InputError("split file lists no frames", split_file)
    out = []
    for i in sorted(chosen):
        frames[i].split = chosen[i]  # type: ignore[assignment]
        out.append(frames[i])
    return out


def make_scene(path: Path, views: list, data: TransformsData) -> Scene:
    """Scene from views and parsed metadata: point cloud, bounds and ground-truth mesh."""
    cloud = read_ply_points(data.ply_path) if data.ply_path is not None else None
    cams = Cameras.cat([v.camera for v in views])
    root = path if path.is_dir() else path.parent
    gt = root / "gt_mesh.ply"
    return Scene(
        name=root.resolve().name,
        views=views,
        bounds=bounds_from_points(None if cloud is None else cloud.points, cams),
        point_cloud=cloud,
        gt_mesh_path=gt if gt.is_file() else None,
        source=path,
    )
