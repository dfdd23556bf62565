"""Shared image, mask and depth reading for every loader, plus resizing.

One place decides how pixels are read and resized, so all loaders agree:

* **Images** (RGB, alpha): float32 in [0, 1], resized with an antialiased filter
  (``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``):
  when downscaling its support widens with the factor, so it averages every input pixel that
  falls in an output pixel's footprint (an area-style filter); sample positions follow the
  pixel-centre-at-i+0.5 convention, so intrinsics scale by ``new/old`` with no offset.
* **Discrete masks** (object, sky, dynamic): bool, resized only by *block selection*, never by
  interpolation. Each output pixel covers the input footprint ``[i*s, (i+1)*s)`` (s = old/new)
  and takes either "any input pixel in the footprint is True" (``keep="any"``, a max-pool) or
  "all are True" (``keep="all"``, a min-pool). Every output value is one of the input values.
  Which to use is decided per mask so that *thin structures survive*: an object or dynamic mask
  uses ``"any"`` (a 1-pixel pole stays foreground), a sky mask uses ``"all"`` (a block that
  contains any non-sky pixel — a street lamp — stays non-sky). Plain nearest sampling (one
  sample per block) cannot guarantee this: at 2x it keeps only every other column, so a
  1-pixel line on an odd column disappears.
* **Depth**: plain nearest (the sample closest to the footprint centre), so foreground and
  background depths are never averaged into a floating value; 0 stays "unknown".

EXIF orientation (phone photos) is applied by default to sizes and pixels alike
(``PIL.ImageOps.exif_transpose``); ``exif=False`` keeps the pixels as stored.

Readers validate up front with :func:`probe_image` (existence + a readable header, no pixel
decode), then :func:`verify_files` decodes every file once (a thread pool, a progress bar) and
drops the pixels, so a truncated or corrupt file fails at load rather than when a late view is
first decoded; views still decode lazily, inside the callables loaders hand to
:class:`recon_core.View`. Images larger than :func:`max_pixels` (PIL's decompression-bomb
limit, ``PIL.Image.MAX_IMAGE_PIXELS``) are refused. Every problem becomes an
:class:`recon_core.InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from recon_core import InputError
from recon_core.scene import composite  # noqa: F401 - the loaders' compositing (shared with TargetCache's compact targets)
from recon_core.threads import available_cpus

__all__ = [
    "ImageInfo",
    "probe_image",
    "verify_image",
    "verify_depth",
    "verify_files",
    "max_pixels",
    "read_pixels",
    "read_rgb_alpha",
    "read_mask",
    "read_depth",
    "probe_depth",
    "resize_image",
    "resize_mask",
    "resize_nearest",
    "scaled_size",
    "scale_intrinsics",
    "parse_background",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

Size = tuple[int, int]
"""(height, width) in pixels."""


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about an image file: (height, width) as displayed, PIL mode, channels.

    ``orientation`` is the EXIF orientation tag (1 = none; 5-8 swap width and height). With
    ``exif=True`` (the default) ``height``/``width`` are those of the image after that
    orientation is applied; ``stored`` is always the (H, W) of the pixels as stored.
    """

    path: Path
    height: int
    width: int
    mode: str
    orientation: int = 1
    stored: Size | None = None

    @property
    def size(self) -> Size:
        return (self.height, self.width)

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("RGBA", "LA", "PA") or self.mode.endswith("A")


_EXIF_ORIENTATION = 0x0112
_TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except (TypeError, ValueError, OSError, SyntaxError):  # a malformed EXIF block: ignore it
        return 1
    return value if 1 <= value <= 8 else 1


_DEFAULT_MAX_PIXELS = 16384 * 16384


def max_pixels() -> int:
    """The largest image (width x height) recon decodes: PIL's ``Image.MAX_IMAGE_PIXELS`` (its
    decompression-bomb limit, about 89 million pixels by default; ``None`` there means
    16384 x 16384). A larger image is an InputError naming the file, not a memory blow-up."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else _DEFAULT_MAX_PIXELS


def _too_large(path: Path, w: int, h: int) -> InputError:
    return InputError(
        f"image is {w}x{h} ({w * h / 1e6:.1f} million pixels), more than the limit of {max_pixels() / 1e6:.1f} million "
        f"(a decompression bomb or a far too large image); downscale it first", path,
    )


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` with PIL's decompression-bomb error (and its warning, when warnings are
    errors) and any image above :func:`max_pixels` turned into an InputError naming the file."""
    try:
        im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image is too large to decode safely ({e}); downscale it first", path) from None
    with im:
        w, h = im.size
        if w * h > max_pixels():
            raise _too_large(path, w, h)
        yield im


def probe_image(path: Path, exif: bool = True) -> ImageInfo:
    """Check ``path`` exists and has a readable image header (pixels are not decoded).

    With ``exif`` the size is the displayed one (EXIF orientation applied, as phones expect).
    An image above :func:`max_pixels` is an InputError (decompression bombs included).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file is missing", path)
    try:
        with warnings.catch_warnings():  # the size is checked against max_pixels() instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _opened(path) as im:
                w, h = im.size
                mode = im.mode
                orientation = _orientation(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"not a readable image ({e})", path) from None
    if w < 1 or h < 1:
        raise InputError(f"image has an empty size {w}x{h}", path)
    stored = (h, w)
    if exif and orientation in _TRANSPOSING:
        w, h = h, w
    return ImageInfo(path, h, w, mode, orientation if exif else 1, stored)


def read_pixels(path: Path, exif: bool = True) -> tuple[np.ndarray, str]:
    """Decode an image file fully: (array (H, W) or (H, W, C) in its native dtype, PIL mode).

    With ``exif`` the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so
    phone photos come out the way they are displayed; see :func:`probe_image`.
    """
    path = Path(path)
    try:
        with _opened(path) as im:
            im.load()
            if exif and _orientation(im) != 1:
                im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("L" if mode == "1" else "RGB")
                mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise InputError("file is missing", path) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"image cannot be decoded ({e})", path) from None
    return arr, mode


def _to_unit_float(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer or float pixels → float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype in (np.int32, np.uint32, np.int16):  # PIL "I"/"I;16" modes
        return arr.astype(np.float32) / (65535.0 if arr.max(initial=0) > 255 else 255.0)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise InputError(f"unsupported pixel type {arr.dtype}", path)


def read_rgb_alpha(path: Path, size: Size | None = None, exif: bool = True) -> tuple[Tensor, Tensor | None]:
    """Read an image as RGB float32 (H, W, 3) in [0, 1] and alpha float32 (H, W) or None.

    ``size`` (height, width) resizes both with :func:`resize_image` (alpha too: it is a
    continuous coverage value, not a discrete mask). Grey images are repeated to 3 channels.
    Colour is *not* composited here; see :func:`composite`. ``exif``: see :func:`read_pixels`.
    """
    arr, _ = read_pixels(path, exif)
    arr = _to_unit_float(arr, Path(path))
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if channels == 1:
        rgb, alpha = np.repeat(arr, 3, axis=-1), None
    elif channels == 2:
        rgb, alpha = np.repeat(arr[..., :1], 3, axis=-1), arr[..., 1]
    elif channels >= 3:
        rgb, alpha = arr[..., :3], (arr[..., 3] if channels >= 4 else None)
    else:  # pragma: no cover - numpy never yields 0 channels here
        raise InputError("image has no channels", path)
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb))
    alpha_t = None if alpha is None else torch.from_numpy(np.ascontiguousarray(alpha))
    if size is not None and tuple(rgb_t.shape[:2]) != tuple(size):
        rgb_t = resize_image(rgb_t, size)
        alpha_t = None if alpha_t is None else resize_image(alpha_t[..., None], size)[..., 0]
    return rgb_t, alpha_t


def read_mask(path: Path, size: Size | None = None, keep: Literal["any", "all", "nearest"] = "any", threshold: float = 0.5,
              exif: bool = True) -> Tensor:
    """Read a discrete mask as bool (H, W): True where the first channel's value > ``threshold``.

    ``threshold`` is a fraction of full scale (0.5 → grey > 127.5 for 8-bit files). Masks are
    grey images (255 = True); of a colour or grey+alpha file only the first channel is used.
    ``size`` resizes with :func:`resize_mask` using ``keep``. ``exif``: see :func:`read_pixels`.
    """
    arr, _ = read_pixels(path, exif)
    arr = _to_unit_float(arr, Path(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    mask = torch.from_numpy(np.ascontiguousarray(arr > threshold))
    if size is not None and tuple(mask.shape) != tuple(size):
        mask = resize_mask(mask, size, keep)
    return mask


def probe_depth(path: Path, scale: float) -> Size:
    """Validate a depth file (``.npy`` header, or 16-bit PNG header) and return its (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("depth file is missing", path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"not a readable .npy file ({e})", path) from None
        shape = arr.shape
        if arr.ndim == 3 and shape[-1] == 1:
            shape = shape[:2]
        if len(shape) != 2 or not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"depth must be a numeric (H, W) array, got {arr.dtype} {tuple(arr.shape)}", path)
        return (int(shape[0]), int(shape[1]))
    info = probe_image(path)
    if info.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "F"):
        raise InputError(f"depth image must be a single-channel (16-bit) image, got mode {info.mode}", path)
    return info.size


def read_depth(path: Path, scale: float, size: Size | None = None) -> Tensor:
    """Read z-depth float32 (H, W), 0 = unknown.

    ``.npy`` holds metric depth directly; an integer PNG holds ``depth / scale`` (e.g. scale
    0.001 for millimetres, nerfstudio's convention). Non-finite or negative values become 0.
    Resizing uses :func:`resize_nearest` (never mixes foreground and background depths).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"not a readable .npy file ({e})", path) from None
        arr = arr.reshape(arr.shape[0], arr.shape[1]) if arr.ndim == 3 else arr
    else:
        raw, _ = read_pixels(path)
        arr = raw.astype(np.float32) * float(scale)
        if arr.ndim == 3:
            arr = arr[..., 0]
    arr = np.where(np.isfinite(arr) & (arr > 0), arr, 0.0).astype(np.float32)
    depth = torch.from_numpy(np.ascontiguousarray(arr))
    if size is not None and tuple(depth.shape) != tuple(size):
        depth = resize_nearest(depth, size)
    return depth


# ---------------------------------------------------------------------------------- verifying


def verify_image(path: Path) -> None:
    """Decode ``path`` fully once and drop the pixels: InputError naming it when the file is
    truncated or corrupt, or larger than :func:`max_pixels`."""
    path = Path(path)
    try:
        with _opened(path) as im:
            im.load()
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError("file is missing", path) from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error… on broken files
        raise InputError(f"image cannot be decoded ({type(e).__name__}: {e}); the file is truncated or corrupt", path) from None


def verify_depth(path: Path) -> None:
    """Decode a depth file (``.npy`` or image) fully once; InputError naming it when corrupt."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        verify_image(path)
        return
    try:
        np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - truncated arrays raise ValueError/EOFError/OSError
        raise InputError(f"not a readable .npy file ({type(e).__name__}: {e}); the file is truncated or corrupt", path) from None


def verify_files(checks: Sequence[tuple[Path, Callable[[Path], None]]], description: str = "checking images",
                 workers: int | None = None) -> None:
    """Run every ``check(path)`` (e.g. :func:`verify_image`) in a thread pool, with a progress
    bar; raise the InputError of the first failing file (in ``checks`` order among those done)
    and skip the rest. PIL and numpy decode without the GIL, so threads use every core."""
    checks = list(dict.fromkeys((Path(p), fn) for p, fn in checks))  # each file once
    if not checks:
        return
    from concurrent.futures import FIRST_EXCEPTION, wait

    from recon_core.progress import progress_bar

    n = workers or min(8, available_cpus(), len(checks))
    errors: dict[int, BaseException] = {}
    with progress_bar(description, total=len(checks)) as advance, ThreadPoolExecutor(max_workers=n) as pool:
        futures = {pool.submit(fn, p): i for i, (p, fn) in enumerate(checks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    errors[futures[fut]] = fut.exception()  # type: ignore[assignment]
            advance(len(done))
            if errors:
                for fut in pending:
                    fut.cancel()
                break
    if errors:
        raise errors[min(errors)]


# ------------------------------------------------------------------------------------ resizing


def scaled_size(size: Size, downscale: float) -> Size:
    """(H, W) divided by ``downscale`` and rounded, at least 1 pixel each."""
    if not downscale > 0:
        raise InputError(f"downscale must be > 0, got {downscale}")
    h, w = size
    return (max(1, int(round(h / downscale))), max(1, int(round(w / downscale))))


def scale_intrinsics(K: Tensor, old: Size, new: Size) -> Tensor:
    """K [..., 3, 3] for images resized from ``old`` to ``new`` (H, W).

    With pixel centres at i + 0.5, a resize by (sx, sy) maps x → x·sx exactly, so fx, cx scale
    by sx and fy, cy by sy, with no half-pixel offset.
    """
    sx = new[1] / old[1]
    sy = new[0] / old[0]
    K = K.clone()
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def resize_image(image: Tensor, size: Size) -> Tensor:
    """Antialiased resize of float (H, W, C) to ``size`` (H', W'); see the module notes."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    x = image.permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).clamp(0.0, 1.0).contiguous()


def _footprints(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index, the [start, end) input indices its footprint [i*s, (i+1)*s) touches."""
    s = n_in / n_out
    i = np.arange(n_out, dtype=np.float64)
    start = np.floor(i * s + 1e-9).astype(np.int64)
    end = np.ceil((i + 1) * s - 1e-9).astype(np.int64)
    end = np.maximum(end, start + 1)
    return np.clip(start, 0, n_in - 1), np.clip(end, 1, n_in)


def resize_mask(mask: Tensor, size: Size, keep: Literal["any", "all", "nearest"] = "any") -> Tensor:
    """Resize a bool (H, W) mask without interpolation (see the module notes).

    keep="any": an output pixel is True when any input pixel of its footprint is True (thin
    True structures survive any downscale). keep="all": True only when all are (thin False
    structures survive, e.g. lamp posts in a sky mask). keep="nearest": one sample, the pixel
    nearest the footprint centre. Works for any factor, up or down.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"resize_mask needs a bool mask, got {mask.dtype}")
    if tuple(mask.shape) == tuple(size):
        return mask
    if keep == "nearest":
        return resize_nearest(mask, size)
    h, w = mask.shape
    ys, ye = _footprints(h, size[0])
    xs, xe = _footprints(w, size[1])
    # Integral image: the count of True pixels in any rectangle in O(1).
    m = mask.numpy().astype(np.int64)
    ii = np.zeros((h + 1, w + 1), dtype=np.int64)
    ii[1:, 1:] = m.cumsum(0).cumsum(1)
    count = ii[ye][:, xe] - ii[ys][:, xe] - ii[ye][:, xs] + ii[ys][:, xs]
    if keep == "any":
        out = count > 0
    elif keep == "all":
        area = (ye - ys)[:, None] * (xe - xs)[None, :]
        out = count == area
    else:
        raise ValueError(f"keep must be 'any', 'all' or 'nearest', not {keep!r}")
    return torch.from_numpy(out)


def resize_nearest(values: Tensor, size: Size) -> Tensor:
    """Nearest-neighbour resize of (H, W[, C]): the input pixel whose centre is closest."""
    if tuple(values.shape[:2]) == tuple(size):
        return values
    h, w = values.shape[:2]
    iy = np.minimum(np.floor((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    ix = np.minimum(np.floor((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return values[torch.from_numpy(iy)][:, torch.from_numpy(ix)].contiguous()


def parse_background(value: tuple[float, ...] | list[float] | str, where: str = "background") -> Tensor:
    """A background colour option → float32 (3,) in [0, 1]: "white", "black" or (r, g, b)."""
    if isinstance(value, str):
        named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5), "gray": (0.5, 0.5, 0.5)}
        if value.lower() in named:
            value = named[value.lower()]
        else:
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise InputError(f"{where} must be white, black, grey or 'r,g,b' in [0, 1], got {value!r}") from None
    t = torch.as_tensor([float(v) for v in value], dtype=torch.float32)
    if t.shape != (3,) or not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise InputError(f"{where} must be three numbers in [0, 1], got {list(value)}")
    return t


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` sorted by name (hidden files skipped)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
