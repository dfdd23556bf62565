"""DGGT's 4D composition rules, time normalisation, depth unprojection and input resizing."""

from __future__ import annotations

from recon_core.geometry import project_points


import pytest
import torch

from recon_plugins.dggt.composition import TimeMap, compose_pixel_gaussians, lifespan_opacity, unproject_depth
from recon_plugins.dggt.preprocess import plan_resize, resize_images, resize_masks
from recon_plugins.dggt.sky import SkyModel, fibonacci_hemisphere

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lifespan_opacity_formula() -> None:
    opacity = torch.tensor([0.8, 0.5, 0.3])
    gamma = torch.tensor([0.5, 2.0, 0.1])
    t_i = torch.tensor([1.0, 0.0, 3.0])
    assert torch.allclose(lifespan_opacity(opacity, t_i, t_i, gamma), opacity), "unchanged at its own time"
    for sign in (1.0, -1.0):
        assert torch.allclose(lifespan_opacity(opacity, t_i + sign * gamma, t_i, gamma), 0.1 * opacity, rtol=1e-3)
    far = lifespan_opacity(opacity, t_i + 2 * gamma, t_i, gamma)
    assert torch.allclose(far, opacity * 0.1**4, rtol=1e-3), "Gaussian in time: 0.1^((Δt/γ)²)"


def test_time_map_matches_dggt_frame_spacing() -> None:
    times = torch.tensor([10.0, 10.1, 10.2, 10.3])  # seconds
    tmap = TimeMap(10.0, 10.3, 4)
    expected = torch.arange(4) / 3 * (4 / 4)
    assert torch.allclose(tmap.tau(times), expected)
    assert TimeMap(0.0, 0.0, 1).tau(5.0) == 0.0


def test_unproject_depth_uses_pixel_centres() -> None:
    H, W = 6, 8
    K = torch.tensor([[[10.0, 0, 4], [0, 12.0, 3], [0, 0, 1]]])
    c2w = torch.eye(4)[None].clone()
    c2w[0, :3, 3] = torch.tensor([1.0, -2.0, 0.5])
    depth = torch.rand(1, H, W) + 1
    pts = unproject_depth(depth, K, c2w)
    cam = pts[0] - c2w[0, :3, 3]
    uv = (cam @ K[0].T)[..., :2] / cam[..., 2:]
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    assert torch.allclose(uv[..., 0], cols + 0.5, atol=1e-5) and torch.allclose(uv[..., 1], rows + 0.5, atol=1e-5)
    assert torch.allclose(cam[..., 2], depth[0])
    assert torch.allclose(pts[0, 2, 3], torch.tensor([1.0, -2.0, 0.5]) + depth[0, 2, 3] * torch.tensor([-0.5 / 10, -0.5 / 12, 1.0]), atol=1e-5)


def test_composition_rules() -> None:
    S, H, W = 2, 2, 3
    points = torch.randn(S, H, W, 3)
    gs = torch.zeros(S, H, W, 11)
    gs[..., 0:3] = 0.5
    gs[..., 3] = 0.8
    gs[..., 4:7] = 0.01
    gs[..., 7] = 1.0
    life = torch.full((S, H, W), 0.7)
    logit = torch.tensor([[[-3.0, 0.0, 0.49], [0.51, 3.0, -1.0]], [[-2.0, -2.0, 2.0], [2.0, -2.0, -2.0]]])
    non_sky = torch.ones(S, H, W, dtype=torch.bool)
    non_sky[0, 1, 2] = False  # a sky pixel: neither static nor dynamic
    g = compose_pixel_gaussians(points, gs, life, logit, non_sky, threshold=0.5)
    static_mask = non_sky & (logit < 0.5)
    n_static = int(static_mask.sum())
    assert (~g.dynamic).sum() == n_static == 7
    assert g.dynamic.sum() == non_sky.sum() == 11, "every non-sky pixel also yields a dynamic Gaussian"
    p = torch.sigmoid(logit)
    assert torch.allclose(g.opacity[~g.dynamic], (0.8 * (1 - p))[static_mask])
    assert torch.allclose(g.opacity[g.dynamic], (0.8 * p)[non_sky])
    assert torch.equal(g.means[~g.dynamic], points[static_mask])
    assert torch.equal(g.frame[g.dynamic], torch.tensor([0] * 5 + [1] * 6))
    assert not any(torch.equal(m, points[0, 1, 2]) for m in g.means), "sky pixels are not Gaussians"
    pruned = compose_pixel_gaussians(points, gs, life, logit, non_sky, min_dynamic_opacity=0.5)
    assert int(pruned.dynamic.sum()) == int(((0.8 * p) >= 0.5)[non_sky].sum())


def test_resize_plan_follows_vggt_crop_mode() -> None:
    wide = plan_resize(1920, 1080)
    assert (wide.width, wide.height, wide.crop_top) == (518, 294, 0)  # 1080·518/1920 = 291.4 → 21·14
    assert wide.height % 14 == 0
    street = plan_resize(320, 180)
    assert (street.width, street.height) == (518, 294)
    tall = plan_resize(1000, 2000)
    assert (tall.resized_height, tall.height, tall.crop_top) == (1036, 518, 259)
    with pytest.raises(ValueError):
        plan_resize(100, 100, target_width=500)


def test_resize_images_masks_and_intrinsics() -> None:
    plan = plan_resize(60, 120, target_width=42, patch_size=14)  # 84 rows → centre crop to 42
    assert (plan.resized_height, plan.height, plan.crop_top) == (84, 42, 21)
    images = torch.rand(2, 120, 60, 3)
    out = resize_images(images, plan)
    assert out.shape == (2, 3, 42, 42) and out.min() >= 0 and out.max() <= 1
    masks = torch.zeros(2, 120, 60, dtype=torch.bool)
    masks[:, :, 30] = True  # a one-pixel-wide pole must survive as a mask, not be blurred away
    m = resize_masks(masks, plan)
    assert m.dtype == torch.bool and m.shape == (2, 42, 42)
    assert m[:, :, 21].all() and m.sum() == 2 * 42
    K = torch.tensor([[50.0, 0, 30], [0, 50.0, 60], [0, 0, 1]])
    Kn = plan.K_to_network(K)
    assert torch.allclose(Kn, torch.tensor([[35.0, 0, 21], [0, 35.0, 21], [0, 0, 1]]))
    assert torch.allclose(plan.K_to_source(Kn), K)


def test_sky_hemisphere_and_rendering() -> None:
    pts = fibonacci_hemisphere(400, 50.0)
    assert torch.allclose(pts.norm(dim=-1), torch.full((400,), 50.0), atol=1e-3)
    assert (pts[:, 1] <= 1e-6).all(), "y <= 0: the upper half in OpenCV axes"
    sky = SkyModel(resolution=12, radius=50.0)
    assert sky.bg_pcd.shape == (144, 3) and (sky.bg_scales.exp() > 0).all()
    with torch.device("meta"):
        lazy = SkyModel(resolution=300)
    assert lazy.bg_scales.is_meta and lazy.bg_scales.shape == (90000, 3)
    # a camera at the origin looking up (-y) sees the dome; one looking down sees nothing of it
    up = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])  # w2c: camera z = world -y
    down = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    K = torch.tensor([[8.0, 0, 8], [0, 8.0, 8], [0, 0, 1]])
    images = torch.full((1, 3, 16, 16), 0.25)
    samples, visible = sky.sample(images, up[None], K[None])
    # DGGT's Projector: (2u/(W-1) - 1) with align_corners=False and zero padding, so points within
    # about a pixel of the border read partly outside the image (darker), the rest 0.25
    assert visible.any() and (samples <= 0.25 + 1e-6).all()
    assert (samples - 0.25).abs().max(dim=1).values.lt(1e-6).float().mean() > 0.6
    uv, _ = project_points(sky.bg_pcd, K[None], up[None])
    inner = visible & (uv[0] > 1).all(-1) & (uv[0] < 14).all(-1)
    assert inner.any() and torch.allclose(samples[inner[visible]], torch.full_like(samples[inner[visible]], 0.25))
    assert not sky.sample(images, down[None], K[None])[1].any()
    colors = sky.colors(samples)
    assert colors.shape == (int(visible.sum()), 3) and (colors.abs() <= 1).all()
    from recon_core import Cameras
    from recon_plugins.gaussians.renderers import TorchGaussianRenderer

    class Spy(TorchGaussianRenderer):  # the sky is drawn by the renderer it is given (the run's)
        calls: list = []

        def render(self, rep, cameras, *, background=None):
            self.calls.append((rep.name, len(rep.gaussians()), background))
            return super().render(rep, cameras, background=background)

    camera = Cameras.create(K, torch.linalg.inv(up), 16, 16)
    spy = Spy()
    img = sky.render(torch.ones_like(colors), visible, camera, spy)
    assert [(name, n) for name, n, _ in spy.calls] == [("dggt-sky", int(visible.sum()))]
    assert torch.equal(spy.calls[0][2], torch.zeros(3)), "composited over black"
    assert img.shape == (1, 16, 16, 3)
    assert img[0, 6:10, 6:10].min() > 0.5, "the dome covers the view centre"
