"""Builders of tiny on-disk datasets for the loader tests (each writes real files under a tmp dir).

Every builder returns the ground truth it wrote (OpenCV c2w, K, ...) so tests can compare what a
loader reads against what was meant, not against the loader's own output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OBJECT = Path("/work/shared/datasets/object")
STREET = Path("/work/shared/datasets/street")
VIDEO = Path("/work/shared/datasets/video")

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def look_at(position: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """OpenCV camera-to-world looking from ``position`` at ``target`` (x right, y down, z forward)."""
    target = np.zeros(3) if target is None else target
    up = np.array([0.0, 0.0, 1.0]) if up is None else up
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w


def ring_poses(n: int, radius: float = 3.0, height: float = 1.0) -> list[np.ndarray]:
    """n OpenCV c2w on a circle looking at the origin."""
    return [look_at(np.array([radius * np.cos(a), radius * np.sin(a), height])) for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]


def gradient_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A smooth uint8 image (H, W, C) that differs per seed."""
    ys, xs = np.mgrid[0:h, 0:w]
    rgb = np.stack([xs / max(w - 1, 1), ys / max(h - 1, 1), np.full((h, w), (seed * 37 % 100) / 100.0)], -1)
    img = (rgb * 255).astype(np.uint8)
    if channels == 4:
        alpha = np.zeros((h, w), np.uint8)
        alpha[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
        img = np.concatenate([img, alpha[..., None]], -1)
    return img


def write_png(path: Path, array: np.ndarray) -> Path:
    """uint8 (H, W[, C]) or uint16 (H, W) array → PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_transforms(
    root: Path,
    n: int = 4,
    w: int = 16,
    h: int = 12,
    *,
    rgba: bool = False,
    masks: bool = False,
    depth: str | None = None,
    times: bool = False,
    sky: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A nerfstudio folder; returns {"meta", "c2w_cv": [n,4,4], "K": (3,3)}.

    depth: None, "npy" (metric float32) or "png" (uint16 millimetres).
    """
    root.mkdir(parents=True, exist_ok=True)
    K = np.array([[20.0, 0.0, w / 2], [0.0, 21.0, h / 2], [0.0, 0.0, 1.0]])
    poses = ring_poses(n)
    frames = []
    for i, c2w in enumerate(poses):
        write_png(root / "images" / f"{i:04d}.png", gradient_image(h, w, i, 4 if rgba else 3))
        fr: dict[str, Any] = {"file_path": f"images/{i:04d}.png", "transform_matrix": (c2w @ GL_TO_CV).tolist()}
        if masks:
            m = np.zeros((h, w), np.uint8)
            m[2:-2, 3:-3] = 255
            write_png(root / "masks" / f"{i:04d}.png", m)
            fr["mask_path"] = f"masks/{i:04d}.png"
        if sky:
            s = np.zeros((h, w), np.uint8)
            s[: h // 3] = 255
            write_png(root / "sky" / f"{i:04d}.png", s)
            fr["sky_mask_path"] = f"sky/{i:04d}.png"
        if depth == "npy":
            (root / "depth").mkdir(exist_ok=True)
            np.save(root / "depth" / f"{i:04d}.npy", np.full((h, w), 2.5 + i, np.float32))
            fr["depth_file_path"] = f"depth/{i:04d}.npy"
        elif depth == "png":
            write_png(root / "depth" / f"{i:04d}.png", np.full((h, w), 2500 + 1000 * i, np.uint16))
            fr["depth_file_path"] = f"depth/{i:04d}.png"
        if times:
            fr["time"] = 0.1 * i
        frames.append(fr)
    meta: dict[str, Any] = {"camera_model": "OPENCV", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": w, "h": h, "frames": frames}
    meta.update(extra or {})
    (root / "transforms.json").write_text(json.dumps(meta))
    return {"meta": meta, "c2w_cv": np.stack(poses), "K": K}


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """A binary PLY with x y z (float32) and optional red green blue (uint8)."""
    from plyfile import PlyData, PlyElement

    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")] if colors is not None else [])
    data = np.empty(len(points), dtype=fields)
    data["x"], data["y"], data["z"] = points.T
    if colors is not None:
        data["red"], data["green"], data["blue"] = colors.T
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return path


def write_idr(root: Path, n: int = 3, w: int = 16, h: int = 12, *, scale: float = 1.0, linear_noise: float = 0.0) -> dict[str, Any]:
    """An IDR folder (image/, mask/, cameras.npz); world_mat scaled by arbitrary factors.

    The true cameras are in the normalised frame; scale_mat = diag(scale, scale, scale, 1) maps
    normalised → world. Returns {"K": (3,3), "c2w": [n,4,4] normalised-frame OpenCV c2w}.
    """
    K = np.array([[18.0, 0.3, w / 2 + 0.7], [0.0, 19.0, h / 2 - 0.4], [0.0, 0.0, 1.0]])
    poses = ring_poses(n, radius=2.5)
    scale_mat = np.diag([scale, scale, scale, 1.0])
    cams, lin = {}, {}
    rng = np.random.default_rng(0)
    for i, c2w in enumerate(poses):
        write_png(root / "image" / f"{i:06d}.png", gradient_image(h, w, i))
        m = np.zeros((h, w), np.uint8)
        m[:, : w // 2] = 128  # > 127.5: object
        m[:, w // 2 :] = 127  # below: background
        write_png(root / "mask" / f"{i:03d}.png", m)
        # world c2w: normalised pose scaled into the world frame
        c2w_world = c2w.copy()
        c2w_world[:3, 3] *= scale
        w2c = np.linalg.inv(c2w_world)
        P = np.eye(4)
        P[:3, :4] = K @ w2c[:3, :4]
        cams[f"world_mat_{i}"] = P * (-3.0 if i % 2 else 7.0)  # arbitrary scale and sign
        cams[f"scale_mat_{i}"] = scale_mat
        noisy = w2c.copy()
        noisy[:3, 3] += linear_noise * rng.standard_normal(3)
        Pn = np.eye(4)
        Pn[:3, :4] = K @ noisy[:3, :4]
        lin[f"world_mat_{i}"] = Pn
        lin[f"scale_mat_{i}"] = scale_mat
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "cameras.npz", **cams)
    np.savez(root / "cameras_linear_init.npz", **lin)
    return {"K": K, "c2w": np.stack(poses)}


def write_video(path: Path, n_frames: int, w: int = 32, h: int = 24, fps: int = 25, codec: str = "libx264", gop: int = 12) -> Path:
    """An H.264 video whose frame i is a flat grey of level (i * 7) % 256 (decodable to ±4)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"bf": "0", "crf": "10"} if codec == "libx264" else {}
        for i in range(n_frames):
            img = np.full((h, w, 3), frame_level(i), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_level(i: int) -> int:
    """Grey level of frame i written by :func:`write_video` (kept away from the 0/255 clip)."""
    return 16 + (i * 7) % 224


QUADRANTS = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
"""Colours of the upright test image's quadrants: [[top-left, top-right], [bottom-left, bottom-right]]."""


def quadrant_image(h: int, w: int) -> np.ndarray:
    """uint8 (H, W, 3): red top-left, green top-right, blue bottom-left, white bottom-right."""
    img = np.empty((h, w, 3), np.uint8)
    for r in range(2):
        for c in range(2):
            img[r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2] = QUADRANTS[r, c]
    return img


def write_exif_jpeg(path: Path, upright: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG whose stored pixels are ``upright`` turned so that its EXIF ``orientation`` tag (6:
    "rotate 90 degrees clockwise to display", what phones write for portrait shots) brings it back."""
    undo = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    im = Image.fromarray(upright)
    stored = im if undo is None else im.transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=95, exif=exif)
    return path


def write_instant_ngp(
    root: Path, n: int = 18, missing: tuple[int, ...] = (4, 11), w: int = 30, h: int = 40, *, orientation: int = 6,
    distortion: dict[str, float] | None = None, stored_size_in_metadata: bool = False,
) -> dict[str, Any]:
    """A phone capture in instant-ngp's transforms.json layout: portrait JPEGs stored sideways with
    an EXIF orientation tag, OpenGL poses, top-level ``k1 k2 p1 p2``, ``aabb_scale``, no
    ``camera_model``, no split, no point cloud; the frames in ``missing`` have no image file.

    Returns {"meta", "c2w_cv": [n, 4, 4] of every listed frame, "K", "names" (present frames),
    "missing" (file names), "upright" (H, W, 3) uint8}.
    """
    root.mkdir(parents=True, exist_ok=True)
    dist = {"k1": -0.08, "k2": 0.01, "p1": 0.002, "p2": -0.001} if distortion is None else distortion
    K = np.array([[26.0, 0.0, w / 2], [0.0, 26.0, h / 2], [0.0, 0.0, 1.0]])
    upright = quadrant_image(h, w)
    poses = ring_poses(n)
    frames, names, gone = [], [], []
    for i, c2w in enumerate(poses):
        name = f"frame_{i:04d}.jpg"
        if i in missing:
            gone.append(name)
        else:
            write_exif_jpeg(root / "images" / name, upright, orientation)
            names.append(Path(name).stem)
        frames.append({"file_path": f"./images/{name}", "sharpness": 50.0, "transform_matrix": (c2w @ GL_TO_CV).tolist()})
    sw, sh = (h, w) if stored_size_in_metadata and orientation in (6, 8) else (w, h)
    meta: dict[str, Any] = {
        "camera_angle_x": 2 * np.arctan(w / (2 * K[0, 0])), "camera_angle_y": 2 * np.arctan(h / (2 * K[1, 1])),
        "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": sw, "h": sh, **dist,
        "aabb_scale": 16, "frames": frames,
    }
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return {"meta": meta, "c2w_cv": np.stack(poses), "K": K, "names": names, "missing": gone, "upright": upright}
