"""Initial points of 3D Gaussians (recon_core.points): depth unprojection, random points, first splats."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import look_at_torch

from recon_core.cameras import Cameras
from recon_core.errors import InputError
from recon_core.gaussians import SH_C0
from recon_core.points import initial_points, points_from_depth, random_points, splats_from_points, unproject_valid_depth
from recon_core.scene import Bounds, PointCloud, Scene, View


def knn_scales(points: torch.Tensor) -> torch.Tensor:
    """The initial (isotropic) scale ``splats_from_points`` gives each point (3DGS: mean distance
    to the 3 nearest neighbours, at least 1e-7), read back from its log-scales."""
    splats = splats_from_points(PointCloud(points), 0.1, 0, torch.Generator().manual_seed(0))
    scales = torch.exp(splats["scales"])
    assert scales.shape == (len(points), 3) and torch.equal(scales[:, :1].expand(-1, 3), scales)  # isotropic
    return scales[:, 0]


def plane_depth(K: torch.Tensor, c2w: torch.Tensor, h: int, w: int, normal: torch.Tensor, offset: float) -> torch.Tensor:
    """Exact z-depth of the plane n·p = offset seen through each pixel centre (u+0.5, v+0.5)."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pix = torch.stack([u + 0.5, v + 0.5, torch.ones_like(u)], -1)
    rays_cam = pix @ torch.linalg.inv(K).T  # z component 1
    rays_world = rays_cam @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    t = (offset - normal @ origin) / (rays_world @ normal)  # ray parameter; z-depth = t (ray z = 1)
    return t.float()


def camera(c2w: torch.Tensor, w: int = 12, h: int = 10) -> Cameras:
    K = torch.tensor([[14.0, 0.0, w / 2 + 0.3], [0.0, 15.0, h / 2 - 0.2], [0.0, 0.0, 1.0]])
    return Cameras.create(K, c2w.float(), w, h)


def test_unproject_depth_reproduces_plane_points() -> None:
    c2w = look_at_torch([2.0, -3.0, 1.5], dtype=torch.float64)
    cam = camera(c2w)
    normal = torch.tensor([0.2, 0.1, 1.0], dtype=torch.float64)
    normal = normal / normal.norm()
    depth = plane_depth(cam.K[0].double(), c2w, 10, 12, normal, -0.25)
    assert (depth > 0).all()
    points, idx = unproject_valid_depth(depth, cam.K[0], cam.c2w[0])
    assert points.shape == (120, 3) and torch.equal(idx, torch.arange(120))
    # every point lies on the plane ...
    assert torch.allclose(points.double() @ normal, torch.full((120,), -0.25, dtype=torch.float64), atol=1e-4)
    # ... and projects back to its own pixel centre (u + 0.5, v + 0.5)
    cam_pts = (points.double() - c2w[:3, 3]) @ c2w[:3, :3]
    uv = (cam_pts / cam_pts[:, 2:]) @ cam.K[0].double().T
    expected_u = (idx % 12).double() + 0.5
    expected_v = (idx // 12).double() + 0.5
    assert torch.allclose(uv[:, 0], expected_u, atol=1e-4) and torch.allclose(uv[:, 1], expected_v, atol=1e-4)
    # z-depth along the optical axis is preserved
    assert torch.allclose(cam_pts[:, 2].float(), depth.reshape(-1), atol=1e-5)


def test_unproject_skips_zero_nonfinite_and_masked() -> None:
    cam = camera(torch.eye(4, dtype=torch.float64))
    depth = torch.full((10, 12), 2.0)
    depth[0, 0] = 0.0
    depth[1, 1] = float("nan")
    mask = torch.ones(10, 12, dtype=torch.bool)
    mask[2, :] = False
    points, idx = unproject_valid_depth(depth, cam.K[0], cam.c2w[0], mask)
    assert len(points) == 120 - 2 - 12
    assert 0 not in idx and 13 not in idx and not any(24 <= i < 36 for i in idx.tolist())
    assert torch.allclose(points[:, 2], torch.full((len(points),), 2.0))


def _view(name: str, c2w: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor | None = None) -> View:
    cam = camera(c2w)
    image = torch.rand(10, 12, 3, generator=torch.Generator().manual_seed(len(name)))
    return View(name, cam, image, depth=depth, object_mask=mask)


def test_points_from_depth_uses_foreground_colour_and_subsamples() -> None:
    c2w = torch.eye(4, dtype=torch.float64)
    depth = torch.full((10, 12), 3.0)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[4:8, 3:9] = True  # 24 foreground pixels
    view = _view("a", c2w, depth, mask)
    pc = points_from_depth([view], 1000, torch.Generator().manual_seed(0))
    assert len(pc) == 24
    # colours are the image colours of the unprojected pixels
    K = view.camera.K[0].double()
    uv = (pc.points.double() / pc.points.double()[:, 2:]) @ K.T
    u, v = (uv[:, 0] - 0.5).round().long(), (uv[:, 1] - 0.5).round().long()
    assert mask[v, u].all()
    assert torch.equal(pc.colors, view.image[v, u])
    few = points_from_depth([view, _view("bb", c2w, depth, mask)], 10, torch.Generator().manual_seed(0))
    assert len(few) == 10  # 5 per view


def test_points_from_depth_without_depth_is_input_error() -> None:
    view = View("a", camera(torch.eye(4, dtype=torch.float64)), torch.zeros(10, 12, 3))
    with pytest.raises(InputError, match="depth"):
        points_from_depth([view], 10, torch.Generator())


def test_random_points_inside_bounds() -> None:
    bounds = Bounds(center=torch.tensor([1.0, -2.0, 0.5]), radius=0.7)
    pc = random_points(bounds, 2000, torch.Generator().manual_seed(3))
    r = (pc.points - bounds.center).norm(dim=-1)
    assert r.max() <= 0.7 + 1e-6 and r.mean() > 0.45  # uniform in the ball: E[r] = 3/4 R
    assert pc.colors.shape == (2000, 3) and pc.colors.min() >= 0 and pc.colors.max() <= 1
    again = random_points(bounds, 2000, torch.Generator().manual_seed(3))
    assert torch.equal(pc.points, again.points)


def test_knn_scales_on_a_grid() -> None:
    # unit grid: interior points have 6 neighbours at distance 1 → mean of 3 nearest = 1
    g = torch.stack(torch.meshgrid(*(torch.arange(5.0),) * 3, indexing="ij"), -1).reshape(-1, 3)
    s = knn_scales(g * 0.2)
    assert s.shape == (125,)
    assert torch.allclose(s, torch.full((125,), 0.2))


def test_knn_scales_mean_of_three_nearest() -> None:
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0], [10.0, 10, 10]])
    s = knn_scales(pts)
    assert math.isclose(float(s[0]), (1 + 2 + 4) / 3, rel_tol=1e-6)
    assert math.isclose(float(s[1]), (1 + math.sqrt(5) + math.sqrt(17)) / 3, rel_tol=1e-6)


def test_knn_scales_degenerate_inputs() -> None:
    assert knn_scales(torch.zeros(0, 3)).shape == (0,)
    assert torch.allclose(knn_scales(torch.zeros(1, 3)), torch.tensor([1.0]))
    two = knn_scales(torch.tensor([[0.0, 0, 0], [0.0, 3, 4]]))
    assert torch.allclose(two, torch.tensor([5.0, 5.0]))
    dup = knn_scales(torch.zeros(4, 3))  # identical points: clamped, never 0 (log-scale stays finite)
    assert (dup > 0).all()


def _scene(views: list[View], pc: PointCloud | None = None) -> Scene:
    return Scene("s", views, Bounds(torch.zeros(3), 1.0), point_cloud=pc)


def test_initial_points_auto_prefers_cloud_then_depth_then_random() -> None:
    c2w = torch.eye(4, dtype=torch.float64)
    depth_view = _view("a", c2w, torch.full((10, 12), 2.0))
    plain_view = View("b", camera(c2w), torch.zeros(10, 12, 3))
    cloud = PointCloud(torch.randn(7, 3), None)
    gen = torch.Generator().manual_seed(0)
    pc, used = initial_points(_scene([depth_view], cloud), "auto", 100, gen)
    assert used == "points" and len(pc) == 7 and torch.equal(pc.colors, torch.full((7, 3), 0.5))
    pc, used = initial_points(_scene([depth_view]), "auto", 100, gen)
    assert used == "depth" and len(pc) == 100
    pc, used = initial_points(_scene([plain_view]), "auto", 50, gen)
    assert used == "random" and len(pc) == 50
    with pytest.raises(InputError, match="point cloud"):
        initial_points(_scene([plain_view]), "points", 50, gen)


def test_splats_from_points_values() -> None:
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0]])
    colors = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.2, 0.3, 0.4], [0.5, 0.5, 0.5]])
    pc = PointCloud(pts, colors)
    splats = splats_from_points(pc, 0.25, 2, torch.Generator().manual_seed(1))
    assert set(splats) == {"means", "quats", "scales", "opacities", "sh0", "shN"}
    assert torch.equal(splats["means"], pts)
    assert torch.allclose(torch.sigmoid(splats["opacities"]), torch.full((4,), 0.25))
    assert torch.allclose(splats["sh0"][:, 0] * SH_C0 + 0.5, colors, atol=1e-6)  # colour as SH DC
    assert splats["shN"].shape == (4, 8, 3) and not splats["shN"].any()  # degree 2: 8 more bands, zero
    assert torch.allclose(splats["quats"].norm(dim=-1), torch.ones(4))
    # scales: kNN by default, given scales otherwise, both times scale_factor
    default = torch.exp(splats["scales"][:, 0])
    assert math.isclose(float(default[0]), (1 + 2 + 4) / 3, rel_tol=1e-6)
    half = splats_from_points(pc, 0.25, 2, torch.Generator().manual_seed(1), scale_factor=0.5)
    assert torch.allclose(torch.exp(half["scales"][:, 0]), 0.5 * default)
    given = splats_from_points(pc, 0.25, 0, torch.Generator().manual_seed(1), scales=torch.tensor([1.0, 2, 3, 4]), scale_factor=2.0)
    assert torch.allclose(torch.exp(given["scales"]), torch.tensor([2.0, 4, 6, 8])[:, None].expand(4, 3))
    assert given["shN"].shape == (4, 0, 3)
    # rotations come from the generator: reproducible
    again = splats_from_points(pc, 0.25, 2, torch.Generator().manual_seed(1))
    assert torch.equal(again["quats"], splats["quats"])


def test_splats_from_points_without_colours_are_grey() -> None:
    splats = splats_from_points(PointCloud(torch.randn(5, 3)), 0.1, 0, torch.Generator().manual_seed(0))
    assert torch.allclose(splats["sh0"][:, 0] * SH_C0 + 0.5, torch.full((5, 3), 0.5), atol=1e-6)
