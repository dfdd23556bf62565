"""The fused C++ projection + SH + packing (``pack_gaussians``, issue 24) against its PyTorch twin.

``pack_gaussians`` (``project_forward`` / ``project_backward`` in rasterize_cpu.cpp, with a
hand-written backward) must give the same packed pairs, values and gradients as
``_pack_gaussians`` (PyTorch ops differentiated by autograd): means, quats, scales, opacities,
colours / SH and the world-to-camera matrices, hence camera poses (``c2w`` through
``inverse``), which test-time refinement and pose refinement rely on. float32 is compared at
1e-4 (relative to each tensor's scale for gradients), float64 at 1e-9; the backward is also
checked by finite differences (``gradcheck``) on its own, and whole renders of the default
compiled path (fused projection + compiled compositing) against the all-PyTorch path.

Skipped when no C++ compiler is present or ``RECON_NO_CPP=1``; where a compiler exists, a
failed build fails the tests (as in tests/test_gaussians_cpu_kernel.py).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from test_gaussians_cpu_kernel import SCENES, _assert_parity, _cameras, _render, _scene

from recon_core.cpp_extension import cpp_disabled
from recon_core.errors import InputError
from recon_plugins.gaussians import _cpp
from recon_plugins.gaussians.rasterize import RasterizeSettings, _pack_gaussians, pack_gaussians, rasterize_gaussians, select_projection

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ext():
    if cpp_disabled():
        pytest.skip("RECON_NO_CPP=1: compiled path disabled")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler (CXX or c++) on PATH: the compiled path cannot be built")
    module = _cpp.extension()
    assert module is not None, "the C++ rasteriser failed to build (see the RuntimeWarning above)"
    return module


PACK_KEYS = ("means2d", "conics", "opacities", "features")
LEAVES = ("means", "quats", "scales", "opacities", "colors", "sh", "viewmats")


def _packed_outputs(fn, scene: dict, weights_seed: int = 3, **settings) -> dict[str, torch.Tensor]:
    """Packed outputs of ``fn`` (one of the twins) and the gradients of a random weighted sum of
    them with respect to every input, ``viewmats`` included (given directly, not through c2w)."""
    leaves = {k: scene[k].clone().requires_grad_() for k in LEAVES if k in scene}
    if "viewmats" not in leaves:
        leaves["viewmats"] = torch.linalg.inv(scene["c2w"]).detach().requires_grad_()
    info: dict = {}
    p = fn(
        leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["viewmats"], scene["Ks"],
        scene["width"], scene["height"], leaves.get("colors"), leaves.get("sh"), scene.get("sh_degree", 0),
        RasterizeSettings(**settings), info,
    )
    g = torch.Generator().manual_seed(weights_seed)
    loss = sum((getattr(p, k) * torch.randn(getattr(p, k).shape, generator=g, dtype=torch.float64).to(p.means2d)).sum() for k in PACK_KEYS)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    out = {k: getattr(p, k).detach() for k in PACK_KEYS + ("cov2d",)}
    out.update({k: getattr(p, k) for k in ("camera_ids", "gaussian_ids", "radii")})
    out.update({f"grad {k}": gr for k, gr in zip(leaves, grads)})
    return out


def _assert_packed_parity(ours: dict, ref: dict, tol: float) -> None:
    for key in ("camera_ids", "gaussian_ids", "radii"):
        assert torch.equal(ours.pop(key), ref.pop(key)), f"{key}: not the same pairs"
    _assert_parity(ours, ref, tol)


@pytest.mark.parametrize("name", list(SCENES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_outputs_and_gradients_match_torch_twin(ext, name, dtype):
    scene = _scene(name, dtype, seed=4)
    ours, ref = _packed_outputs(pack_gaussians, scene), _packed_outputs(_pack_gaussians, scene)
    assert ref["means2d"].shape[0] > 50, "scene should keep many pairs"
    _assert_packed_parity(ours, ref, tol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("name", list(SCENES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_whole_render_matches_all_torch_path(ext, name, dtype):
    """The default compiled path (fused projection + compiled compositing) against PyTorch
    projection + PyTorch compositing: images, depth, alpha and the gradients of every input,
    the camera pose (c2w) and background included."""
    scene = _scene(name, dtype, seed=5)
    ours = _render(scene, "cpp", projection="cpp")
    ref = _render(scene, "torch", projection="torch")
    _assert_parity(ours, ref, tol=1e-4 if dtype == torch.float32 else 1e-9)
    # and the compiled compositing on the PyTorch projection (the previous compiled path)
    _assert_parity(_render(scene, "cpp", projection="torch"), ref, tol=1e-4 if dtype == torch.float32 else 1e-9)


def _tiny_scene(degree: int | None) -> dict:
    """Six Gaussians well inside two 20x16 images (no pair changes visibility under eps)."""
    g = torch.Generator().manual_seed(11)
    n = 6
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 0.6
    means[:, 2] += 3.0
    scene = dict(
        means=means,
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
        scales=0.05 + 0.1 * torch.rand(n, 3, generator=g, dtype=torch.float64),
        opacities=0.2 + 0.7 * torch.rand(n, generator=g, dtype=torch.float64),
        width=20,
        height=16,
    )
    if degree is None:
        scene["colors"] = torch.rand(n, 3, generator=g, dtype=torch.float64)
    else:
        scene["sh"] = 0.5 * torch.randn(n, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
        scene["sh_degree"] = degree
    scene["c2w"], scene["Ks"] = _cameras(2, 20, 16)
    return scene


@pytest.mark.parametrize("degree", [None, 0, 1, 3])
def test_gradcheck_of_the_fused_backward(ext, degree):
    """The C++ backward against finite differences (float64), pose (viewmats) included."""
    scene = _tiny_scene(degree)
    colour_key = "colors" if degree is None else "sh"
    inputs = tuple(
        t.clone().requires_grad_()
        for t in (scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene[colour_key],
                  torch.linalg.inv(scene["c2w"]))
    )
    settings = RasterizeSettings()

    def fn(means, quats, scales, opac, colours, viewmats):
        p = pack_gaussians(
            means, quats, scales, opac, viewmats, scene["Ks"], scene["width"], scene["height"],
            colours if degree is None else None, None if degree is None else colours, degree or 0, settings, None,
        )
        assert p.means2d.shape[0] == 12, "every pair should stay visible"
        return p.means2d, p.conics, p.opacities, p.features

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_results_do_not_depend_on_the_thread_count(ext):
    scene = _scene("many small Gaussians", torch.float32, seed=6)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(_packed_outputs(pack_gaussians, scene))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        for key, value in outs[0].items():
            assert torch.equal(value, other[key]), key


def test_info_is_gsplat_packed_layout_with_the_twins_gradients(ext):
    """``info`` of the fused path is gsplat's packed layout; scattered back to [C, N, 2], its
    retained means2d gradient equals the PyTorch projection's unpacked one."""
    scene = _scene("odd sizes, 3 cameras, colours, background", torch.float64, seed=7)
    infos = {}
    for projection in ("cpp", "torch"):
        info: dict = {}
        means = scene["means"].clone().requires_grad_()
        rgb, alpha, _ = rasterize_gaussians(
            means, scene["quats"], scene["scales"], scene["opacities"], torch.linalg.inv(scene["c2w"]), scene["Ks"],
            scene["width"], scene["height"], colors=scene["colors"], info=info,
            settings=RasterizeSettings(backend="cpp", projection=projection),
        )
        (rgb * scene["weights"][0]).sum().backward()
        infos[projection] = info
    packed, full = infos["cpp"], infos["torch"]
    assert packed["packed"] is True and full.get("packed") is None
    n_cams, n = full["means2d"].shape[:2]
    assert (packed["width"], packed["height"], packed["n_cameras"]) == (full["width"], full["height"], full["n_cameras"])
    scattered = torch.zeros(n_cams, n, 2, dtype=torch.float64)
    scattered[packed["camera_ids"], packed["gaussian_ids"]] = packed["means2d"].grad
    assert packed["means2d"].grad.abs().sum() > 0
    torch.testing.assert_close(scattered, full["means2d"].grad, rtol=1e-9, atol=1e-12)
    assert torch.equal(packed["radii"], full["radii"][packed["camera_ids"], packed["gaussian_ids"]])
    torch.testing.assert_close(packed["means2d"].detach(), full["means2d"].detach()[packed["camera_ids"], packed["gaussian_ids"]])


def test_projection_selection(ext):
    x32 = torch.zeros(2)
    meta = torch.zeros(2, device="meta")
    assert select_projection(RasterizeSettings(), x32) == "cpp"
    assert select_projection(RasterizeSettings(backend="torch"), x32) == "torch"  # auto follows the backend
    assert select_projection(RasterizeSettings(backend="torch", projection="cpp"), x32) == "cpp"
    assert select_projection(RasterizeSettings(projection="torch"), x32) == "torch"
    assert select_projection(RasterizeSettings(), meta) == "torch"
    with pytest.raises(InputError, match="projection 'cpp' needs"):
        select_projection(RasterizeSettings(projection="cpp"), meta)
    with pytest.raises(ValueError, match="projection"):
        RasterizeSettings(projection="gpu")


def test_fused_projection_under_torch_compositing_matches(ext):
    """projection=cpp with backend=torch (the fused kernel feeding the PyTorch compositor)."""
    scene = _scene("SH 3, near plane and behind", torch.float64, seed=8)
    _assert_parity(_render(scene, "torch", projection="cpp"), _render(scene, "torch"), tol=1e-9)


def test_kernel_input_errors(ext):
    scene = _tiny_scene(1)
    args = [scene[k].float().contiguous() for k in ("means", "quats", "scales", "opacities", "sh")]
    view = torch.linalg.inv(scene["c2w"]).float().contiguous()
    centres = scene["c2w"][:, :3, 3].float().contiguous()
    ks = scene["Ks"].float()
    ext.project_forward(*args, 1, view, centres, ks, 20, 16, 0.3, 0.01, 1e10)  # valid
    with pytest.raises(RuntimeError, match="dtype"):
        ext.project_forward(args[0].double(), *args[1:], 1, view, centres, ks, 20, 16, 0.3, 0.01, 1e10)
    with pytest.raises(RuntimeError, match="sh must be"):
        ext.project_forward(*args, 2, view, centres, ks, 20, 16, 0.3, 0.01, 1e10)  # 4 coefficients < 9
    with pytest.raises(RuntimeError, match=r"viewmats must be \[C, 4, 4\]"):
        ext.project_forward(*args, 1, view[:, :3].contiguous(), centres, ks, 20, 16, 0.3, 0.01, 1e10)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.project_forward(args[0].t().contiguous().t(), *args[1:], 1, view, centres, ks, 20, 16, 0.3, 0.01, 1e10)
    with pytest.raises(ValueError, match="SH degree"):
        pack_gaussians(*(scene[k] for k in ("means", "quats", "scales", "opacities")), torch.linalg.inv(scene["c2w"]),
                       scene["Ks"], 20, 16, None, scene["sh"], 4, RasterizeSettings(), None)
