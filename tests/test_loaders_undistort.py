"""Undistortion at load time (recon_plugins.loaders.undistort, through common.build_views).

The distorted test images are synthesised from the distortion model itself: every pixel of the
distorted image looks up where its ray lands in an ideal pinhole image of straight lines
(cv2.undistortPoints, OpenCV's own iterative inverse). After loading, those lines must be
straight again and sit where the view's new pinhole K puts them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from loaders_support import write_png

from recon_plugins.loaders import undistort
from recon_plugins.loaders.common import FrameSpec, build_views

H, W = 90, 120
K = np.array([[70.0, 0.0, W / 2 + 1.5], [0.0, 72.0, H / 2 - 2.0], [0.0, 0.0, 1.0]])  # recon: pixel centres at i + 0.5
OPENCV = np.array([-0.25, 0.06, 0.003, -0.002])
FISHEYE = np.array([0.05, -0.02, 0.01, -0.005])
LINES_X = (-0.6, -0.15, 0.35)  # vertical lines x = x0 in normalised image coordinates


def _ideal_coordinates(model: str, dist: np.ndarray) -> np.ndarray:
    """(H, W, 2) normalised pinhole coordinates of the ray seen by each distorted pixel's centre."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    pts = np.stack([xs, ys], -1).reshape(-1, 1, 2)  # OpenCV pixel coordinates = recon centres (j + 0.5) - 0.5
    K_cv = K.copy()
    K_cv[:2, 2] -= 0.5
    if model == "fisheye":
        und = cv2.fisheye.undistortPoints(pts, K_cv, dist)
    else:
        und = cv2.undistortPoints(pts, K_cv, dist, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12))
    return und.reshape(H, W, 2)


def _line_image(model: str, dist: np.ndarray) -> np.ndarray:
    """uint8 (H, W) distorted photo of dark vertical lines (about 2 px wide) on white."""
    xy = _ideal_coordinates(model, dist)
    ink = np.zeros((H, W))
    for x0 in LINES_X:
        ink = np.maximum(ink, np.clip(1.5 - np.abs(xy[..., 0] - x0) * K[0, 0], 0.0, 1.0))
    return np.round(255 * (1.0 - ink)).astype(np.uint8)


def _frame(tmp_path: Path, image: np.ndarray, dist: np.ndarray | None, model: str = "opencv", mask: np.ndarray | None = None) -> FrameSpec:
    path = write_png(tmp_path / "img.png", np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image)
    mask_path = None if mask is None else write_png(tmp_path / "mask.png", mask.astype(np.uint8) * 255)
    return FrameSpec(name="img", image=path, K=K.copy(), c2w=np.eye(4), distortion=dist, distortion_model=model, object_mask=mask_path)


def _line_columns(dark: np.ndarray, near: float) -> np.ndarray:
    """Per row, the darkness-weighted column centre (pixel centres at j + 0.5) within 6 px of ``near``."""
    cols = np.arange(dark.shape[1]) + 0.5
    window = np.abs(cols - near) < 6
    w = dark * window
    return (w * cols).sum(1) / np.maximum(w.sum(1), 1e-9)


@pytest.mark.parametrize("model, dist", [("opencv", OPENCV), ("fisheye", FISHEYE)])
def test_bent_lines_come_out_straight_where_the_new_K_puts_them(tmp_path: Path, model: str, dist: np.ndarray) -> None:
    image = _line_image(model, dist)
    view = build_views([_frame(tmp_path, image, dist, model)])[0]
    newK = view.camera.K[0].double().numpy()
    assert view.camera.distortion is None and view.image.shape == (H, W, 3)
    dark = 1.0 - view.image[..., 0].numpy().astype(np.float64)
    raw_dark = 1.0 - image / 255.0
    rows = slice(8, H - 8)
    for x0 in LINES_X:
        expected = newK[0, 0] * x0 + newK[0, 2]  # u = fx * x + cx (recon convention)
        got = _line_columns(dark, expected)[rows]
        assert np.abs(got - expected).max() < 0.35, (x0, got - expected)
        # the input really is bent: the same line in the raw image is not straight
        raw = _line_columns(raw_dark, K[0, 0] * x0 + K[0, 2])[rows]
        if model == "opencv" and x0 == 0.35:
            assert raw.max() - raw.min() > 1.5


def test_the_new_K_is_opencvs_optimal_matrix_with_alpha_0(tmp_path: Path) -> None:
    view = build_views([_frame(tmp_path, _line_image("opencv", OPENCV), OPENCV)])[0]
    K_cv = K.copy()
    K_cv[:2, 2] -= 0.5
    new_cv, _ = cv2.getOptimalNewCameraMatrix(K_cv, OPENCV, (W, H), 0.0, (W, H))
    new_cv[:2, 2] += 0.5
    assert np.allclose(view.camera.K[0].double().numpy(), new_cv, atol=1e-4)


def test_pixels_match_cv2_undistort_of_the_same_image(tmp_path: Path) -> None:
    ys, xs = np.mgrid[0:H, 0:W]
    smooth = np.stack([127 + 120 * np.sin(xs / 7.0), 127 + 120 * np.cos(ys / 5.0), (xs + 2 * ys) % 256], -1).astype(np.uint8)
    view = build_views([_frame(tmp_path, smooth, OPENCV)])[0]
    newK = view.camera.K[0].double().numpy().copy()
    K_cv, new_cv = K.copy(), newK
    K_cv[:2, 2] -= 0.5
    new_cv[:2, 2] -= 0.5
    reference = cv2.undistort(smooth.astype(np.float32) / 255.0, K_cv, OPENCV, None, new_cv)
    inner = (slice(2, H - 2), slice(2, W - 2))
    assert np.abs(view.image.numpy()[inner] - reference[inner]).max() < 0.02
    assert np.abs(view.image.numpy()[inner] - smooth[inner] / 255.0).max() > 0.2  # not the input unchanged


def test_masks_are_undistorted_by_nearest_neighbour_and_stay_on_the_lines(tmp_path: Path) -> None:
    image = _line_image("opencv", OPENCV)
    mask = image < 250  # the lines themselves (about 3 px wide: the new K zooms out by 0.8 here)
    view = build_views([_frame(tmp_path, image, OPENCV, mask=mask)])[0]
    out = view.object_mask
    assert out.dtype == torch.bool and out.shape == (H, W)
    newK = view.camera.K[0].double().numpy()
    cols = np.arange(W) + 0.5
    centres = [newK[0, 0] * x0 + newK[0, 2] for x0 in LINES_X]
    far = np.min([np.abs(cols - c) for c in centres], axis=0)  # distance of each column from the nearest line
    assert (far[None, :].repeat(H, 0)[out.numpy()] < 2.5).all()  # every True pixel is on a line
    for c in centres:  # and every line is still there in every row
        assert out.numpy()[:, np.abs(cols - c) < 2.0].any(axis=1)[4:-4].all()
    # nearest-neighbour: the result is exactly cv2.remap(INTER_NEAREST) of the mask with the same maps
    und = undistort.plan(K, OPENCV, "opencv", (H, W))
    mx, my = undistort._maps(und)
    ref = cv2.remap(mask.astype(np.uint8), mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE) > 0
    assert np.array_equal(out.numpy(), ref)


def test_undistortion_stays_lazy_and_is_skipped_without_coefficients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = undistort.Undistortion.apply
    monkeypatch.setattr(undistort.Undistortion, "apply", lambda self, v, kind: calls.append(kind) or original(self, v, kind))
    image = _line_image("opencv", OPENCV)
    view = build_views([_frame(tmp_path, image, OPENCV, mask=image < 128)])[0]
    assert calls == []  # nothing decoded or resampled at load
    view.image, view.object_mask
    assert calls == ["image", "mask"]
    calls.clear()
    plain = build_views([_frame(tmp_path, image, np.zeros(4))])[0]
    assert plain.image.shape == (H, W, 3) and calls == [] and np.allclose(plain.camera.K[0].double().numpy(), K)
    assert undistort.plan(K, None, "opencv", (H, W)) is None


def test_undistortion_then_downscale_scales_the_new_K(tmp_path: Path) -> None:
    frame = _frame(tmp_path, _line_image("opencv", OPENCV), OPENCV)
    full = build_views([frame])[0]
    half = build_views([frame], downscale=2)[0]
    assert half.image.shape == (H // 2, W // 2, 3)
    assert torch.allclose(half.camera.K[0, :2], full.camera.K[0, :2] / 2)
