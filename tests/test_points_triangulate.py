"""Triangulation with known poses (recon_core.points.triangulated_points) and the ``auto`` init
that uses it when a posed scene has neither a point cloud nor depth maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import look_at

from recon_core import Bounds, Cameras, InputError, PointCloud, Scene, View
from recon_core.points import can_triangulate, initial_points, triangulated_points

pycolmap = pytest.importorskip("pycolmap")

W, H, FOCAL = 160, 120, 150.0
EXTENT = 1.0  # the textured square is [-1, 1]^2 on the plane z = 0


def noise_texture(size: int = 256, seed: int = 0) -> np.ndarray:
    """Colour value noise (6 octaves, bilinear upsampling): blobs at many scales, good for SIFT."""
    rng = np.random.default_rng(seed)
    tex = np.zeros((size, size, 3))
    for octave in range(6):
        cells = 4 * 2**octave
        coarse = rng.random((cells + 1, cells + 1, 3))
        x = np.linspace(0, cells, size)
        i = np.minimum(x.astype(int), cells - 1)
        f = (x - i)[:, None]
        rows = coarse[i] * (1 - f[..., None]) + coarse[i + 1] * f[..., None]
        tex += (rows[:, i] * (1 - f[None, :, :]) + rows[:, i + 1] * f[None, :, :]) / 1.5**octave
    tex -= tex.min()
    return tex / tex.max()


def render_plane(c2w: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Ray-cast the textured square on z = 0 (grey outside it) into an (H, W, 3) image in [0, 1]."""
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    dirs = np.stack([(u - W / 2) / FOCAL, (v - H / 2) / FOCAL, np.ones_like(u)], -1) @ c2w[:3, :3].T
    t = -c2w[2, 3] / dirs[..., 2]
    hit = c2w[:3, 3] + t[..., None] * dirs
    size = texture.shape[0]
    s = (hit[..., 0] + EXTENT) / (2 * EXTENT) * (size - 1)
    r = (hit[..., 1] + EXTENT) / (2 * EXTENT) * (size - 1)
    inside = (t > 0) & (s >= 0) & (s <= size - 1) & (r >= 0) & (r <= size - 1)
    s0 = np.clip(np.floor(s).astype(int), 0, size - 2)
    r0 = np.clip(np.floor(r).astype(int), 0, size - 2)
    fs, fr = np.clip(s - s0, 0, 1)[..., None], np.clip(r - r0, 0, 1)[..., None]
    img = (texture[r0, s0] * (1 - fs) * (1 - fr) + texture[r0, s0 + 1] * fs * (1 - fr)
           + texture[r0 + 1, s0] * (1 - fs) * fr + texture[r0 + 1, s0 + 1] * fs * fr)
    return np.where(inside[..., None], img, 0.5)


def plane_views(n: int = 4) -> list[View]:
    texture = noise_texture()
    K = torch.tensor([[FOCAL, 0.0, W / 2], [0.0, FOCAL, H / 2], [0.0, 0.0, 1.0]])
    views = []
    for i in range(n):
        angle = 2 * np.pi * i / n / 4  # a quarter circle: wide enough baselines, still overlapping
        eye = np.array([0.8 * np.cos(angle), 0.8 * np.sin(angle), 2.2])
        c2w = look_at(eye, np.zeros(3), up=np.array([0.0, 1.0, 0.0]))
        image = torch.from_numpy(render_plane(c2w, texture)).float()
        views.append(View(f"v{i}", Cameras.create(K, torch.from_numpy(c2w).float(), W, H), image))
    return views


@pytest.fixture(scope="module")
def views() -> list[View]:
    return plane_views()


def test_triangulated_points_lie_on_the_plane(views: list[View]) -> None:
    pc = triangulated_points(views, 10_000, torch.Generator().manual_seed(0))
    assert len(pc) > 100, f"only {len(pc)} points"
    z = pc.points[:, 2].abs()
    assert float(z.median()) < 0.01 and float((z < 0.05).float().mean()) > 0.9  # scene size ~2, cameras 2.3 away
    assert float(pc.points[:, :2].abs().max()) < EXTENT * 1.1  # on the textured square, not the grey
    assert pc.colors.shape == pc.points.shape and 0 <= float(pc.colors.min()) and float(pc.colors.max()) <= 1
    few = triangulated_points(views, 20, torch.Generator().manual_seed(0))
    assert len(few) == 20


def test_wrong_poses_give_points_off_the_plane(views: list[View]) -> None:
    """The known poses are what places the points: shift them and the points leave the plane."""
    moved = [View(v.name, Cameras.create(v.camera.K[0], v.camera.c2w[0] + torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0],
                                                                                    [0, 0, 0, 0.5], [0, 0, 0, 0]]),
                                         W, H), v.image) for v in views]
    pc = triangulated_points(moved, 10_000, torch.Generator().manual_seed(0))
    assert float(pc.points[:, 2].median()) == pytest.approx(0.5, abs=0.05)


def test_auto_init_triangulates_a_posed_scene_without_points_or_depth(views: list[View]) -> None:
    scene = Scene("plane", views, Bounds(torch.zeros(3), 1.5))
    lines: list[str] = []
    pc, used = initial_points(scene, "auto", 500, torch.Generator().manual_seed(0), log=lines.append)
    assert used == "triangulate" and 50 < len(pc) <= 500
    assert len(lines) == 1 and "triangulated from 4 posed training views" in lines[0]
    scene.poses_known = False
    pc, used = initial_points(scene, "auto", 500, torch.Generator().manual_seed(0), log=lines.append)
    assert used == "random" and "poses are not known" in lines[-1]
    pc, used = initial_points(Scene("flat", [View(v.name, v.camera, torch.full((H, W, 3), 0.5)) for v in views],
                                    Bounds(torch.zeros(3), 1.5)), "auto", 100, torch.Generator().manual_seed(0), log=lines.append)
    assert used == "random" and len(pc) == 100 and "triangulated no point" in lines[-1]  # untextured: falls back


def test_explicit_triangulate_reports_why_it_cannot(views: list[View]) -> None:
    assert can_triangulate(views) is None and "at least 2" in can_triangulate(views[:1])
    with pytest.raises(InputError, match="at least 2"):
        initial_points(Scene("one", views[:1], Bounds(torch.zeros(3), 1.0)), "triangulate", 10, torch.Generator())
    flat = [View(v.name, v.camera, torch.full((H, W, 3), 0.5)) for v in views]
    with pytest.raises(InputError, match="no point"):
        triangulated_points(flat, 10, torch.Generator())
