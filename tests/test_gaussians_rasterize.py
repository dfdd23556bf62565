"""Parity and gradient tests for the rasteriser (plugins/gaussians/rasterize.py).

References: gsplat's own pure-PyTorch projection and SH (``gsplat.cuda._torch_impl``) and the
brute-force per-pixel compositor in ``plugins/gaussians/_reference.py``. Whole renders run with
both compositing backends (``torch``: the pure-PyTorch twin; ``cpp``: the compiled CPU kernels,
whose own parity tests are in test_gaussians_cpu_kernel.py); tests of the torch twin's internals
(chunking, saved blocks, binning) force ``backend="torch"``.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import look_at_torch

from recon_core.cpp_extension import cpp_disabled
from recon_plugins.gaussians._reference import composite_reference, render_reference
from recon_plugins.gaussians.rasterize import (
    RasterizeSettings,
    bin_gaussians,
    composite_tiles,
    eval_sh_bases,
    project_gaussians,
    rasterize_gaussians,
    sh_to_colors,
)

pytestmark = pytest.mark.usefixtures("one_thread")

gsplat_torch = pytest.importorskip("gsplat.cuda._torch_impl")

# "cpp" is skipped only when RECON_NO_CPP=1 asks for no compiled code; a failed build fails.
BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(cpp_disabled(), reason="RECON_NO_CPP=1"))]


def _scene(n: int, seed: int, dtype=torch.float64, sh_degree: int | None = None, opacity=(0.1, 0.9), scale=(0.02, 0.08)):
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    means = u(n, 3) - 0.5
    means[:, 2] += 3.0
    out = dict(
        means=means,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        scales=scale[0] + (scale[1] - scale[0]) * u(n, 3),
        opacities=opacity[0] + (opacity[1] - opacity[0]) * u(n),
    )
    if sh_degree is None:
        out["colors"] = u(n, 3)
    else:
        out["sh"] = 0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype)
        out["sh_degree"] = sh_degree
    return out


def _cameras(n_cams: int, width: int, height: int, dtype=torch.float64):
    """Cameras around the cube at z = 3, with different intrinsics (c2w [C,4,4], K [C,3,3])."""
    c2ws, ks = [], []
    for i in range(n_cams):
        angle = 0.25 * i
        eye = torch.tensor([math.sin(angle) * 3.0, 0.2 * i, 3.0 - math.cos(angle) * 3.0], dtype=dtype)
        c2ws.append(look_at_torch(eye, torch.tensor([0.0, 0.0, 3.0], dtype=dtype), up=(0.0, 1.0, 0.0)))
        f = 1.5 * height * (1.0 + 0.1 * i)
        ks.append(torch.tensor([[f, 0.0, width / 2 + i], [0.0, f * 1.05, height / 2 - i], [0.0, 0.0, 1.0]], dtype=dtype))
    return torch.stack(c2ws), torch.stack(ks)


# ------------------------------------------------------------------------------- projection


def test_projection_matches_gsplat_torch_impl():
    scene = _scene(300, seed=1)
    scene["means"][:20, 2] = -1.0  # behind the cameras
    scene["means"][20:40, 0] += 5.0  # off-screen
    c2w, ks = _cameras(3, 64, 48)
    viewmats = torch.linalg.inv(c2w)
    ours = project_gaussians(scene["means"], scene["quats"], scene["scales"], viewmats, ks, 64, 48)
    covars, _ = gsplat_torch._quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    radii, means2d, depths, conics, _ = gsplat_torch._fully_fused_projection(scene["means"], covars, viewmats, ks, 64, 48)
    assert torch.equal(ours.radii, radii)
    valid = (radii > 0).all(-1)
    assert 100 < int(valid.sum()) < valid.numel()  # some culled, most kept
    torch.testing.assert_close(ours.means2d[valid], means2d[valid], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(ours.conics[valid], conics[valid], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours.depths, depths)


def test_projection_gradients_match_gsplat_torch_impl():
    scene = _scene(50, seed=2)
    c2w, ks = _cameras(2, 40, 30)
    c2w.requires_grad_(True)
    for v in scene.values():
        if isinstance(v, torch.Tensor):
            v.requires_grad_(True)
    weights = [torch.randn(2, 50, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64) for d in (2, 3, 1)]

    def loss(m2d, con, dep):
        return (m2d * weights[0]).sum() + (con * weights[1]).sum() + (dep[..., None] * weights[2]).sum()

    viewmats = torch.linalg.inv(c2w)
    ours = project_gaussians(scene["means"], scene["quats"], scene["scales"], viewmats, ks, 40, 30)
    params = [scene["means"], scene["quats"], scene["scales"], c2w]
    g_ours = torch.autograd.grad(loss(ours.means2d, ours.conics, ours.depths), params)
    covars, _ = gsplat_torch._quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    _, m2d, dep, con, _ = gsplat_torch._fully_fused_projection(scene["means"], covars, torch.linalg.inv(c2w), ks, 40, 30)
    g_ref = torch.autograd.grad(loss(m2d, con, dep), params)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


# ------------------------------------------------------------------------------------ SH


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(500, 3, generator=g, dtype=torch.float64) * 3.0
    coeffs = torch.randn(500, 16, 3, generator=g, dtype=torch.float64)
    ref = gsplat_torch._spherical_harmonics(degree, dirs, coeffs)
    ours = torch.einsum("nb,nbc->nc", eval_sh_bases(degree, dirs), coeffs[:, : (degree + 1) ** 2])
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sh_to_colors(coeffs, degree, dirs), (ref + 0.5).clamp_min(0.0))


# ---------------------------------------------------------------------------- rasterisation


def _render_both(scene, n_cams, width, height, settings, background=None):
    c2w, ks = _cameras(n_cams, width, height)
    viewmats = torch.linalg.inv(c2w)
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], viewmats, ks, width, height)
    kw = {k: scene[k] for k in ("colors", "sh", "sh_degree") if k in scene}
    ours = rasterize_gaussians(*args, **kw, background=background, settings=settings)
    ref = render_reference(*args, **kw, background=background)
    return ours, ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "sh_degree, tile_size, batch_size, background",
    [
        (None, 16, 64, None),
        (None, 8, 8, (0.2, 0.5, 1.0)),
        (3, 16, 16, None),
        (2, 4, 5, (1.0, 1.0, 1.0)),
    ],
)
def test_rasterize_matches_bruteforce(sh_degree, tile_size, batch_size, background, backend):
    # dense and opaque enough that many pixels stop early (transmittance < 1e-4)
    scene = _scene(250, seed=3, sh_degree=sh_degree, opacity=(0.3, 0.99), scale=(0.03, 0.12))
    bg = None if background is None else torch.tensor(background, dtype=torch.float64)
    settings = RasterizeSettings(
        tile_size=tile_size, cpp_tile_size=tile_size, batch_size=batch_size, max_block_elements=4096, backend=backend
    )
    (rgb, alpha, depth), (rgb_r, alpha_r, depth_r) = _render_both(scene, 2, 37, 29, settings, bg)
    assert rgb.shape == (2, 29, 37, 3) and alpha.shape == depth.shape == (2, 29, 37, 1)
    assert (alpha_r > 0.999).sum() > 50, "scene should exercise early termination"
    assert (alpha_r == 0).sum() > 0, "scene should have empty pixels"
    torch.testing.assert_close(rgb, rgb_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(alpha, alpha_r, rtol=0, atol=1e-10)
    torch.testing.assert_close(depth, depth_r, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rasterize_float32_close_to_float64_reference(backend):
    scene = _scene(200, seed=4, sh_degree=1)
    settings = RasterizeSettings(backend=backend)
    scene32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    c2w, ks = _cameras(1, 48, 40)
    rgb, alpha, _ = rasterize_gaussians(
        scene32["means"], scene32["quats"], scene32["scales"], scene32["opacities"], torch.linalg.inv(c2w).float(), ks.float(),
        48, 40, sh=scene32["sh"], sh_degree=1, settings=settings,
    )
    (rgb64, alpha64, _), (rgb_r, alpha_r, _) = _render_both(scene, 1, 48, 40, settings)
    assert rgb.dtype == torch.float32
    assert (rgb.double() - rgb_r).abs().mean() < 1e-5
    assert (alpha.double() - alpha_r).abs().mean() < 1e-5


def test_chunking_does_not_change_result():
    scene = _scene(300, seed=5, opacity=(0.5, 0.99))
    c2w, ks = _cameras(2, 50, 34)
    args = (scene["means"], scene["quats"], scene["scales"], scene["opacities"], torch.linalg.inv(c2w), ks, 50, 34)
    a = rasterize_gaussians(*args, colors=scene["colors"], settings=RasterizeSettings(max_block_elements=1, backend="torch"))
    b = rasterize_gaussians(
        *args, colors=scene["colors"], settings=RasterizeSettings(max_block_elements=1 << 24, batch_size=512, backend="torch")
    )
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pixel_centre_convention(backend):
    """A small isotropic Gaussian projected exactly onto the centre of pixel (row 3, col 5)."""
    width, height, f = 12, 8, 10.0
    # principal point at the centre of pixel (3, 5); the Gaussian sits on the optical axis
    ks = torch.tensor([[[f, 0.0, 5.5], [0.0, f, 3.5], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    x, y, z = 0.0, 0.0, 2.0
    rgb, alpha, depth = rasterize_gaussians(
        torch.tensor([[x, y, z]], dtype=torch.float64), torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
        torch.full((1, 3), 0.1, dtype=torch.float64), torch.tensor([0.9], dtype=torch.float64),
        torch.eye(4, dtype=torch.float64)[None], ks, width, height, colors=torch.ones(1, 3, dtype=torch.float64),
        settings=RasterizeSettings(backend=backend),
    )
    a = alpha[0, ..., 0]
    assert divmod(int(a.argmax()), width) == (3, 5)
    torch.testing.assert_close(a[3, 4], a[3, 6])  # symmetric about the pixel centre
    torch.testing.assert_close(a[2, 5], a[4, 5])
    # sigma_px = f * 0.1 / z = 0.5, dilated variance 0.25 + 0.3: alpha at the centre is o * 1
    torch.testing.assert_close(a[3, 5], torch.tensor(0.9, dtype=torch.float64))
    torch.testing.assert_close(a[3, 6], 0.9 * torch.exp(torch.tensor(-0.5 / 0.55, dtype=torch.float64)))
    assert float(depth[0, 3, 5, 0]) == pytest.approx(z)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_visible_gives_empty_images_and_zero_gradients(backend):
    scene = _scene(20, seed=6)
    scene["means"][:, 2] = -3.0  # all behind the camera
    means = scene["means"].requires_grad_(True)
    c2w, ks = _cameras(1, 16, 16)
    rgb, alpha, depth = rasterize_gaussians(
        means, scene["quats"], scene["scales"], scene["opacities"], torch.linalg.inv(c2w), ks, 16, 16,
        colors=scene["colors"], background=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
        settings=RasterizeSettings(backend=backend),
    )
    assert torch.all(alpha == 0) and torch.all(depth == 0)
    torch.testing.assert_close(rgb[0, 0, 0], torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    (g,) = torch.autograd.grad(rgb.sum(), means, allow_unused=True)
    assert g is None or torch.all(g == 0)


# -------------------------------------------------------------------------------- gradients


def test_composite_gradcheck():
    """The hand-written backward of the tile compositor against finite differences."""
    g = torch.Generator().manual_seed(7)
    m = 12
    means2d = (torch.rand(m, 2, generator=g, dtype=torch.float64) * torch.tensor([14.0, 10.0], dtype=torch.float64)).requires_grad_()
    a = 0.1 + 0.4 * torch.rand(m, generator=g, dtype=torch.float64)
    c = 0.1 + 0.4 * torch.rand(m, generator=g, dtype=torch.float64)
    b = (torch.rand(m, generator=g, dtype=torch.float64) - 0.5) * 0.5 * torch.sqrt(a * c)
    conics = torch.stack([a, b, c], -1).requires_grad_()
    opac = (0.3 + 0.6 * torch.rand(m, generator=g, dtype=torch.float64)).requires_grad_()
    feats = torch.rand(m, 4, generator=g, dtype=torch.float64).requires_grad_()
    depths = torch.rand(m, generator=g, dtype=torch.float64)
    cov = torch.stack([c, -b, a], -1) / (a * c - b * b)[:, None]
    bins = bin_gaussians(means2d.detach(), cov, opac.detach(), depths, torch.zeros(m, dtype=torch.long), 1, 14, 10, 8)
    settings = RasterizeSettings(tile_size=8, batch_size=3, max_block_elements=8 * 64 * 3)

    def fn(m2, co, op, fe):
        return composite_tiles(m2, co, op, fe, bins, 1, 14, 10, settings)

    assert torch.autograd.gradcheck(fn, (means2d, conics, opac, feats), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_render_gradcheck_including_pose(backend):
    """gradcheck of rgb, alpha and depth w.r.t. every Gaussian parameter and the c2w pose."""
    scene = _scene(8, seed=8, sh_degree=1, scale=(0.1, 0.25))
    c2w, _ = _cameras(1, 10, 8)
    ks = torch.tensor([[[22.0, 0.0, 5.0], [0.0, 20.0, 4.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    settings = RasterizeSettings(tile_size=4, cpp_tile_size=4, batch_size=3, backend=backend)
    inputs = [scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["sh"], c2w]
    inputs = [t.clone().requires_grad_() for t in inputs]

    def fn(means, quats, scales, opac, sh, c2w_):
        rgb, alpha, depth = rasterize_gaussians(
            means, quats, scales, opac, torch.linalg.inv(c2w_), ks, 10, 8, sh=sh, sh_degree=1, settings=settings
        )
        return rgb, alpha, depth

    rgb, alpha, _ = fn(*inputs)
    assert (alpha > 0.05).float().mean() > 0.5, "scene must cover the image"
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize(
    "backend, saved_block_elements",
    [("torch", 0), ("torch", 1 << 25), pytest.param("cpp", 0, marks=BACKENDS[1].marks)],
)
def test_gradients_match_autograd_through_reference(backend, saved_block_elements):
    """Hand-written backward vs plain autograd through the brute-force reference, bigger scene.

    Torch twin: with forward blocks recomputed in the backward (0) and kept from the forward.
    """
    scene = _scene(120, seed=9, sh_degree=2, opacity=(0.3, 0.99), scale=(0.03, 0.1))
    c2w, ks = _cameras(2, 30, 22)
    names = ["means", "quats", "scales", "opacities", "sh"]
    leaves = {k: scene[k].clone().requires_grad_() for k in names}
    c2w = c2w.clone().requires_grad_()
    bg = torch.tensor([0.3, 0.1, 0.6], dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(10)
    w_rgb, w_a, w_d = (torch.randn(2, 22, 30, d, generator=g, dtype=torch.float64) for d in (3, 1, 1))
    params = [*leaves.values(), c2w, bg]

    def grads(fn, **kw):
        rgb, alpha, depth = fn(
            leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], torch.linalg.inv(c2w), ks, 30, 22,
            sh=leaves["sh"], sh_degree=2, background=bg, **kw,
        )
        loss = (rgb * w_rgb).sum() + (alpha * w_a).sum() + (depth * w_d).sum()
        return torch.autograd.grad(loss, params)

    settings = RasterizeSettings(
        tile_size=8, batch_size=16, max_block_elements=8 * 64 * 16, saved_block_elements=saved_block_elements, backend=backend
    )
    ours = grads(rasterize_gaussians, settings=settings)
    ref = grads(render_reference)
    for name, a, b in zip([*names, "c2w", "background"], ours, ref):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg=name)


def test_composite_reference_independent_check():
    """Sanity check of the reference itself: one Gaussian over one pixel, computed by hand."""
    means2d = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]], dtype=torch.float64)
    conics = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]], dtype=torch.float64)
    opac = torch.tensor([[0.5, 0.8]], dtype=torch.float64)
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    depths = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    image, alpha = composite_reference(means2d, conics, opac, feats, depths, torch.ones(1, 2, dtype=torch.bool), 1, 1)
    torch.testing.assert_close(image[0, 0, 0], torch.tensor([0.5, 0.5 * 0.8], dtype=torch.float64))
    torch.testing.assert_close(alpha[0, 0, 0, 0], torch.tensor(1 - 0.5 * 0.2, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_with_retain_graph_recomputes_blocks(backend):
    scene = _scene(60, seed=11, opacity=(0.5, 0.99))
    c2w, ks = _cameras(1, 24, 16)
    means = scene["means"].clone().requires_grad_()
    rgb, alpha, _ = rasterize_gaussians(
        means, scene["quats"], scene["scales"], scene["opacities"], torch.linalg.inv(c2w), ks, 24, 16, colors=scene["colors"],
        settings=RasterizeSettings(backend=backend),
    )
    loss = rgb.sum() + alpha.sum()
    (g1,) = torch.autograd.grad(loss, means, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, means)
    assert g1.abs().sum() > 0
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)


def test_binning_matches_bruteforce_tile_cover_and_depth_order():
    """Each tile lists exactly the Gaussians whose opacity-aware box holds one of its pixel centres,
    front to back; and the box is safe: outside it no pixel reaches alpha >= 1/255."""
    g = torch.Generator().manual_seed(12)
    m, width, height, ts = 60, 37, 29, 8
    means2d = torch.rand(m, 2, generator=g, dtype=torch.float64) * torch.tensor([50.0, 40.0], dtype=torch.float64) - 5.0
    a = 0.02 + 0.5 * torch.rand(m, generator=g, dtype=torch.float64)
    c = 0.02 + 0.5 * torch.rand(m, generator=g, dtype=torch.float64)
    b = (torch.rand(m, generator=g, dtype=torch.float64) - 0.5) * 1.6 * torch.sqrt(a * c)
    conics = torch.stack([a, b, c], -1)
    cov = torch.stack([c, -b, a], -1) / (a * c - b * b)[:, None]
    opac = 1 / 255 + (1 - 1 / 255) * torch.rand(m, generator=g, dtype=torch.float64)
    depths = torch.rand(m, generator=g, dtype=torch.float64)
    cams = torch.randint(0, 2, (m,), generator=g)
    bins = bin_gaussians(means2d, cov, opac, depths, cams, 2, width, height, ts)

    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5, torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    extent = torch.sqrt(2 * torch.log(opac * 255)).clamp_max(3.33)
    half_x, half_y = extent * cov[:, 0].sqrt(), extent * cov[:, 2].sqrt()
    tiles_x, tiles_y = -(-width // ts), -(-height // ts)
    expected = set()
    for i in range(m):
        dx, dy = xs - means2d[i, 0], ys - means2d[i, 1]
        inside = (dx.abs() <= half_x[i]) & (dy.abs() <= half_y[i])
        sigma = 0.5 * (a[i] * dx * dx + c[i] * dy * dy) + b[i] * dx * dy
        assert not ((opac[i] * torch.exp(-sigma) >= 1 / 255) & ~inside).any()  # the box is safe
        for row, col in inside.nonzero().tolist():
            expected.add((int(cams[i]) * tiles_x * tiles_y + (row // ts) * tiles_x + col // ts, i))
    got = set()
    for tile in range(bins.count.shape[0]):
        ids = bins.ids[bins.start[tile] : bins.start[tile] + bins.count[tile]]
        assert torch.all(depths[ids][1:] >= depths[ids][:-1])
        got |= {(tile, int(i)) for i in ids}
    assert got == expected and len(got) > m
