"""Lens undistortion at load time (OpenCV), once per view, so every later stage sees pinholes.

recon's renderers are pinhole cameras, so a loader that reads distortion coefficients removes
the distortion from the pixels instead of passing the coefficients on: :func:`plan` computes a
new pinhole ``K`` and :class:`Undistortion` resamples the image and every per-pixel field onto it.
The views then carry that ``K`` and ``Cameras.distortion`` is None.

Models (coefficients in OpenCV order):

* ``"opencv"``: ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])`` — OpenCV's radial-tangential model
  (``cv2.initUndistortRectifyMap``), what COLMAP's OPENCV/RADIAL/SIMPLE_RADIAL and nerfstudio's
  / instant-ngp's ``k1 k2 p1 p2 [k3]`` mean.
* ``"fisheye"``: ``(k1, k2, k3, k4)`` — OpenCV's equidistant fisheye model
  (``cv2.fisheye.initUndistortRectifyMap``), nerfstudio's OPENCV_FISHEYE.

**The new K.** Not the same K: with barrel distortion the corners of an image undistorted onto
the same K have no source pixels (black wedges that a reconstruction would learn as black
geometry). We take ``cv2.getOptimalNewCameraMatrix(K, D, size, alpha=0)`` (fisheye:
``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(..., balance=0)``): the pinhole K, at
the same image size, whose every pixel has a source pixel — a slight zoom that drops the
distorted border. The image size never changes.

**Sampling.** One pair of float32 maps per view (``initUndistortRectifyMap``, the maps
``cv2.undistort`` builds internally), applied with ``cv2.remap``: bilinear for images and alpha,
**nearest** for discrete masks and depth (masks are never interpolated; depth values of
foreground and background are never mixed). Borders replicate (the new K keeps them inside the
image anyway), except depth, which gets 0 = unknown outside.

**Pixel centres.** recon puts pixel centres at i + 0.5, OpenCV at i: K is shifted by -0.5 in
cx, cy before OpenCV sees it and the new K is shifted back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from recon_core import InputError

__all__ = ["Undistortion", "plan", "MODELS"]

Model = Literal["opencv", "fisheye"]
MODELS: tuple[str, ...] = ("opencv", "fisheye")


def _cv2():  # noqa: ANN202 - the cv2 module
    try:
        import cv2
    except ImportError:  # pragma: no cover - a declared dependency
        raise InputError("undistorting images needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def _to_cv(K: np.ndarray) -> np.ndarray:
    out = np.array(K, dtype=np.float64)
    out[0, 2] -= 0.5
    out[1, 2] -= 0.5
    return out


def _from_cv(K: np.ndarray) -> np.ndarray:
    out = np.array(K, dtype=np.float64)
    out[0, 2] += 0.5
    out[1, 2] += 0.5
    return out


def _coefficients(distortion: np.ndarray, model: Model) -> np.ndarray:
    d = np.asarray(distortion, dtype=np.float64).ravel()
    if model == "fisheye":
        if len(d) > 4 and np.any(d[4:]):
            raise InputError(f"fisheye distortion has 4 coefficients (k1..k4), got {len(d)}")
        return np.pad(d[:4], (0, max(0, 4 - len(d))))
    n = next(k for k in (4, 5, 8, 12, 14) if k >= len(d)) if len(d) <= 14 else None
    if n is None:
        raise InputError(f"OpenCV distortion has at most 14 coefficients, got {len(d)}")
    return np.pad(d, (0, n - len(d)))


@dataclass(frozen=True)
class Undistortion:
    """How to undistort one view: original ``K`` (recon convention), coefficients, model, and
    the pinhole ``new_K`` (recon convention) at the same ``size`` (H, W). Hashable, so decoded
    maps are cached per view."""

    K: tuple[tuple[float, ...], ...]
    coefficients: tuple[float, ...]
    model: Model
    size: tuple[int, int]
    new_K: tuple[tuple[float, ...], ...]

    @property
    def new_K_array(self) -> np.ndarray:
        return np.array(self.new_K, dtype=np.float64)

    def apply(self, values: Tensor, kind: Literal["image", "mask", "depth"]) -> Tensor:
        """Resample (H, W[, C]) ``values`` (at ``size``) onto ``new_K``.

        kind="image": bilinear (float images, alpha); "mask": nearest, bool in → bool out;
        "depth": nearest with 0 (unknown) outside the source image.
        """
        cv2 = _cv2()
        if tuple(values.shape[:2]) != self.size:
            raise ValueError(f"undistortion planned for {self.size}, got {tuple(values.shape[:2])}")
        map_x, map_y = _maps(self)
        arr = values.numpy()
        if kind == "mask":
            out = cv2.remap(arr.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE) > 0
        elif kind == "depth":
            out = cv2.remap(arr.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        else:
            out = cv2.remap(arr.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            out = np.clip(out, 0.0, 1.0)
        if out.ndim == 2 and arr.ndim == 3:  # OpenCV drops a trailing channel of 1
            out = out[..., None]
        return torch.from_numpy(np.ascontiguousarray(out))


@functools.lru_cache(maxsize=4)
def _maps(u: Undistortion) -> tuple[np.ndarray, np.ndarray]:
    """float32 (H, W) source x and y (OpenCV pixel coordinates) of every output pixel."""
    cv2 = _cv2()
    h, w = u.size
    K = _to_cv(np.array(u.K))
    new_K = _to_cv(u.new_K_array)
    D = np.array(u.coefficients)
    if u.model == "fisheye":
        return cv2.fisheye.initUndistortRectifyMap(K, D, np.eye(3), new_K, (w, h), cv2.CV_32FC1)
    return cv2.initUndistortRectifyMap(K, D, np.eye(3), new_K, (w, h), cv2.CV_32FC1)


def plan(K: np.ndarray, distortion: np.ndarray | None, model: Model, size: tuple[int, int]) -> Undistortion | None:
    """The undistortion of a view with intrinsics ``K`` (recon convention, at ``size`` (H, W)),
    or None when there is nothing to undo (no or all-zero coefficients)."""
    if model not in MODELS:
        raise InputError(f"unknown distortion model {model!r} (known: {', '.join(MODELS)})")
    if distortion is None or not np.any(np.asarray(distortion)):
        return None
    cv2 = _cv2()
    D = _coefficients(distortion, model)
    h, w = size
    K_cv = _to_cv(K)
    if model == "fisheye":
        new_cv = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K_cv, D, (w, h), np.eye(3), balance=0.0)
    else:
        new_cv, _ = cv2.getOptimalNewCameraMatrix(K_cv, D, (w, h), 0.0, (w, h))
    new_K = _from_cv(np.asarray(new_cv, dtype=np.float64))
    if not np.isfinite(new_K).all() or new_K[0, 0] <= 0 or new_K[1, 1] <= 0:
        raise InputError(f"distortion {D.tolist()} cannot be undone for K {np.asarray(K).tolist()} (no valid pinhole view)")
    as_tuple = lambda m: tuple(tuple(float(x) for x in row) for row in np.asarray(m))  # noqa: E731
    return Undistortion(as_tuple(K), tuple(float(x) for x in D), model, (int(h), int(w)), as_tuple(new_K))
