"""What every scene loader shares: a per-frame description, up-front validation, lazy views.

A format-specific loader parses its metadata into :class:`FrameSpec` records (cameras already
in recon's convention: OpenCV camera-to-world, K with pixel centres at i + 0.5, at the
*original* image resolution) and calls :func:`build_views`. That function validates every
referenced file before returning anything (existence, readable header, consistent sizes, and
one full decode of every image, mask and depth file whose pixels are then dropped), then
hands out :class:`recon_core.View` objects whose pixels are read on access: decoded with the
EXIF orientation applied, undistorted onto a pinhole K when the frame has distortion (once, at
the original resolution; masks and depth by nearest-neighbour; see :mod:`.undistort`), then
resized to the requested ``downscale`` (images antialiased, masks by block selection, depth
nearest; see :mod:`.imageio`) with intrinsics scaled to match. ``downscale=None`` picks one
factor for the scene so that the long side is at most 1600 pixels, and says so in a warning.

Shared rules of the loaders: :func:`report_missing` (frames whose image is missing are skipped
with one warning, or an error with ``strict``) and :func:`hold_out_every` (every n-th frame is a
test view when the data has no split).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from recon_core import Bounds, Cameras, InputError, PointCloud, View, check_rigid
from recon_core.scene import CompositedImage, Split

from . import imageio, undistort
from .imageio import Size
from .undistort import Undistortion

__all__ = ["FrameSpec", "build_views", "bounds_from_points", "read_json", "as_matrix", "as_float", "resolve_file",
           "report_missing", "hold_out_every", "auto_downscale", "AUTO_LONG_SIDE", "finite_in_float32"]


@dataclass
class FrameSpec:
    """One view before loading.

    K: (3, 3) float64 intrinsics at ``size``; c2w: (4, 4) float64 OpenCV camera-to-world;
    size: (H, W) the metadata claims (None: take it from the image header), EXIF orientation applied;
    distortion: coefficients of ``distortion_model`` or None (undone at load, see :mod:`.undistort`);
    time in seconds or None.
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
    distortion_model: str = "opencv"
    """"opencv" (k1, k2, p1, p2[, k3[, k4, k5, k6]]) or "fisheye" (k1..k4); see :mod:`.undistort`."""
    time: float | None = None
    object_mask: Path | None = None
    sky_mask: Path | None = None
    dynamic_mask: Path | None = None
    depth: Path | None = None
    alpha_mask: bool = True
    source: Path | None = None
    """The metadata file that described this frame (for error messages)."""
    exif: bool = True
    """Apply the image's EXIF orientation tag (phones); False: use the pixels as stored."""


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


_F32_MAX = float(np.finfo(np.float32).max)


def finite_in_float32(arr: np.ndarray) -> bool:
    """Every value finite, also once cast to float32 (the precision cameras are used in)."""
    arr = np.asarray(arr, dtype=np.float64)
    return bool(np.isfinite(arr).all() and (np.abs(arr) <= _F32_MAX).all())


def as_float(value: Any, what: str, source: Path | None, *, positive: bool = False) -> float:
    """A finite number from metadata (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be a number, got {value!r}", source)
    v = float(value)
    if not math.isfinite(v) or abs(v) > _F32_MAX or (positive and v <= 0):
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
    if not finite_in_float32(arr):
        raise InputError(f"{what} has values too large for float32 (largest magnitude {np.abs(arr).max():.3g})", source)
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
def _decode_rgb_alpha(path: Path, size: Size, exif: bool, undistortion: Undistortion | None) -> tuple[Tensor, Tensor | None]:
    """Decode (EXIF orientation applied), undistort, then resize to ``size``. A tiny cache so
    reading ``view.image`` then ``view.alpha`` decodes the file once (two entries only: large
    images must not pile up in memory)."""
    rgb, alpha = imageio.read_rgb_alpha(path, None, exif)
    if undistortion is not None:
        rgb = undistortion.apply(rgb, "image")
        alpha = None if alpha is None else undistortion.apply(alpha, "image")
    if tuple(rgb.shape[:2]) != tuple(size):
        rgb = imageio.resize_image(rgb, size)
        alpha = None if alpha is None else imageio.resize_image(alpha[..., None], size)[..., 0]
    return rgb, alpha


def _image_reader(path: Path, size: Size, background: Tensor, exif: bool, und: Undistortion | None) -> CompositedImage:
    def read() -> Tensor:
        rgb, alpha = _decode_rgb_alpha(path, size, exif, und)
        return imageio.composite(rgb, alpha, background)  # a new tensor: the cache stays intact

    def read8() -> Tensor | None:
        """The file's 8-bit RGB(A) pixels when ``read`` composites exactly them (see CompositedImage)."""
        if und is not None:
            return None
        arr, _ = imageio.read_pixels(path, exif)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] not in (3, 4) or tuple(arr.shape[:2]) != tuple(size):
            return None
        return torch.from_numpy(np.array(arr, order="C"))  # a copy: PIL's buffer is read-only

    return CompositedImage(read, background, read8)


def _alpha_reader(path: Path, size: Size, exif: bool, und: Undistortion | None) -> Callable[[], Tensor]:
    def read() -> Tensor:
        alpha = _decode_rgb_alpha(path, size, exif, und)[1]
        assert alpha is not None
        return torch.from_numpy(alpha.numpy().copy())

    return read


def _undistort_discrete(values: Tensor, und: Undistortion | None, kind: str) -> Tensor:
    """Nearest-neighbour undistortion of a mask or depth map (first brought to the image's size
    by nearest selection when its file has another size)."""
    if und is None:
        return values
    if tuple(values.shape[:2]) != und.size:
        values = imageio.resize_nearest(values, und.size)
    return und.apply(values, kind)  # type: ignore[arg-type]


def _alpha_mask_reader(path: Path, size: Size, exif: bool, und: Undistortion | None) -> Callable[[], Tensor]:
    """Object mask from alpha: thresholded at the original resolution, undistorted by
    nearest-neighbour, then block-resized."""

    def read() -> Tensor:
        rgb, alpha = imageio.read_rgb_alpha(path, None, exif)
        assert alpha is not None
        return imageio.resize_mask(_undistort_discrete(alpha > 0.5, und, "mask"), size, "any")

    return read


def _mask_reader(path: Path, size: Size, keep: str, exif: bool, und: Undistortion | None) -> Callable[[], Tensor]:
    """A discrete mask read at full resolution, undistorted by nearest-neighbour, then
    block-resized (``keep``: see imageio)."""

    def read() -> Tensor:
        mask = _undistort_discrete(imageio.read_mask(path, exif=exif), und, "mask")
        return imageio.resize_mask(mask, size, keep)  # type: ignore[arg-type]

    return read


def _depth_reader(path: Path, size: Size, scale: float, und: Undistortion | None) -> Callable[[], Tensor]:
    def read() -> Tensor:
        return imageio.resize_nearest(_undistort_discrete(imageio.read_depth(path, scale), und, "depth"), size)

    return read


def report_missing(missing: Sequence[tuple[str, Path]], total: int, *, strict: bool, option: str) -> None:
    """Frames whose image file is missing are skipped, as instant-ngp does, with ONE warning
    giving their count and first names; ``strict`` makes the first one an InputError instead.

    Args:
        missing: (label such as "frame 4", image path) of each skipped frame, in file order.
        total: how many frames the metadata lists (missing ones included).
        option: the option that turns this into an error, e.g. "nerfstudio.strict".
    Raises:
        InputError naming the first missing file when ``strict``, or when every image is missing.
    """
    if not missing:
        return
    label, first = missing[0]
    if strict:
        raise InputError(f"image of {label} is missing ({len(missing)} of {total} frames have no image; "
                         f"without {option}=true they are skipped)", first)
    if len(missing) >= total:
        raise InputError(f"the images of all {total} frames are missing (first: {label})", first)
    names = ", ".join(p.name for _, p in missing[:3]) + (", ..." if len(missing) > 3 else "")
    warnings.warn(f"skipped {len(missing)} of {total} frames whose image file is missing: {names} "
                  f"(set {option}=true to stop instead)", stacklevel=2)


def hold_out_every(frames: Sequence[FrameSpec], n: int, option: str) -> None:
    """Split frames that come without a split: every ``n``-th in image-path order (indices n-1,
    2n-1, ...: 7, 15, 23 for the default 8) becomes "test", the others "train"; ``n == 0`` makes
    every frame "train". The one hold-out rule of every loader (colmap, idr, nerfstudio).

    Raises:
        InputError when ``n`` is negative (``option`` names the setting, e.g. "idr.test_every").
    """
    n = int(n)
    if n < 0:
        raise InputError(f"{option} must be >= 0 (0: every view is a training view), got {n}")
    order = sorted(range(len(frames)), key=lambda i: frames[i].image.as_posix())
    for rank, i in enumerate(order):
        frames[i].split = "test" if n > 0 and rank % n == n - 1 else "train"


AUTO_LONG_SIDE = 1600
"""Long side (pixels) that images are brought down to when a loader's ``downscale`` is unset."""


def auto_downscale(sizes: Sequence[Size], downscale: float | None, option: str) -> float:
    """``downscale`` when set; else the factor that brings the largest long side to at most
    :data:`AUTO_LONG_SIDE` pixels (1 when already small), announced by one warning."""
    if downscale is not None:
        return float(downscale)
    h, w = max(sizes, key=max)
    longest = max(h, w)
    if longest <= AUTO_LONG_SIDE:
        return 1.0
    factor = longest / AUTO_LONG_SIDE
    nh, nw = imageio.scaled_size((h, w), factor)
    warnings.warn(f"images are up to {w}x{h} pixels: downscaled by {factor:.4g} to {nw}x{nh} (long side at most "
                  f"{AUTO_LONG_SIDE}); set {option}=1 to keep full resolution", stacklevel=2)
    return factor


def _size_error(f: FrameSpec, info: imageio.ImageInfo, exif_option: str | None) -> InputError:
    said = f"{f.size[1]}x{f.size[0]}" if f.size else "?"
    where = f.source.name if f.source else "camera"
    if f.size is not None and info.orientation in (5, 6, 7, 8) and tuple(f.size) == info.stored:
        fix = f"set {exif_option}=false" if exif_option else "store the images upright"
        return InputError(
            f"image is {info.width}x{info.height} once its EXIF orientation ({info.orientation}) is applied, but the "
            f"metadata ({where}) says {said}, the size of the pixels as stored: the tool that wrote it ignored "
            f"EXIF orientation; {fix}",
            f.image,
        )
    return InputError(f"image is {info.width}x{info.height} but the metadata ({where}) says {said}", f.image)


def _verify_pixels(frames: Sequence[FrameSpec]) -> None:
    """Decode every image, mask and depth file once (thread pool, progress bar) and drop the
    pixels: a truncated or corrupt file (say, the last test view) fails now, naming the file,
    not after a whole training run. The views stay lazy."""
    checks: list[tuple[Path, Callable[[Path], None]]] = []
    for f in frames:
        checks.append((f.image, imageio.verify_image))
        checks += [(m, imageio.verify_image) for m in (f.object_mask, f.sky_mask, f.dynamic_mask) if m is not None]
        if f.depth is not None:
            checks.append((f.depth, imageio.verify_depth))
    imageio.verify_files(checks, f"checking {len(checks)} image files")


def build_views(
    frames: Sequence[FrameSpec],
    *,
    downscale: float | None = 1.0,
    background: Tensor | None = None,
    depth_scale: float = 0.001,
    same_size: bool = False,
    loader: str = "loader",
    exif_option: str | None = None,
) -> list[View]:
    """Validate every file of ``frames`` and return lazy views (see the module docstring).

    Distorted frames are undistorted once here (:mod:`.undistort`): the views get the new
    pinhole K and no ``Cameras.distortion``.

    Args:
        frames: parsed frames; K/size at the original resolution.
        downscale: divide image sizes by this (intrinsics scaled by new/old per axis); None:
            automatic, to a long side of at most :data:`AUTO_LONG_SIDE` (one warning says so).
        background: (3,) colour RGBA images are composited onto (default white).
        depth_scale: metres per unit of integer depth PNGs (``.npy`` depth is metric).
        same_size: the format requires one image size for all frames.
        loader: the loader's name, for messages ("nerfstudio" → "set nerfstudio.downscale=1").
        exif_option: the option that turns EXIF orientation off, named when sizes disagree.
    Raises:
        InputError naming the first bad file; nothing is returned half-loaded.
    """
    if not frames:
        raise InputError("no frames to load")
    bg = imageio.parse_background("white") if background is None else background
    infos: list[imageio.ImageInfo] = []
    sizes: dict[Size, Path] = {}
    for f in frames:
        info = imageio.probe_image(f.image, f.exif)
        if f.size is not None and tuple(f.size) != info.size:
            raise _size_error(f, info, exif_option)
        sizes.setdefault(info.size, f.image)
        if same_size and len(sizes) > 1:
            (a, pa), (b, _) = list(sizes.items())[:2]
            raise InputError(f"images have mixed sizes: {pa.name} is {a[1]}x{a[0]}, this one is {b[1]}x{b[0]}", f.image)
        for mask in (f.object_mask, f.sky_mask, f.dynamic_mask):
            if mask is not None:
                imageio.probe_image(mask)
        if f.depth is not None:
            imageio.probe_depth(f.depth, depth_scale)
        K = np.asarray(f.K, dtype=np.float64)
        if not finite_in_float32(K) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InputError(f"intrinsics of {f.name} must be finite (in float32) with positive focal lengths, got {f.K.tolist()}", f.source or f.image)
        if not finite_in_float32(np.asarray(f.c2w, dtype=np.float64)):
            raise InputError(f"camera pose of {f.name} contains NaN, infinite or values too large for float32", f.source or f.image)
        check_rigid(torch.as_tensor(f.c2w, dtype=torch.float64), str(f.source or f.image))
        if f.distortion is not None and not finite_in_float32(np.asarray(f.distortion, dtype=np.float64)):
            raise InputError(f"distortion of {f.name} contains non-finite values", f.source or f.image)
        infos.append(info)
    _verify_pixels(frames)
    factor = auto_downscale([i.size for i in infos], downscale, f"{loader}.downscale")
    views: list[View] = []
    for f, info in zip(frames, infos):
        und = undistort.plan(f.K, f.distortion, f.distortion_model, info.size)  # type: ignore[arg-type]
        K0 = torch.as_tensor(und.new_K_array if und is not None else f.K, dtype=torch.float64)
        new_size = imageio.scaled_size(info.size, factor)
        K = imageio.scale_intrinsics(K0, info.size, new_size)
        camera = Cameras.create(
            K.float(),
            torch.as_tensor(f.c2w, dtype=torch.float64).float(),
            new_size[1],
            new_size[0],
            times=None if f.time is None else [f.time],
        )
        alpha_lazy = _alpha_reader(f.image, new_size, f.exif, und) if info.has_alpha else None
        object_mask = None
        if f.object_mask is not None:
            object_mask = _mask_reader(f.object_mask, new_size, "any", f.exif, und)
        elif f.alpha_mask and info.has_alpha:
            object_mask = _alpha_mask_reader(f.image, new_size, f.exif, und)
        views.append(
            View(
                f.name,
                camera,
                _image_reader(f.image, new_size, bg, f.exif, und),
                f.split,
                alpha=alpha_lazy,
                object_mask=object_mask,
                # Sky: "all" keeps every block that touches a non-sky pixel non-sky (thin lamps survive).
                sky_mask=None if f.sky_mask is None else _mask_reader(f.sky_mask, new_size, "all", f.exif, und),
                dynamic_mask=None if f.dynamic_mask is None else _mask_reader(f.dynamic_mask, new_size, "any", f.exif, und),
                depth=None if f.depth is None else _depth_reader(f.depth, new_size, depth_scale, und),
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
        try:
            c = np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], axis=-1)
            if c.dtype == object:
                raise TypeError("a colour property is a list")
        except (TypeError, ValueError) as e:
            raise InputError(f"PLY colours are not numeric ({e})", path) from None
        if np.issubdtype(c.dtype, np.integer):
            c = c.astype(np.float64) / (65535.0 if c.dtype.itemsize > 1 else 255.0)
        c = c.astype(np.float64)
        if not np.isfinite(c).all():
            raise InputError("PLY colours contain NaN or infinite values", path)
        colors = torch.from_numpy(np.clip(c, 0.0, 1.0)).float()
    return PointCloud(points=torch.from_numpy(pts).float(), colors=colors)
