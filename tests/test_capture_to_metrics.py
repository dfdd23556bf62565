"""A user's own posed capture, end to end (issue 22): an instant-ngp transforms.json with missing
frames, top-level lens distortion, no split and no point cloud loads, is undistorted, holds out
every 8th frame, gets a triangulated point cloud and trains to a full-image test PSNR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import look_at
from PIL import Image
from test_points_triangulate import EXTENT, noise_texture

cv2 = pytest.importorskip("cv2")
pytest.importorskip("pycolmap")

W, H, FOCAL = 128, 96, 110.0
DIST = np.array([-0.25, 0.06, 0.002, -0.003])  # k1 k2 p1 p2, OpenCV's model
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def shade(dirs: np.ndarray, c2w: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Colours [..., 3] of camera-space ray directions [..., 3] hitting the textured square on
    z = 0 (grey elsewhere)."""
    dirs = dirs @ c2w[:3, :3].T
    t = -c2w[2, 3] / dirs[..., 2]
    hit = c2w[:3, 3] + t[..., None] * dirs
    size = texture.shape[0]
    s = np.clip((hit[..., 0] + EXTENT) / (2 * EXTENT) * (size - 1), 0, size - 1.001)
    r = np.clip((hit[..., 1] + EXTENT) / (2 * EXTENT) * (size - 1), 0, size - 1.001)
    inside = (t > 0) & (np.abs(hit[..., 0]) <= EXTENT) & (np.abs(hit[..., 1]) <= EXTENT)
    s0, r0 = s.astype(int), r.astype(int)
    fs, fr = (s - s0)[..., None], (r - r0)[..., None]
    img = (texture[r0, s0] * (1 - fs) * (1 - fr) + texture[r0, s0 + 1] * fs * (1 - fr)
           + texture[r0 + 1, s0] * (1 - fs) * fr + texture[r0 + 1, s0 + 1] * fs * fr)
    return np.where(inside[..., None], img, 0.5)


def render_distorted(c2w: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Ray-cast the plane through a *distorted* lens: each pixel's ray comes from undistorting its
    coordinates with OpenCV (pixel centres at i + 0.5 in recon, at i in OpenCV)."""
    K = np.array([[FOCAL, 0, W / 2 - 0.5], [0, FOCAL, H / 2 - 0.5], [0, 0, 1.0]])  # OpenCV pixel centres
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pts = np.stack([u.ravel(), v.ravel()], -1)[:, None, :]
    norm = cv2.undistortPoints(pts, K, DIST, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10))[:, 0]
    return shade(np.concatenate([norm, np.ones((len(norm), 1))], -1), c2w, texture).reshape(H, W, 3)


def render_pinhole(K: np.ndarray, c2w: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The same plane through a pinhole camera of intrinsics K (recon's pixel centres)."""
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    return shade(np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1), c2w, texture)


def smooth_texture() -> np.ndarray:
    """The noise texture without its finest octaves (no aliasing at this image size)."""
    from scipy.ndimage import gaussian_filter

    tex = gaussian_filter(noise_texture(seed=3), sigma=(5, 5, 0))
    return (tex - tex.min()) / (tex.max() - tex.min())


def write_capture(root: Path, n: int = 18, missing: tuple[int, ...] = (5, 12), texture: np.ndarray | None = None) -> list[str]:
    """Posed JPEGs around the plane in instant-ngp's layout; returns the frames whose file is absent."""
    texture = noise_texture(seed=3) if texture is None else texture
    frames, gone = [], []
    for i in range(n):
        angle = np.pi / 2 * i / (n - 1)  # a quarter circle above the plane
        eye = np.array([0.9 * np.cos(angle), 0.9 * np.sin(angle), 2.0])
        c2w = look_at(eye, np.zeros(3), up=np.array([0.0, 1.0, 0.0]))
        name = f"images/frame_{i:04d}.jpg"
        if i in missing:
            gone.append(Path(name).name)
        else:
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray((render_distorted(c2w, texture) * 255).round().astype(np.uint8)).save(root / name, quality=95)
        frames.append({"file_path": name, "transform_matrix": (c2w @ GL_TO_CV).tolist()})
    meta = {"fl_x": FOCAL, "fl_y": FOCAL, "cx": W / 2, "cy": H / 2, "w": W, "h": H, "aabb_scale": 4,
            "k1": DIST[0], "k2": DIST[1], "p1": DIST[2], "p2": DIST[3], "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return gone


def test_a_posed_phone_style_capture_trains_to_a_full_image_test_psnr(tmp_path: Path) -> None:
    from recon_cli.main import make_cli

    main = make_cli()
    data = tmp_path / "capture"
    gone = write_capture(data)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"skipped 2 of 18 frames whose image file is missing") as caught:
        result = CliRunner().invoke(main, [
            "run", "--data", str(data), "--repr", "3dgs", "--out", str(out), "--eval", "psnr,ssim",
            "--set", "3dgs-train.steps=300", "--set", "3dgs.sh_degree=0", "--set", "run.save_renders=false",
        ], catch_exceptions=False)
    assert sum("image file is missing" in str(w.message) for w in caught) == 1  # one warning, not one per frame
    assert result.exit_code == 0, result.output
    log = (out / "log.txt").read_text()
    assert "triangulat" in log  # no point cloud, no depth: the posed views were triangulated
    doc = json.loads((out / "metrics.json").read_text())
    # 16 frames found (2 missing files skipped), every 8th held out: frames 7 and 15 of those 16
    assert doc["split"] == "test" and doc["num_views"] == 2
    assert doc["metric_info"]["psnr"]["region"] == "full image"
    assert doc["metrics"]["psnr"] > 20.0, doc["metrics"]
    assert all(name not in json.dumps(doc["per_view"]) for name in gone)

    # strict refuses the missing files up front, naming one
    strict = CliRunner().invoke(main, ["run", "--data", str(data), "--repr", "3dgs", "--out", str(tmp_path / "strict"),
                                       "--set", "nerfstudio.strict=true"])
    assert strict.exit_code == 2 and gone[0] in strict.output


def test_the_loader_undoes_the_lens_distortion(tmp_path: Path) -> None:
    """The undistorted frames equal the pinhole render of the same camera (the undistorted K may
    zoom slightly: compare at the new K)."""
    from recon_core.registry import get_registry
    data = tmp_path / "capture"
    texture = smooth_texture()
    write_capture(data, n=3, missing=(), texture=texture)
    scene = get_registry().create("loader", "nerfstudio").load(data)
    view = scene.views[1]
    cam = view.camera
    assert cam.distortion is None
    pinhole = render_pinhole(cam.K[0].double().numpy(), cam.c2w[0].double().numpy(), texture)
    loaded = view.image.numpy()
    inner = (slice(8, H - 8), slice(8, W - 8))  # the border is resampled from outside the image
    err = np.abs(loaded[inner] - pinhole[inner]).mean()
    distorted = np.asarray(Image.open(data / "images" / "frame_0001.jpg"), dtype=np.float64) / 255.0
    K0 = np.array([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1.0]])
    raw_err = np.abs(distorted - render_pinhole(K0, cam.c2w[0].double().numpy(), texture))[inner].mean()
    assert err < 0.01, err  # the JPEG noise level
    assert raw_err > 2 * err  # the frame on disk really is distorted
