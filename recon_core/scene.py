"""What loaders produce: scenes of posed views, and videos of frames.

Pixel data may be *lazy*: a loader validates every file up front (so nothing half-loaded is
passed on) but can hand over a zero-argument callable instead of a tensor, which is read only
when the attribute is accessed. Large inputs therefore never need all pixels in memory.
Images are float32 in [0, 1] with shape (H, W, 3); masks are bool (H, W); depth is float32
(H, W) z-depth along the optical axis (0 = unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .cameras import Cameras

__all__ = ["Lazy", "View", "Scene", "PointCloud", "Bounds", "Video", "Split", "CompositedImage", "CompactImage", "composite", "composite8"]

Split = Literal["train", "val", "test"]
Lazy = Union[Tensor, Callable[[], Tensor], None]
"""A tensor, a zero-argument callable that reads it, or None when absent."""


def _resolve(value: Lazy) -> Tensor | None:
    return value() if callable(value) else value


class _LazyField:
    """Descriptor: stores a Lazy value, returns the tensor on access (read on every access)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: object, objtype: type | None = None) -> Tensor | None:
        if obj is None:
            return self  # type: ignore[return-value]
        return _resolve(getattr(obj, self.slot))

    def __set__(self, obj: object, value: Lazy) -> None:
        setattr(obj, self.slot, value)


def composite(rgb: Tensor, alpha: Tensor | None, background: Tensor) -> Tensor:
    """RGB (H, W, 3) float32 over ``background`` (3,) with alpha (H, W) (straight, not premultiplied):
    ``rgb a + background (1 - a)`` in float32, what the loaders' image readers and
    :func:`composite8` both use, so their floats are the same.

    Always returns a new tensor (inputs may be cached). Computed in numpy: small element-wise
    torch ops are slow on a loaded machine (intra-op thread start-up), numpy is not.
    """
    r = rgb.numpy()
    if alpha is None:
        return torch.from_numpy(r.copy())
    a = alpha.numpy()[..., None]
    bg = background.detach().cpu().numpy().astype(np.float32)
    return torch.from_numpy((r * a + bg * (1.0 - a)).astype(np.float32, copy=False))


def composite8(pixels: Tensor, background: Tensor) -> tuple[Tensor, Tensor | None]:
    """8-bit RGB or RGBA pixels (H, W, 3 | 4) uint8 → (RGB float32 (H, W, 3) composited on
    ``background`` (3,), alpha float32 (H, W) or None), in [0, 1]: ``x / 255`` in float32 (as the
    loaders' decoder) then :func:`composite`."""
    unit = torch.from_numpy(pixels.numpy().astype(np.float32) / 255.0)
    if unit.shape[-1] == 3:
        return composite(unit, None, background), None
    alpha = unit[..., 3].contiguous()
    return composite(unit[..., :3], alpha, background), alpha


class CompositedImage:
    """A lazy ``View.image`` (see :data:`Lazy`) that is an image file composited on ``background``.

    Calling it reads the image (``read``). ``read8`` gives the file's own 8-bit pixels (H, W, 3
    or 4) uint8 when ``read()`` and the view's alpha are exactly :func:`composite8` of them on
    ``background`` (no resize, undistortion or other bit depth), else None: what lets
    :class:`CompactImage` keep a training target in 4 bytes a pixel instead of 12.
    """

    def __init__(self, read: Callable[[], Tensor], background: Tensor, read8: Callable[[], Tensor | None] | None = None) -> None:
        self.read, self.background, self.read8 = read, background.detach().cpu().float().contiguous(), read8

    def __call__(self) -> Tensor:
        return self.read()


def _clear_colour(image: Tensor, a: Tensor, background: Tensor) -> Tensor:
    """The colour an alpha image is on: the median of its fully transparent pixels (else ``background``)."""
    clear = image[a[..., 0] < 1.0 / 255.0]
    return clear.median(dim=0).values if len(clear) else background


def _replace_background(image: Tensor, a: Tensor, current: Tensor, background: Tensor) -> Tensor:
    """``image`` (on ``current``, coverage ``a`` (H, W, 1)) re-composited onto ``background``."""
    return (image + (background - current) * (1.0 - a)).clamp(0.0, 1.0)


class CompactImage:
    """``View.image_on(background)`` of a view read from 8-bit pixels, kept as those pixels (the
    loader's :class:`CompositedImage`) and remade by :meth:`image` with the same operations, so
    bit for bit the same tensor; made by :meth:`View.compact_image_on`."""

    def __init__(self, pixels: Tensor, loaded_on: Tensor, background: Tensor) -> None:
        self.pixels, self.loaded_on, self.background = pixels, loaded_on, background.detach().cpu().float().contiguous()
        image, alpha = composite8(pixels, loaded_on)
        self.current = None if alpha is None else _clear_colour(image, alpha[..., None], self.background)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel() * self.pixels.element_size()

    def image(self) -> Tensor:
        """The target: (H, W, 3) float32."""
        image, alpha = composite8(self.pixels, self.loaded_on)
        if alpha is None or self.current is None:
            return image
        return _replace_background(image, alpha[..., None], self.current, self.background)


class View:
    """One posed image with its optional per-pixel data.

    Attributes:
        name: stable identifier (usually the file stem), used in metrics and render names.
        camera: a single camera (``len(camera) == 1``).
        split: "train", "val" or "test".
        image: float32 (H, W, 3) in [0, 1].
        alpha: float32 (H, W) in [0, 1] or None.
        object_mask / sky_mask / dynamic_mask: bool (H, W) or None.
        depth: float32 (H, W) z-depth, 0 where unknown, or None.
        confidence: float32 (H, W) per-pixel confidence in [0, 1] (e.g. from a depth network) or None.
        path: the image file, for error messages.
    """

    image = _LazyField()
    alpha = _LazyField()
    object_mask = _LazyField()
    sky_mask = _LazyField()
    dynamic_mask = _LazyField()
    depth = _LazyField()
    confidence = _LazyField()

    def __init__(
        self,
        name: str,
        camera: Cameras,
        image: Lazy,
        split: Split = "train",
        *,
        alpha: Lazy = None,
        object_mask: Lazy = None,
        sky_mask: Lazy = None,
        dynamic_mask: Lazy = None,
        depth: Lazy = None,
        confidence: Lazy = None,
        path: Path | None = None,
    ) -> None:
        assert len(camera) == 1, "a View holds exactly one camera"
        self.name = name
        self.camera = camera
        self.split = split
        self.image = image
        self.alpha = alpha
        self.object_mask = object_mask
        self.sky_mask = sky_mask
        self.dynamic_mask = dynamic_mask
        self.depth = depth
        self.confidence = confidence
        self.path = path

    def has(self, attribute: str) -> bool:
        """Whether the optional per-pixel attribute (e.g. "sky_mask") is present, without reading it."""
        return getattr(self, "_" + attribute) is not None

    @property
    def height(self) -> int:
        return int(self.camera.height[0])

    @property
    def width(self) -> int:
        return int(self.camera.width[0])

    @property
    def time(self) -> float | None:
        return None if self.camera.times is None else float(self.camera.times[0])

    def image_on(self, background: Tensor) -> Tensor:
        """The image this view should render to over ``background`` [3]: (H, W, 3) float32.

        A view with alpha is re-composited onto ``background`` (its current background is the
        median colour of its fully transparent pixels); a view with only an object mask gets
        ``background`` outside the mask; other views are returned unchanged. This is the target
        every refiner compares renders with, so renders and targets share one background.
        """
        image = self.image.float()
        bg = background.to(image)
        if self.has("alpha"):
            a = self.alpha.float()[..., None]
            return _replace_background(image, a, _clear_colour(image, a, bg), bg)
        if self.has("object_mask"):
            return torch.where(self.object_mask.to(torch.bool)[..., None], image, bg)
        return image

    def compact_image_on(self, background: Tensor) -> CompactImage | None:
        """:meth:`image_on` as a :class:`CompactImage` (the 8-bit pixels, remade on demand) when
        the loader can give them (its ``image`` is a :class:`CompositedImage` with 8-bit pixels;
        with alpha, or with neither alpha nor an object mask), else None. Callers that keep it
        compare ``image()`` with :meth:`image_on` once (:class:`recon_core.optim.TargetCache` does)."""
        source = self._image  # type: ignore[attr-defined]
        if not isinstance(source, CompositedImage) or source.read8 is None:
            return None
        if not self.has("alpha") and self.has("object_mask"):
            return None
        pixels = source.read8()
        if pixels is None or pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[-1] != (4 if self.has("alpha") else 3):
            return None
        return CompactImage(pixels, source.background, background.float())

    def __repr__(self) -> str:
        return f"View({self.name!r}, {self.width}x{self.height}, split={self.split!r})"


@dataclass(frozen=True)
class PointCloud:
    """points [P, 3] float32 world coordinates; colors [P, 3] float32 in [0, 1] or None."""

    points: Tensor
    colors: Tensor | None = None

    def __len__(self) -> int:
        return self.points.shape[0]


@dataclass(frozen=True)
class Bounds:
    """A bounding sphere of the region of interest (world units)."""

    center: Tensor  # [3]
    radius: float

    @staticmethod
    def from_cameras(cameras: Cameras) -> "Bounds":
        """Sphere around the camera centres (nerfstudio/gsplat 'scene extent' habit)."""
        c = cameras.centers
        center = c.mean(0)
        radius = float((c - center).norm(dim=-1).max()) if len(cameras) > 1 else 1.0
        return Bounds(center=center, radius=max(radius, 1e-6))


@dataclass
class Scene:
    """Posed views of one scene.

    ``bounds`` is the region reconstruction should cover; ``point_cloud`` an optional initial
    point cloud (COLMAP points, ``ply_file_path``); ``gt_mesh_path`` an optional ground-truth
    surface for geometry metrics.
    """

    name: str
    views: list[View]
    bounds: Bounds
    point_cloud: PointCloud | None = None
    gt_mesh_path: Path | None = None
    source: Path | None = None
    poses_known: bool = True
    """False when the loader had no poses (cameras are placeholders, e.g. for DGGT to predict)."""

    def split(self, split: Split) -> list[View]:
        return [v for v in self.views if v.split == split]

    @property
    def train_views(self) -> list[View]:
        return self.split("train")

    @property
    def eval_views(self) -> list[View]:
        """The test split when there is one, else every view."""
        return self.split("test") or list(self.views)

    def cameras(self, views: Sequence[View] | None = None) -> Cameras:
        return Cameras.cat([v.camera for v in (self.views if views is None else views)])

    @property
    def is_dynamic(self) -> bool:
        return any(v.time is not None for v in self.views)


@dataclass
class Video:
    """Frames of a video, read lazily through ``read_frame``; no cameras.

    ``read_frame(i)`` returns float32 (H, W, 3) in [0, 1]. ``timestamps`` [T] in seconds.
    """

    name: str
    num_frames: int
    width: int
    height: int
    fps: float
    read_frame: Callable[[int], Tensor]
    gop_length: int = 10
    source: Path | None = None
    timestamps: Tensor = field(default=None)  # type: ignore[assignment]
    gop_starts: list[int] | None = None
    """First frame of each GoP when the data defines its GoPs (one folder of frames per GoP);
    ``gops()`` then follows them instead of ``gop_length``."""

    def __post_init__(self) -> None:
        if self.timestamps is None:
            self.timestamps = torch.arange(self.num_frames, dtype=torch.float32) / float(self.fps)

    def __len__(self) -> int:
        return self.num_frames

    def frame(self, i: int) -> Tensor:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range 0..{self.num_frames - 1}")
        return self.read_frame(i)

    def frames(self, indices: Sequence[int] | range | None = None) -> Iterator[Tensor]:
        for i in range(self.num_frames) if indices is None else indices:
            yield self.frame(i)

    def gops(self, length: int | None = None) -> list[range]:
        """Consecutive groups of pictures covering every frame exactly once: the data's own
        (``gop_starts``) when ``length`` is None and it has them, else runs of ``length`` frames."""
        if length is None and self.gop_starts:
            bounds = [*self.gop_starts, self.num_frames]
            return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        n = self.gop_length if length is None else length
        if n < 1:
            raise ValueError("GoP length must be >= 1")
        return [range(s, min(s + n, self.num_frames)) for s in range(0, self.num_frames, n)]
