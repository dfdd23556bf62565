"""Shared fixtures: the toy plugin (tests/plugins/recon_toy.py), tiny data folders, fake distributions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

PLUGINS_DIR = Path(__file__).parent / "plugins"
if str(PLUGINS_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGINS_DIR))

BUILTIN_PLUGINS = ("metrics", "loaders", "gaussians", "d2gv", "idr", "encoders", "dggt", "ttr", "difix", "reconx")
"""Entry points of this repository; subprocess tests block them to see only the toy plugin."""


def look_at(position: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV camera-to-world looking from ``position`` at ``target`` (x right, y down, z forward)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, position
    return c2w


def write_toy_scene(root: Path, n_views: int = 6, width: int = 12, height: int = 10, masks: bool = True) -> Path:
    """A toy.json folder: smooth colour images from cameras on a circle; the last 2 are test views."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    K = [[10.0, 0.0, width / 2], [0.0, 10.0, height / 2], [0.0, 0.0, 1.0]]
    views = []
    ys, xs = np.mgrid[0:height, 0:width]
    for i in range(n_views):
        angle = 2 * np.pi * i / n_views
        img = np.stack([xs / width, ys / height, np.full_like(xs, 0.3 + 0.05 * i, dtype=float)], -1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"v{i}.png")
        entry = {
            "image": f"v{i}.png",
            "split": "test" if i >= n_views - 2 else "train",
            "c2w": look_at(np.array([3 * np.cos(angle), 3 * np.sin(angle), 1.0])).tolist(),
        }
        if masks and entry["split"] == "test":
            mask = np.zeros((height, width), np.uint8)
            mask[2:-2, 2:-2] = 255
            Image.fromarray(mask).save(root / f"m{i}.png")
            entry["mask"] = f"m{i}.png"
        views.append(entry)
    (root / "toy.json").write_text(json.dumps({"scene": "toyscene", "K": K, "views": views}))
    return root


def write_toy_video(root: Path, n_frames: int = 5, width: int = 8, height: int = 6) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n_frames):
        img = np.full((height, width, 3), 40 * i, np.uint8)
        Image.fromarray(img).save(root / f"f{i}.png")
        frames.append(f"f{i}.png")
    (root / "toyvideo.json").write_text(json.dumps({"fps": 5, "frames": frames}))
    return root


def make_dist(site: Path, name: str, entry_points: dict[str, str], version: str = "1.0") -> Path:
    """A minimal installed-distribution folder (``NAME-VERSION.dist-info``) declaring recon plugins."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[recon.plugins]\n{lines}")
    return info


@pytest.fixture
def toy_registry():
    import recon_toy

    from recon_core.registry import Registry

    return Registry(entry_points=[], modules=[("toy", recon_toy)], disabled=())


@pytest.fixture
def toy_scene(tmp_path: Path) -> Path:
    return write_toy_scene(tmp_path / "scene")


@pytest.fixture
def toy_video(tmp_path: Path) -> Path:
    return write_toy_video(tmp_path / "video")
