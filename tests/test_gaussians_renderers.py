"""The Gaussian renderer components: batching, times, backgrounds, poses, and gsplat parity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from recon_core.cameras import Cameras
from recon_core.components import Renderer, Representation
from recon_core.config import config_from_dict, describe_options
from recon_core.cpp_extension import cpp_disabled
from recon_core.errors import InputError
from recon_core.gaussians import Gaussians3D
from recon_plugins.gaussians.rasterize import RasterizeSettings, rasterize_gaussians, select_projection
from recon_plugins.gaussians.renderers import GsplatRenderer, TorchGaussianRenderer

pytestmark = pytest.mark.usefixtures("one_thread")


class _Blobs(Representation):
    """N random Gaussians; with ``dynamic`` they move along x with time and log the times asked."""

    name = "test-blobs"
    provides = frozenset({"gaussians-3d"})

    def __init__(self, n: int = 150, *, dynamic: bool = False, sh_degree: int | None = None, background=None, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        means = torch.rand(n, 3, generator=g) - 0.5
        means[:, 2] += 3.0
        self.means = nn.Parameter(means)
        self.quats = nn.Parameter(torch.randn(n, 4, generator=g))
        self.scales = nn.Parameter(0.02 + 0.06 * torch.rand(n, 3, generator=g))
        self.opacities = nn.Parameter(0.2 + 0.7 * torch.rand(n, generator=g))
        k = 1 if sh_degree is None else (sh_degree + 1) ** 2
        self.sh = nn.Parameter(0.5 * torch.randn(n, k, 3, generator=g))
        self.sh_degree = sh_degree
        self.bg = background
        self.asked: list[float | None] = []
        if dynamic:
            self.provides = frozenset({"gaussians-3d", "dynamic"})

    def gaussians(self, time: float | None = None) -> Gaussians3D:
        self.asked.append(time)
        shift = torch.tensor([0.3 * (time or 0.0), 0.0, 0.0], device=self.means.device)
        common = dict(means=self.means + shift, quats=self.quats, scales=self.scales, opacities=self.opacities, background=self.bg)
        if self.sh_degree is None:
            return Gaussians3D(colors=torch.sigmoid(self.sh[:, 0]), **common)
        return Gaussians3D(sh=self.sh, sh_degree=self.sh_degree, **common)


def _cams(n: int, width: int = 32, height: int = 24, times=None) -> Cameras:
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-0.2, 0.2, n)
    K = torch.tensor([[1.5 * height, 0.0, width / 2], [0.0, 1.5 * height, height / 2], [0.0, 0.0, 1.0]])
    return Cameras.create(K, c2w, width, height, times=times)


def _direct(g: Gaussians3D, cams: Cameras, **kw):
    return rasterize_gaussians(
        g.means, g.quats, g.scales, g.opacities, cams.viewmats, cams.K, int(cams.width[0]), int(cams.height[0]),
        colors=g.colors, sh=g.sh, sh_degree=g.sh_degree, **kw,
    )


def test_component_declarations():
    assert issubclass(TorchGaussianRenderer, Renderer) and issubclass(GsplatRenderer, Renderer)
    assert TorchGaussianRenderer.name == "torch-3dgs" and GsplatRenderer.name == "gsplat"
    assert TorchGaussianRenderer.requires == frozenset({"gaussians-3d"}) == GsplatRenderer.requires
    assert "cpu" in TorchGaussianRenderer.devices and GsplatRenderer.devices == ("cuda",)
    names = {o["name"] for o in describe_options(TorchGaussianRenderer.Config)}
    assert {"tile_size", "batch_size", "max_block_elements", "eps2d", "near_plane", "far_plane", "backend"} <= names
    assert dataclasses.is_dataclass(GsplatRenderer.Config)


def test_render_matches_functional_and_composites_background_colour():
    rep = _Blobs(sh_degree=2)
    cams = _cams(3)
    bg = torch.tensor([0.1, 0.8, 0.3])
    out = TorchGaussianRenderer().render(rep, cams, background=bg)
    rgb, alpha, depth = _direct(rep.gaussians(), cams, background=bg)
    assert out.rgb.shape == (3, 24, 32, 3) and out.alpha.shape == out.depth.shape == (3, 24, 32, 1)
    torch.testing.assert_close(out.rgb, rgb)
    torch.testing.assert_close(out.alpha, alpha)
    torch.testing.assert_close(out.depth, depth)
    empty = out.alpha[..., 0] == 0
    assert empty.any() and (out.alpha > 0.5).any()
    torch.testing.assert_close(out.rgb[empty], bg.expand(int(empty.sum()), 3))
    assert torch.all(out.depth[empty] == 0)
    covered = out.alpha[..., 0] > 0.5
    assert torch.all((out.depth[covered] > 2.4) & (out.depth[covered] < 3.6))  # cube spans z in [2.5, 3.5]


def test_background_callable_is_composited_behind():
    seen = []

    def sky(cameras: Cameras, renderer) -> torch.Tensor:
        seen.append(renderer)
        h, w = cameras.size()
        ramp = torch.linspace(0, 1, w).expand(len(cameras), h, w)
        return torch.stack([ramp, 1 - ramp, torch.full_like(ramp, 0.5)], dim=-1)

    rep = _Blobs(background=sky)
    cams = _cams(2)
    renderer = TorchGaussianRenderer()
    out = renderer.render(rep, cams, background=torch.zeros(3))
    assert seen == [renderer]  # the scene's background is drawn by the renderer asked (e.g. a sky of Gaussians)
    rgb, alpha, _ = _direct(rep.gaussians(), cams)
    torch.testing.assert_close(out.rgb, rgb + (1 - alpha) * sky(cams, renderer))


def test_dynamic_representation_renders_each_camera_at_its_time():
    rep = _Blobs(dynamic=True)
    cams = _cams(3, times=[0.0, 1.0, 0.0])
    renderer = TorchGaussianRenderer()
    out = renderer.render(rep, cams)
    assert sorted(rep.asked) == [0.0, 1.0]  # one gaussians() call per distinct time
    for i, t in enumerate([0.0, 1.0, 0.0]):
        rgb, _, _ = _direct(rep.gaussians(t), cams[i])
        torch.testing.assert_close(out.rgb[i : i + 1], rgb)
    assert not torch.allclose(out.rgb[0], out.rgb[1])
    # the time comes from the cameras only (no override): retimed cameras render at the new times
    rep.asked.clear()
    out2 = renderer.render(rep, dataclasses.replace(cams, times=torch.ones(3)))
    assert rep.asked == [1.0]
    rgb1, _, _ = _direct(rep.gaussians(1.0), cams[0])
    torch.testing.assert_close(out2.rgb[0:1], rgb1)


def test_info_holds_projected_means_for_strategies():
    """One group of cameras over every row of the Gaussians: ``info`` has gsplat's shape, and the
    gradient of ``means2d`` is retained (what gsplat's strategies read)."""
    rep = _Blobs()
    cams = _cams(2)
    # the PyTorch projection gives the unpacked layout [C, N, 2]
    out = TorchGaussianRenderer(RasterizeSettings(projection="torch")).render(rep, cams)
    info = out.info
    assert info["means2d"].shape == (2, 150, 2) and info["radii"].shape[:2] == (2, 150)
    assert (info["width"], info["height"], info["n_cameras"]) == (32, 24, 2)
    assert not info.get("packed", False)
    out.rgb.sum().backward()
    assert info["means2d"].grad is not None and info["means2d"].grad.abs().sum() > 0
    # the fused C++ projection (the default on CPU when it is built) gives gsplat's packed layout
    renderer = TorchGaussianRenderer()
    if select_projection(renderer.config, rep.gaussians(None).means) == "cpp":
        out = renderer.render(rep, cams)
        packed = out.info
        m = packed["gaussian_ids"].shape[0]
        assert packed["packed"] is True and packed["means2d"].shape == (m, 2) and packed["radii"].shape == (m, 2)
        assert packed["camera_ids"].shape == (m,) and 0 < m <= 300
        out.rgb.sum().backward()
        assert packed["means2d"].grad is not None and packed["means2d"].grad.abs().sum() > 0
    # several groups (two sizes): no info, since it would not cover every camera
    mixed = TorchGaussianRenderer().render(rep, Cameras.cat([_cams(1, 32, 24), _cams(1, 20, 16)]))
    assert mixed.info == {}


def test_static_representation_is_asked_once_without_time():
    rep = _Blobs()
    TorchGaussianRenderer().render(rep, _cams(2, times=[0.0, 5.0]))
    assert rep.asked == [None]


def test_mixed_sizes_are_rendered_per_group_and_padded():
    rep = _Blobs()
    cams = Cameras.cat([_cams(1, 32, 24), _cams(1, 20, 16)])
    out = TorchGaussianRenderer().render(rep, cams)
    assert out.rgb.shape == (2, 24, 32, 3)
    small, _, _ = _direct(rep.gaussians(), cams[1])
    torch.testing.assert_close(out.rgb[1:2, :16, :20], small)
    assert torch.all(out.alpha[1, 16:] == 0) and torch.all(out.alpha[1, :, 20:] == 0)


def test_gradients_reach_gaussians_and_camera_pose():
    rep = _Blobs(sh_degree=1)
    cams = _cams(2)
    c2w = cams.c2w.clone().requires_grad_(True)
    out = TorchGaussianRenderer().render(rep, cams.with_c2w(c2w))
    loss = (out.rgb * torch.linspace(0, 1, 32)[None, None, :, None]).sum() + out.depth.sum()
    loss.backward()
    for name, p in [("means", rep.means), ("quats", rep.quats), ("scales", rep.scales), ("opacities", rep.opacities), ("sh", rep.sh)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(c2w.grad).all() and c2w.grad[:, :3, :].abs().sum() > 0
    # the translation gradient matches a finite difference of the loss along x
    eps = 1e-3
    with torch.no_grad():
        def f(dx: float) -> float:
            moved = c2w.detach().clone()
            moved[0, 0, 3] += dx
            o = TorchGaussianRenderer().render(rep, cams.with_c2w(moved))
            return float((o.rgb * torch.linspace(0, 1, 32)[None, None, :, None]).sum() + o.depth.sum())
        fd = (f(eps) - f(-eps)) / (2 * eps)
    assert c2w.grad[0, 0, 3].item() == pytest.approx(fd, rel=0.05, abs=1e-2)


@pytest.mark.skipif(cpp_disabled(), reason="RECON_NO_CPP=1: compiled path disabled")
def test_backend_option_switches_engines_with_the_same_images_and_gradients():
    rep = _Blobs(sh_degree=1)
    cams = _cams(2, width=30, height=22)
    results = []
    for backend in ("cpp", "torch"):
        renderer = TorchGaussianRenderer(config_from_dict(RasterizeSettings, {"backend": backend}, "torch-3dgs"))
        out = renderer.render(rep, cams, background=torch.tensor([0.3, 0.3, 0.3]))
        grads = torch.autograd.grad(out.rgb.sum() + out.depth.sum(), [rep.means, rep.sh])
        results.append((out.rgb.detach(), out.alpha.detach(), out.depth.detach(), *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    with pytest.raises(InputError, match="backend"):
        config_from_dict(RasterizeSettings, {"backend": "cuda"}, "torch-3dgs")


def test_missing_cameras_is_an_input_error():
    from recon_core.errors import InputError

    with pytest.raises(InputError):
        TorchGaussianRenderer().render(_Blobs(), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat renderer needs CUDA")
@pytest.mark.parametrize("sh_degree", [None, 3])
def test_gsplat_parity_on_cuda(sh_degree):
    """torch-3dgs and gsplat agree: images within 1e-3 MAE, gradients close."""
    cams = _cams(2, 64, 48).to("cuda")
    bg = torch.tensor([0.2, 0.3, 0.4], device="cuda")
    results = []
    for renderer in (TorchGaussianRenderer(), GsplatRenderer()):
        rep = _Blobs(n=400, sh_degree=sh_degree, seed=3).to("cuda")
        c2w = cams.c2w.clone().requires_grad_(True)
        out = renderer.render(rep, cams.with_c2w(c2w), background=bg)
        w = torch.linspace(0, 1, 64, device="cuda")[None, None, :, None]
        ((out.rgb * w).sum() + (out.alpha * w).sum()).backward()
        grads = [p.grad.clone() for p in (rep.means, rep.scales, rep.opacities, rep.sh)] + [c2w.grad.clone()]
        results.append((out, grads))
    (a, ga), (b, gb) = results
    assert (a.rgb - b.rgb).abs().mean() < 1e-3
    assert (a.alpha - b.alpha).abs().mean() < 1e-3
    covered = (a.alpha > 0.5) & (b.alpha > 0.5)
    assert (a.depth - b.depth)[covered].abs().mean() < 1e-3
    for x, y in zip(ga, gb):
        cos = torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0)
        assert cos > 0.99, float(cos)
        assert (x - y).norm() <= 0.05 * y.norm() + 1e-6
