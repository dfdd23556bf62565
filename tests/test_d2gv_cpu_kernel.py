"""The compiled CPU summation rasteriser against its PyTorch twin (``torch-2dgs``'s pure path).

The C++ extension must build wherever a compiler exists (CI has one): these tests fail, not
skip, when it does not, unless ``RECON_NO_CPP=1`` asks for the PyTorch paths only.
"""

from __future__ import annotations

import math

import pytest
import torch

from recon_core import InputError
from recon_core.cpp_extension import cpp_disabled
from recon_plugins.d2gv import _cpp
from recon_plugins.d2gv._reference import _rasterize_sum_dense
from recon_plugins.d2gv.rasterize import RasterSettings, project_cholesky, rasterize_sum, resolve_backend

pytestmark = [
    pytest.mark.skipif(cpp_disabled(), reason="RECON_NO_CPP=1: the compiled path is switched off"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module", autouse=True)
def extension():
    ext = _cpp.extension()
    assert ext is not None, "the C++ rasteriser did not build (see the RuntimeWarning; RECON_CPP_VERBOSE=1 shows the compiler)"
    return ext


def random_scene(seed: int, B: int, N: int, H: int, W: int, C: int = 3, crowd: int = 0, dtype=torch.float32):
    """Positions partly off-image, Cholesky factors from sub-pixel (radius 1) to ~40 px (many tiles),
    colours partly negative, and ``crowd`` extra small Gaussians packed into the first 16×16 tile."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, N, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2
    size = torch.exp(torch.rand(B, N, 1, generator=g, dtype=torch.float64) * math.log(60.0)) * 0.2  # 0.2 .. 12 px
    chol = torch.cat(
        [
            size * (0.5 + torch.rand(B, N, 1, generator=g, dtype=torch.float64)),
            size * (torch.rand(B, N, 1, generator=g, dtype=torch.float64) - 0.5),
            size * (0.5 + torch.rand(B, N, 1, generator=g, dtype=torch.float64)),
        ],
        dim=-1,
    )
    if crowd:
        pix = torch.rand(B, crowd, 2, generator=g, dtype=torch.float64) * min(16, H, W) * 0.8 + 1.0
        cxy = torch.stack([pix[..., 0] / W * 2 - 1, pix[..., 1] / H * 2 - 1], dim=-1)
        cchol = torch.rand(B, crowd, 3, generator=g, dtype=torch.float64) * torch.tensor([1.5, 0.6, 1.5], dtype=torch.float64)
        cchol = cchol + torch.tensor([0.3, -0.3, 0.3], dtype=torch.float64)
        xy, chol = torch.cat([xy, cxy], 1), torch.cat([chol, cchol], 1)
    n = xy.shape[1]
    colors = torch.rand(B, n, C, generator=g, dtype=torch.float64) * 0.6 - 0.1
    if crowd:
        colors[:, N:] /= crowd / 8  # keep the crowded tile mostly below the clamp
    weights = torch.rand(B, n, generator=g, dtype=torch.float64)
    means, conics, radii = project_cholesky(xy, chol, H, W)
    return [t.to(dtype) for t in (means, conics, colors, weights)], radii


def render(backend: str, leaves, radii, weighted: bool, H: int, W: int, clamp: bool):
    means, conics, colors, weights = leaves
    settings = RasterSettings(H, W, clamp=clamp, backend=backend, chunk_evals=1 << 16)
    return rasterize_sum(means, conics, colors, radii, weights if weighted else None, settings)


def grads(backend: str, inputs, radii, weighted: bool, H: int, W: int, clamp: bool, cotangent):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    img = render(backend, leaves, radii, weighted, H, W, clamp)
    used = leaves if weighted else leaves[:3]
    return img.detach(), torch.autograd.grad((img * cotangent).sum(), used)


CASES = [
    # seed, B, N, H, W, C, crowd, weighted, clamp
    (0, 1, 300, 37, 53, 3, 0, True, True),  # sizes not multiples of 16
    (1, 2, 200, 45, 29, 3, 400, True, False),  # > 256 Gaussians in one tile
    (2, 3, 150, 16, 32, 1, 0, False, True),  # exact tiles, one channel, no weights
    (3, 1, 80, 7, 5, 5, 300, False, False),  # smaller than a tile, 5 channels
    (4, 2, 500, 90, 160, 3, 0, True, True),
]


@pytest.mark.parametrize("seed,B,N,H,W,C,crowd,weighted,clamp", CASES)
def test_float32_images_and_gradients_match_torch_twin(seed, B, N, H, W, C, crowd, weighted, clamp):
    inputs, radii = random_scene(seed, B, N, H, W, C, crowd)
    cot = torch.randn(B, H, W, C, generator=torch.Generator().manual_seed(seed + 7))
    img_c, g_c = grads("cpp", inputs, radii, weighted, H, W, clamp, cot)
    img_t, g_t = grads("torch", inputs, radii, weighted, H, W, clamp, cot)
    assert img_t.abs().amax() > 0.05  # the scene renders something
    if crowd:
        assert (radii[:, -crowd:] > 0).all() and crowd > 256
    torch.testing.assert_close(img_c, img_t, rtol=0, atol=1e-4)
    for name, a, b in zip(("means", "conics", "colors", "weights"), g_c, g_t):
        assert b.abs().amax() > 0, name
        scale = max(1.0, float(b.abs().amax()))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


def test_float64_matches_dense_reference_exactly():
    """In float64 the kernel uses std::exp, so it agrees with brute force to rounding."""
    H, W = 23, 41
    inputs, radii = random_scene(11, 2, 120, H, W, 3, crowd=50, dtype=torch.float64)
    cot = torch.randn(2, H, W, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    img_c, g_c = grads("cpp", inputs, radii, True, H, W, True, cot)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    ref = _rasterize_sum_dense(leaves[0], leaves[1], leaves[2], radii, leaves[3], RasterSettings(H, W))
    g_r = torch.autograd.grad((ref * cot).sum(), leaves)
    torch.testing.assert_close(img_c, ref.detach(), rtol=1e-10, atol=1e-12)
    for a, b in zip(g_c, g_r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fast_exponential_is_accurate():
    """One Gaussian covering σ from 0 to the 1/255 cut-off: float32 α = exp(-σ) within 2.5e-7 · α
    of the exact exponential of the same float32 σ."""
    H = W = 61
    xy = torch.tensor([[[0.013, -0.021]]])
    chol = torch.tensor([[[9.0, 2.0, 7.0]]])
    means, conics, radii = project_cholesky(xy, chol, H, W)
    img = rasterize_sum(means, conics, torch.ones(1, 1, 1), radii, None, RasterSettings(H, W, clamp=False, backend="cpp"))[0, ..., 0]
    centres = torch.arange(W, dtype=torch.float32) + 0.5
    dx = (centres - means[0, 0, 0])[None, :]
    dy = (centres - means[0, 0, 1])[:, None]
    a, b, c = conics[0, 0]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy  # float32, same order as the kernel
    exact = torch.exp(-sigma.double())
    r = radii.item()
    inside = (exact >= 1 / 255) & (dx.abs() <= r) & (dy.abs() <= r)
    assert inside.sum() > 1500
    rel = ((img.double() - exact).abs() / exact)[inside]
    assert float(rel.max()) < 2.5e-7
    assert (img[~inside] == 0).all()


def test_result_does_not_depend_on_thread_count():
    H, W = 50, 70
    inputs, radii = random_scene(5, 2, 400, H, W, 3, crowd=300)
    cot = torch.randn(2, H, W, 3, generator=torch.Generator().manual_seed(1))
    img1, g1 = grads("cpp", inputs, radii, True, H, W, True, cot)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        img2, g2 = grads("cpp", inputs, radii, True, H, W, True, cot)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(img1, img2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_empty_and_degenerate_inputs():
    settings = RasterSettings(9, 12, backend="cpp")
    empty = rasterize_sum(torch.zeros(2, 0, 2), torch.zeros(2, 0, 3), torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.long), None, settings)
    assert empty.shape == (2, 9, 12, 3) and not empty.any()
    # radius 0, a NaN position and a Gaussian far off-image contribute nothing
    means = torch.tensor([[[5.0, 5.0], [float("nan"), 3.0], [1e6, -1e6]]])
    conics = torch.tensor([[[1.0, 0.0, 1.0]] * 3])
    radii = torch.tensor([[0, 3, 3]])
    img = rasterize_sum(means, conics, torch.ones(1, 3, 3), radii, None, settings)
    assert not img.any()


def test_backend_selection(monkeypatch):
    x = torch.zeros(1, 1, 2)
    assert resolve_backend("auto", x) == "cpp"
    assert resolve_backend("torch", x) == "torch"
    assert resolve_backend("auto", x.half()) == "torch"
    with pytest.raises(InputError):
        resolve_backend("cpp", x.half())
    with pytest.raises(InputError):
        resolve_backend("gpu", x)
    monkeypatch.setenv("RECON_NO_CPP", "1")
    assert resolve_backend("auto", x) == "torch"
    with pytest.raises(InputError, match="unavailable"):
        resolve_backend("cpp", x)


def test_kernel_rejects_bad_shapes():
    means, conics = torch.zeros(1, 4, 2), torch.zeros(1, 4, 3)
    with pytest.raises(RuntimeError, match="conics"):
        _cpp.rasterize_sum_cpp(means, conics[:, :3], torch.zeros(1, 4, 3), torch.ones(1, 4, dtype=torch.long), None, 8, 8, 1 / 255)
    with pytest.raises(RuntimeError, match="weights"):
        _cpp.rasterize_sum_cpp(means, conics, torch.zeros(1, 4, 3), torch.ones(1, 4, dtype=torch.long), torch.ones(1, 5), 8, 8, 1 / 255)
