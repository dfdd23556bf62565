"""What every scene loader shares: a per-frame description, up-front validation, lazy views.

A format-specific loader parses its metadata into :class:`FrameSpec` records (cameras already
in recon's convention: OpenCV camera-to-world, K with pixel centres at i + 0.5, at the
*original* image resolution) and calls :func:`build_views`. That function validates every
referenced file before returning anything (existence, readable header, consistent sizes), then
hands out :class:`recon_core.View` objects whose pixels are read on access, resized to the
requested ``downscale`` (images antialiased, masks by block selection, depth nearest; see
:mod:`.imageio`) with intrinsics scaled to match.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from recon_core import Bounds, Cameras, InputError, PointCloud, View, check_rigid
from recon_core.scene import Split

from . import imageio
from .imageio import Size

__all__ = ["FrameSpec", "build_views", "bounds_from_points", "read_json", "as_matrix", "as_float", "resolve_file"]


@dataclass
class FrameSpec:
    """One view before loading.

    K: (3, 3) float64 intrinsics at ``size``; c2w: (4, 4) float64 OpenCV camera-to-world;
    size: (H, W) the metadata claims (None: take it from the image header);
    distortion: OpenCV (k1, k2, p1, p2[, k3, k4]) or None; time in seconds or None.
    alpha_mask: use the image's alpha channel (> 0.5) as object mask when ``object_mask`` is None.
    Mask files are grey images with 255 = True (object, sky, dynamic).
    """

    name: str
    image: Path
    K: np.ndarray
    c2w: np.ndarray
    split: Split = "train"
    size: Size | None = None
    distortion: np.ndarray | None = None
    time: float | None = None
    object_mask: Path | None = None
    sky_mask: Path | None = None
    dynamic_mask: Path | None = None
    depth: Path | None = None
    alpha_mask: bool = True
    source: Path | None = None
    """The metadata file that described this frame (for error messages)."""


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing or malformed file is an InputError naming it."""
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError("file is missing", path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", path) from None


def as_float(value: Any, what: str, source: Path | None, *, positive: bool = False) -> float:
    """A finite number from metadata (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be a number, got {value!r}", source)
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise InputError(f"{what} must be a {'positive ' if positive else ''}finite number, got {value!r}", source)
    return v


def as_matrix(value: Any, shapes: Sequence[tuple[int, int]], what: str, source: Path | None) -> np.ndarray:
    """A finite float64 matrix of one of ``shapes`` from nested lists; 3x4 is padded to 4x4."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} is not a numeric matrix", source) from None
    if arr.ndim != 2 or tuple(arr.shape) not in [tuple(s) for s in shapes]:
        raise InputError(f"{what} has shape {arr.shape}, expected one of {', '.join(f'{a}x{b}' for a, b in shapes)}", source)
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or infinite values", source)
    if arr.shape == (3, 4):
        arr = np.vstack([arr, [0.0, 0.0, 0.0, 1.0]])
    return arr


def resolve_file(base: Path, rel: Any, what: str, source: Path | None) -> Path:
    """``base / rel`` for a relative path string from metadata (absolute paths are kept)."""
    if not isinstance(rel, str) or not rel.strip():
        raise InputError(f"{what} must be a non-empty path string, got {rel!r}", source)
    p = Path(rel)
    return p if p.is_absolute() else base / p


@functools.lru_cache(maxsize=2)
def _decode_rgb_alpha(path: Path, size: Size) -> tuple[Tensor, Tensor | None]:
    """Tiny cache so reading ``view.image`` then ``view.alpha`` decodes the file once (two
    entries only: large images must not pile up in memory)."""
    return imageio.read_rgb_alpha(path, size)


def _image_reader(path: Path, size: Size, background: Tensor) -> Callable[[], Tensor]:
    def read() -> Tensor:
        rgb, alpha = _decode_rgb_alpha(path, size)
        return imageio.composite(rgb, alpha, background)  # a new tensor: the cache stays intact

    return read


def _alpha_reader(path: Path, size: Size) -> Callable[[], Tensor]:
    def read() -> Tensor:
        alpha = _decode_rgb_alpha(path, size)[1]
        assert alpha is not None
        return torch.from_numpy(alpha.numpy().copy())

    return read


def _alpha_mask_reader(path: Path, size: Size) -> Callable[[], Tensor]:
    """Object mask from alpha: thresholded at the original resolution, then block-resized."""

    def read() -> Tensor:
        rgb, alpha = imageio.read_rgb_alpha(path)
        assert alpha is not None
        return imageio.resize_mask(alpha > 0.5, size, "any")

    return read


def _mask_reader(path: Path, size: Size, keep: str) -> Callable[[], Tensor]:
    """A discrete mask read at full resolution, then block-resized (``keep``: see imageio)."""

    def read() -> Tensor:
        return imageio.resize_mask(imageio.read_mask(path), size, keep)  # type: ignore[arg-type]

    return read


def _depth_reader(path: Path, size: Size, scale: float) -> Callable[[], Tensor]:
    return lambda: imageio.read_depth(path, scale, size)


def build_views(
    frames: Sequence[FrameSpec],
    *,
    downscale: float = 1.0,
    background: Tensor | None = None,
    depth_scale: float = 0.001,
    same_size: bool = False,
) -> list[View]:
    """Validate every file of ``frames`` and return lazy views (see the module docstring).

    Args:
        frames: parsed frames; K/size at the original resolution.
        downscale: divide image sizes by this (intrinsics scaled by new/old per axis).
        background: (3,) colour RGBA images are composited onto (default white).
        depth_scale: metres per unit of integer depth PNGs (``.npy`` depth is metric).
        same_size: the format requires one image size for all frames.
    Raises:
        InputError naming the first bad file; nothing is returned half-loaded.
    """
    if not frames:
        raise InputError("no frames to load")
    bg = imageio.parse_background("white") if background is None else background
    # Cameras.cat drops distortion unless every view has it: give pinhole views zeros instead.
    n_dist = max((len(f.distortion) for f in frames if f.distortion is not None), default=0)
    views: list[View] = []
    sizes: dict[Size, Path] = {}
    for f in frames:
        info = imageio.probe_image(f.image)
        if f.size is not None and tuple(f.size) != info.size:
            raise InputError(
                f"image is {info.width}x{info.height} but the metadata ({f.source.name if f.source else 'camera'}) says "
                f"{f.size[1]}x{f.size[0]}",
                f.image,
            )
        sizes.setdefault(info.size, f.image)
        if same_size and len(sizes) > 1:
            (a, pa), (b, _) = list(sizes.items())[:2]
            raise InputError(f"images have mixed sizes: {pa.name} is {a[1]}x{a[0]}, this one is {b[1]}x{b[0]}", f.image)
        for mask in (f.object_mask, f.sky_mask, f.dynamic_mask):
            if mask is not None:
                imageio.probe_image(mask)
        if f.depth is not None:
            imageio.probe_depth(f.depth, depth_scale)
        K = torch.as_tensor(f.K, dtype=torch.float64)
        if not torch.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InputError(f"intrinsics of {f.name} must be finite with positive focal lengths, got {f.K.tolist()}", f.source or f.image)
        c2w = torch.as_tensor(f.c2w, dtype=torch.float64)
        check_rigid(c2w, str(f.source or f.image))
        new_size = imageio.scaled_size(info.size, downscale)
        K = imageio.scale_intrinsics(K, info.size, new_size)
        distortion = f.distortion if f.distortion is not None or not n_dist else np.zeros(n_dist)
        if distortion is not None:
            distortion = np.pad(np.asarray(distortion, dtype=np.float64), (0, n_dist - len(distortion)))
            if not np.isfinite(distortion).all():
                raise InputError(f"distortion of {f.name} contains non-finite values", f.source or f.image)
        camera = Cameras.create(
            K.float(),
            c2w.float(),
            new_size[1],
            new_size[0],
            distortion=None if distortion is None else torch.as_tensor(distortion, dtype=torch.float32),
            times=None if f.time is None else [f.time],
        )
        alpha_lazy = _alpha_reader(f.image, new_size) if info.has_alpha else None
        object_mask = None
        if f.object_mask is not None:
            object_mask = _mask_reader(f.object_mask, new_size, "any")
        elif f.alpha_mask and info.has_alpha:
            object_mask = _alpha_mask_reader(f.image, new_size)
        views.append(
            View(
                f.name,
                camera,
                _image_reader(f.image, new_size, bg),
                f.split,
                alpha=alpha_lazy,
                object_mask=object_mask,
                # Sky: "all" keeps every block that touches a non-sky pixel non-sky (thin lamps survive).
                sky_mask=None if f.sky_mask is None else _mask_reader(f.sky_mask, new_size, "all"),
                dynamic_mask=None if f.dynamic_mask is None else _mask_reader(f.dynamic_mask, new_size, "any"),
                depth=None if f.depth is None else _depth_reader(f.depth, new_size, depth_scale),
                path=f.image,
            )
        )
    return views


def bounds_from_points(points: Tensor | None, cameras: Cameras, quantile: float = 0.97) -> Bounds:
    """Bounds of a scene: the sphere holding ``quantile`` of the points, else the camera centres.

    Points: robust centre (median) and the ``quantile`` distance, so a few stray triangulated
    points do not blow the sphere up.
    """
    if points is not None and points.shape[0] >= 4:
        p = points.double()
        center = p.median(dim=0).values
        radius = float(torch.quantile((p - center).norm(dim=-1), quantile))
        return Bounds(center=center.float(), radius=max(radius, 1e-6))
    return Bounds.from_cameras(cameras)


def read_ply_points(path: Path) -> PointCloud:
    """Read a PLY point cloud (``x y z`` and optional ``red green blue`` uint8 or float)."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise InputError("point cloud file is missing", path)
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # noqa: BLE001 - plyfile raises many types on malformed files
        raise InputError(f"not a readable PLY file ({type(e).__name__}: {e})", path) from None
    if "vertex" not in [el.name for el in ply.elements]:
        raise InputError("PLY file has no 'vertex' element", path)
    v = ply["vertex"]
    names = set(v.data.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise InputError("PLY vertices lack x, y, z", path)
    try:
        pts = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("x", "y", "z")], axis=-1)
    except (TypeError, ValueError) as e:
        raise InputError(f"PLY coordinates are not numeric ({e})", path) from None
    if pts.shape[0] == 0:
        raise InputError("PLY file has no points", path)
    if not np.isfinite(pts).all():
        raise InputError("PLY points contain NaN or infinite coordinates", path)
    colors = None
    if {"red", "green", "blue"} <= names:
        c = np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], axis=-1)
        if np.issubdtype(c.dtype, np.integer):
            c = c.astype(np.float64) / (65535.0 if c.dtype.itemsize > 1 else 255.0)
        c = c.astype(np.float64)
        if not np.isfinite(c).all():
            raise InputError("PLY colours contain NaN or infinite values", path)
        colors = torch.from_numpy(np.clip(c, 0.0, 1.0)).float()
    return PointCloud(points=torch.from_numpy(pts).float(), colors=colors)
