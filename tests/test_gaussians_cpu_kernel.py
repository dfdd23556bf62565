"""The compiled CPU rasteriser (plugins/gaussians/rasterize_cpu.cpp) against its pure-PyTorch twin.

``composite_gaussians`` (C++, OpenMP) and ``_composite_gaussians`` (PyTorch) must give the same
images and the same gradients, through whole renders (``rasterize_gaussians`` with
``backend="cpp"`` vs ``"torch"``), so the gradients reach means, quats, scales, opacities,
colours / SH, the background and the camera pose exactly as in the torch path. float32 is
compared at 1e-4 (relative to each tensor's scale for gradients), float64 at 1e-9 (the same
math, not merely close). The C++ backward is also checked by finite differences on its own.

The extension is built on first use. These tests are skipped only when ``RECON_NO_CPP=1``
asks for no compiled code; if the build fails they fail.
"""

from __future__ import annotations

import math
import uuid
import warnings

import pytest
import torch
from conftest import look_at_torch

from recon_core.cpp_extension import Extension, cpp_disabled
from recon_core.errors import InputError
from recon_plugins.gaussians import _cpp
from recon_plugins.gaussians.rasterize import (
    RasterizeSettings,
    _composite_gaussians,
    bin_gaussians,
    composite_gaussians,
    rasterize_gaussians,
    select_backend,
)

pytestmark = pytest.mark.usefixtures("one_thread")

needs_cpp = pytest.mark.skipif(cpp_disabled(), reason="RECON_NO_CPP=1: compiled path disabled")


@pytest.fixture(scope="module")
def ext():
    if cpp_disabled():
        pytest.skip("RECON_NO_CPP=1: compiled path disabled")
    module = _cpp.extension()
    assert module is not None, "the C++ rasteriser failed to build (see the RuntimeWarning above)"
    return module


# ------------------------------------------------------------------------------- scenes


def _cameras(n_cams: int, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c2w [C, 4, 4] around the cube at z = 3, and intrinsics [C, 3, 3] (float64)."""
    c2ws, ks = [], []
    for i in range(n_cams):
        angle = 0.3 * i
        eye = torch.tensor([math.sin(angle) * 3.0, 0.15 * i, 3.0 - math.cos(angle) * 3.0], dtype=torch.float64)
        c2ws.append(look_at_torch(eye, torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), up=(0.0, 1.0, 0.0)))
        f = 1.4 * height * (1.0 + 0.1 * i)
        ks.append(torch.tensor([[f, 0.0, width / 2 + i], [0.0, f * 1.05, height / 2 - i], [0.0, 0.0, 1.0]], dtype=torch.float64))
    return torch.stack(c2ws), torch.stack(ks)


SCENES = {
    # name: (N, width, height, cameras, SH degree (None: colours), opacity range, scale range, background)
    "one camera, SH 0": (300, 64, 48, 1, 0, (0.1, 0.9), (0.02, 0.08), None),
    "odd sizes, 3 cameras, colours, background": (400, 37, 29, 3, None, (0.1, 0.9), (0.02, 0.1), "per-camera"),
    "SH 3, near plane and behind": (300, 50, 40, 2, 3, (0.1, 0.9), (0.02, 0.08), "shared"),
    "dense opaque (transmittance stop)": (1500, 45, 35, 1, 1, (0.6, 0.99), (0.04, 0.12), None),
    "clamped alpha (opacity ~ 1)": (200, 40, 30, 2, 0, (0.995, 1.0), (0.05, 0.15), "shared"),
    "many small Gaussians": (3000, 120, 90, 1, 2, (0.05, 0.9), (0.004, 0.02), None),
}


def _scene(name: str, dtype: torch.dtype, seed: int = 0) -> dict:
    n, width, height, n_cams, degree, opacity, scale, bg = SCENES[name]
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    means = u(n, 3) - 0.5
    means[:, 2] += 3.0
    if name.startswith("SH 3"):
        means[:15, 2] = -1.0  # behind the first camera
        means[15:30] = torch.tensor([0.0, 0.0, 0.005], dtype=torch.float64)  # inside its near plane
    scene = dict(
        means=means,
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
        scales=scale[0] + (scale[1] - scale[0]) * u(n, 3),
        opacities=opacity[0] + (opacity[1] - opacity[0]) * u(n),
        width=width,
        height=height,
    )
    if degree is None:
        scene["colors"] = u(n, 3)
    else:
        scene["sh"] = 0.5 * torch.randn(n, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
        scene["sh_degree"] = degree
    c2w, ks = _cameras(n_cams, width, height)
    scene["c2w"], scene["Ks"] = c2w, ks
    if bg == "per-camera":
        scene["background"] = u(n_cams, 3)
    elif bg == "shared":
        scene["background"] = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    weights = [torch.randn(n_cams, height, width, d, generator=g, dtype=torch.float64) for d in (3, 1, 1)]
    scene["weights"] = weights
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) else [w.to(dtype) for w in v] if k == "weights" else v) for k, v in scene.items()}


GRAD_KEYS = ("means", "quats", "scales", "opacities", "colors", "sh", "c2w", "background")


def _render(scene: dict, backend: str, **settings) -> dict[str, torch.Tensor]:
    """Outputs and gradients of a weighted sum of rgb, alpha and depth (the c2w pose included)."""
    leaves = {k: scene[k].clone().requires_grad_() for k in GRAD_KEYS if k in scene}
    rgb, alpha, depth = rasterize_gaussians(
        leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], torch.linalg.inv(leaves["c2w"]),
        scene["Ks"], scene["width"], scene["height"], colors=leaves.get("colors"), sh=leaves.get("sh"),
        sh_degree=scene.get("sh_degree", 0), background=leaves.get("background"),
        settings=RasterizeSettings(backend=backend, **settings),
    )
    w_rgb, w_alpha, w_depth = scene["weights"]
    loss = (rgb * w_rgb).sum() + (alpha * w_alpha).sum() + (depth * w_depth).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    out = {"rgb": rgb.detach(), "alpha": alpha.detach(), "depth": depth.detach()}
    out.update({f"grad {k}": g for k, g in zip(leaves, grads)})
    return out


def _assert_parity(ours: dict, ref: dict, tol: float) -> None:
    assert ours.keys() == ref.keys()
    for key, r in ref.items():
        o = ours[key]
        if key.startswith("grad"):
            scale = float(r.abs().max())
            assert scale > 0, f"{key}: no gradient reached it"
            torch.testing.assert_close(o, r, rtol=tol, atol=tol * scale, msg=lambda m: f"{key}: {m}")
        else:
            torch.testing.assert_close(o, r, rtol=tol, atol=tol, msg=lambda m: f"{key}: {m}")


# --------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(SCENES))
def test_float32_images_and_gradients_match_torch_path(ext, name):
    scene = _scene(name, torch.float32)
    ours, ref = _render(scene, "cpp"), _render(scene, "torch")
    _assert_parity(ours, ref, tol=1e-4)
    alpha = ref["alpha"]
    assert (alpha == 0).any() or name.startswith("dense"), "scene should have empty pixels"
    if name.startswith("dense"):
        # stopped pixels end with 1e-4 < T (alpha < 0.9999); T < 5e-4 means few Gaussians from stopping
        assert (alpha > 0.9995).float().mean() > 0.2, "scene should stop many pixels on transmittance"


@pytest.mark.parametrize("name", list(SCENES))
def test_float64_matches_torch_path_to_rounding(ext, name):
    scene = _scene(name, torch.float64, seed=1)
    _assert_parity(_render(scene, "cpp"), _render(scene, "torch"), tol=1e-9)


@pytest.mark.parametrize("cpp_tile_size", [3, 8, 32])
def test_tile_size_does_not_change_the_result(ext, cpp_tile_size):
    scene = _scene("odd sizes, 3 cameras, colours, background", torch.float64, seed=2)
    _assert_parity(_render(scene, "cpp", cpp_tile_size=cpp_tile_size), _render(scene, "torch"), tol=1e-9)


def test_single_gaussian_known_answers_and_clamp_rule(ext):
    """One Gaussian centred on pixel (2, 3): alpha there is o clamped to 0.999 and, clamped, passes
    no gradient to the mean or opacity (gsplat's rule); one pixel to the right alpha is
    o exp(-a / 2) with d alpha / d o = exp(-a / 2)."""
    a, opacity = 0.8, 1.0
    means2d = torch.tensor([[3.5, 2.5]], dtype=torch.float64, requires_grad=True)
    conics = torch.tensor([[a, 0.0, a]], dtype=torch.float64, requires_grad=True)
    opac = torch.tensor([opacity], dtype=torch.float64, requires_grad=True)
    feats = torch.tensor([[0.25, 0.5, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    cov2d = torch.tensor([[1 / a, 0.0, 1 / a]], dtype=torch.float64)
    args = (cov2d, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.long), 1, 8, 6, RasterizeSettings())
    image, alpha = composite_gaussians(means2d, conics, opac, feats, *args)
    assert float(alpha[0, 2, 3, 0].detach()) == pytest.approx(0.999, abs=1e-15)
    torch.testing.assert_close(image[0, 2, 3], 0.999 * feats[0].detach())
    g = torch.autograd.grad(alpha[0, 2, 3, 0], (means2d, conics, opac), allow_unused=True, retain_graph=True)
    assert all(t is None or torch.all(t == 0) for t in g)
    side = math.exp(-0.5 * a)
    assert float(alpha[0, 2, 4, 0].detach()) == pytest.approx(opacity * side, rel=1e-12)
    g_m, g_o = torch.autograd.grad(alpha[0, 2, 4, 0], (means2d, opac))
    assert float(g_o[0]) == pytest.approx(side, rel=1e-12)
    # d alpha / d mean_x = o exp(-sigma) * (-a dx) with dx = mean_x - pixel_x = -1
    torch.testing.assert_close(g_m[0], torch.tensor([opacity * side * a, 0.0], dtype=torch.float64))


# ------------------------------------------------------------------- the kernels on their own


def _packed(n: int, seed: int, dtype=torch.float64, width: int = 23, height: int = 17, n_cams: int = 2):
    """Random screen-space Gaussians of ``n_cams`` images (as rasterize_gaussians packs them):
    half of them wide and crowded into the left third (pixels stop on transmittance there),
    half small and anywhere (some pixels stay empty), some overhanging the borders."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    means2d = u(n, 2) * torch.tensor([width + 8.0, height + 8.0], dtype=torch.float64) - 4.0
    wide = torch.arange(n) < n // 2
    means2d[wide, 0] = u(int(wide.sum())) * width / 3
    sharp = torch.where(wide, 0.05 + 0.5 * u(n), 1.0 + 3.0 * u(n))
    a, c = sharp * (0.5 + u(n)), sharp * (0.5 + u(n))
    b = (u(n) - 0.5) * 1.2 * torch.sqrt(a * c)
    conics = torch.stack([a, b, c], -1)
    cov2d = torch.stack([c, -b, a], -1) / (a * c - b * b)[:, None]
    opac = 0.2 + 0.75 * u(n)
    feats = u(n, 4)
    depths = torch.round(u(n) * 20) / 4  # many exact ties: the order must fall back to the index
    cams = torch.randint(0, n_cams, (n,), generator=g)
    return [t.to(dtype) for t in (means2d, conics, opac, feats, cov2d, depths)] + [cams, n_cams, width, height]


def test_binning_matches_torch_binning(ext):
    """Same tile lists, same order (depth, ties by index), cameras and image borders included."""
    means2d, conics, opac, feats, cov2d, depths, cams, n_cams, width, height = _packed(300, seed=3)
    for tile in (4, 8, 16):
        offsets, ids = ext.bin_gaussians(means2d, cov2d, opac, depths, cams, n_cams, width, height, tile)
        ref = bin_gaussians(means2d, cov2d, opac, depths, cams, n_cams, width, height, tile)
        count = offsets[1:] - offsets[:-1]
        assert torch.equal(count, ref.count)
        assert torch.equal(offsets[:-1], ref.start)
        assert torch.equal(ids.long(), ref.ids)
        assert ids.numel() > 300


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_composite_matches_torch_twin(ext, dtype):
    means2d, conics, opac, feats, cov2d, depths, cams, n_cams, width, height = _packed(400, seed=4, dtype=dtype)
    settings = RasterizeSettings()
    inputs = [t.clone().requires_grad_() for t in (means2d, conics, opac, feats)]
    g = torch.Generator().manual_seed(5)
    w_img = torch.randn(n_cams, height, width, 4, generator=g, dtype=dtype)
    w_alpha = torch.randn(n_cams, height, width, 1, generator=g, dtype=dtype)
    results = []
    for fn in (composite_gaussians, _composite_gaussians):
        image, alpha = fn(*inputs, cov2d, depths, cams, n_cams, width, height, settings)
        grads = torch.autograd.grad((image * w_img).sum() + (alpha * w_alpha).sum(), inputs)
        results.append({"image": image.detach(), "alpha": alpha.detach(), **{f"grad {i}": gr for i, gr in enumerate(grads)}})
    assert (results[1]["alpha"] > 0.9995).any() and (results[1]["alpha"] == 0).any()
    _assert_parity(results[0], results[1], tol=1e-4 if dtype == torch.float32 else 1e-10)


def test_composite_gradcheck(ext):
    """The C++ backward against finite differences (float64), without the torch path."""
    means2d, conics, opac, feats, cov2d, depths, cams, n_cams, width, height = _packed(14, seed=6, width=13, height=9)
    settings = RasterizeSettings(cpp_tile_size=4)
    inputs = tuple(t.clone().requires_grad_() for t in (means2d, conics, opac, feats))

    def fn(m2, co, op, fe):
        return composite_gaussians(m2, co, op, fe, cov2d, depths, cams, n_cams, width, height, settings)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_results_do_not_depend_on_the_thread_count(ext):
    means2d, conics, opac, feats, cov2d, depths, cams, n_cams, width, height = _packed(2000, seed=7, dtype=torch.float32, width=70, height=50)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            inputs = [t.clone().requires_grad_() for t in (means2d, conics, opac, feats)]
            image, alpha = composite_gaussians(*inputs, cov2d, depths, cams, n_cams, width, height, RasterizeSettings())
            grads = torch.autograd.grad(image.sum() + (alpha * alpha).sum(), inputs)
            outs.append((image.detach(), alpha.detach(), *grads))
    finally:
        torch.set_num_threads(before)  # one_thread is module-scoped: later tests keep one thread
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


def test_kernel_input_errors(ext):
    means2d, conics, opac, feats, cov2d, depths, cams, n_cams, width, height = _packed(20, seed=8, dtype=torch.float32)
    offsets, ids = ext.bin_gaussians(means2d, cov2d, opac, depths, cams, n_cams, width, height, 8)
    with pytest.raises(RuntimeError, match="dtype"):
        ext.composite_forward(means2d.double(), conics, opac, cov2d, feats, offsets, ids, n_cams, width, height, 8)
    with pytest.raises(RuntimeError, match="offsets"):  # binned with another tile size
        ext.composite_forward(means2d, conics, opac, cov2d, feats, offsets, ids, n_cams, width, height, 4)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.composite_forward(
            means2d.t().contiguous().t(), conics, opac, cov2d, feats, offsets, ids, n_cams, width, height, 8
        )
    with pytest.raises(RuntimeError, match="conics"):
        ext.composite_forward(means2d, conics[:-1], opac, cov2d, feats, offsets, ids, n_cams, width, height, 8)


# ------------------------------------------------------------------- selection and fallback


def test_auto_selects_cpp_for_cpu_tensors(ext):
    x32, x64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    assert select_backend(RasterizeSettings(), x32) == "cpp"
    assert select_backend(RasterizeSettings(), x64) == "cpp"
    assert select_backend(RasterizeSettings(backend="torch"), x32) == "torch"
    meta = torch.zeros(2, device="meta")  # stands in for any non-CPU device
    assert select_backend(RasterizeSettings(), meta) == "torch"
    assert select_backend(RasterizeSettings(), x32.half()) == "torch"
    with pytest.raises(InputError, match="CPU"):
        select_backend(RasterizeSettings(backend="cpp"), meta)
    with pytest.raises(ValueError, match="backend"):
        RasterizeSettings(backend="gpu")


def test_failed_build_warns_once_and_falls_back_to_torch(tmp_path, monkeypatch):
    """A build that cannot succeed: one RuntimeWarning naming the reason, then the torch path."""
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")  # no torch headers: the compiler fails at once
    monkeypatch.delenv("RECON_NO_CPP", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))  # not the user's cache
    monkeypatch.setattr(_cpp, "EXTENSION", Extension(f"recon_test_broken_{uuid.uuid4().hex[:8]}", (broken,)))
    scene = _scene("one camera, SH 0", torch.float32)
    with pytest.warns(RuntimeWarning, match=r"could not build the C\+\+ extension .*broken.cpp.*error"):
        fallback = _render(scene, "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second render must not warn again
        again = _render(scene, "auto")
    ref = _render(scene, "torch")
    for key in ref:
        assert torch.equal(fallback[key], ref[key]) and torch.equal(again[key], ref[key]), key
    with pytest.raises(InputError, match="unavailable"):
        _render(scene, "cpp")


def test_recon_no_cpp_selects_torch_silently(monkeypatch):
    monkeypatch.setenv("RECON_NO_CPP", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_backend(RasterizeSettings(), torch.zeros(1)) == "torch"
    with pytest.raises(InputError, match="RECON_NO_CPP"):
        select_backend(RasterizeSettings(backend="cpp"), torch.zeros(1))
