"""Confidence sources of the reconx plugin (plugins/reconx/confidence.py)."""

from __future__ import annotations

import pytest
import torch

from recon_core.cameras import Cameras
from recon_core.errors import InputError
from recon_core.scene import View
from recon_plugins.reconx.confidence import ConsistencySettings, confidence_maps, consistency_map, reproject


def _camera_over_plane(x: float, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """K and an OpenCV c2w at (x, 0, 2) looking straight down -z at the plane z = 0."""
    K = torch.tensor([[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]])
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])  # x right, y down (= -world y), z forward (= -world z)
    c2w[:3, 3] = torch.tensor([x, 0.0, 2.0])
    return K, c2w


def _plane_view(x: float, size: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth (2 everywhere) and an image of a texture fixed to the plane (colour = f(world x, y))."""
    K, c2w = _camera_over_plane(x, size)
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    wx = x + (u - K[0, 2]) / K[0, 0] * 2.0
    wy = -(v - K[1, 2]) / K[1, 1] * 2.0
    image = torch.stack([0.5 + 0.4 * torch.sin(3 * wx), 0.5 + 0.4 * torch.cos(2 * wy), 0.5 + 0.2 * torch.sin(wx + wy)], -1)
    return torch.full((size, size), 2.0), image, K, c2w


def test_reprojection_into_the_same_camera_is_the_identity() -> None:
    depth, _, K, c2w = _plane_view(0.0)
    uv, z = reproject(depth, K, c2w, K, c2w)
    v, u = torch.meshgrid(torch.arange(24) + 0.5, torch.arange(24) + 0.5, indexing="ij")
    assert torch.allclose(uv[..., 0], u, atol=1e-4) and torch.allclose(uv[..., 1], v, atol=1e-4)
    assert torch.allclose(z, depth)


def test_reprojection_follows_a_sideways_camera_move() -> None:
    depth, _, K, c2w = _plane_view(0.0)
    _, _, K2, c2w2 = _plane_view(0.5)
    uv, _ = reproject(depth, K, c2w, K2, c2w2)
    v, u = torch.meshgrid(torch.arange(24) + 0.5, torch.arange(24) + 0.5, indexing="ij")
    assert torch.allclose(uv[..., 0], u - 0.5 / 2.0 * 20.0, atol=1e-4)  # 0.5 m at 2 m depth, f = 20 px
    assert torch.allclose(uv[..., 1], v, atol=1e-4)


def test_consistent_views_are_confident_and_contradictions_are_not() -> None:
    d0, im0, K0, c0 = _plane_view(0.0)
    d1, im1, K1, c1 = _plane_view(0.3)
    settings = ConsistencySettings(depth_tolerance=0.02, color_sigma=0.05, unseen=0.25)
    conf, seen, color = consistency_map(d0, im0, K0, c0, [(d1, im1, K1, c1)], settings)
    # pixels that reproject inside view 1 are seen and agree (same texture); the others are unseen
    assert seen[:, 3:].all() and not seen[:, :3].any()  # view 1 is 0.3 m (3 px) to the right
    assert float(conf[seen].min()) > 0.8
    assert torch.all(conf[~seen] == 0.25)
    assert float((color[seen] - im0[seen]).abs().max()) < 0.1
    # another texture in view 1: seen, but not supported
    conf_bad, _, _ = consistency_map(d0, im0, K0, c0, [(d1, 1.0 - im1, K1, c1)], settings)
    assert float(conf_bad[seen].mean()) < 0.2
    # an occluder in front of the plane in view 1: the depth test fails, nothing is seen
    conf_occ, seen_occ, _ = consistency_map(d0, im0, K0, c0, [(torch.full_like(d1, 1.0), im1, K1, c1)], settings)
    assert not seen_occ.any() and torch.all(conf_occ == 0.25)


def test_supplied_source_uses_view_confidence_or_ones() -> None:
    K, c2w = _camera_over_plane(0.0, 8)
    cam = Cameras.create(K, c2w[None], 8, 8)
    given = torch.linspace(-0.5, 1.5, 64).reshape(8, 8)
    views = [View("a", cam, torch.zeros(8, 8, 3), confidence=given), View("b", cam, torch.zeros(8, 8, 3))]
    maps = confidence_maps("supplied", views, [v.image for v in views])
    assert torch.equal(maps[0], given.clamp(0, 1)) and torch.equal(maps[1], torch.ones(8, 8))
    assert torch.equal(confidence_maps("none", views, [v.image for v in views])[0], torch.ones(8, 8))
    with pytest.raises(InputError, match="unknown confidence source"):
        confidence_maps("dust3r", views, [v.image for v in views])
    with pytest.raises(InputError, match="needs the current reconstruction"):
        confidence_maps("consistency", views, [v.image for v in views])
