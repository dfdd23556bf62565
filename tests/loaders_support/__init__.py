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
