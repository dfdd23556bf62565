"""The compiled CPU photometric loss (recon_core/csrc/loss_cpu.cpp) against the PyTorch loss.

``photometric_loss(..., kernel="cpp")`` computes ``(1 - w) L1 + w (1 - SSIM)`` ('valid' SSIM,
11x11 Gaussian window, sigma 1.5) in one compiled pass with a hand-written backward; the PyTorch
ops (``kernel="torch"``) are the reference. Value and gradient wrt the prediction are compared
in float32 and float64, gradcheck'ed, checked for thread-count independence, and the trainer's
``3dgs-train.loss_kernel`` option is checked to select the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import look_at_torch

from recon_core import imageops
from recon_core.cameras import Cameras
from recon_core.components import RunContext
from recon_core.errors import InputError
from recon_core.imageops import loss_kernel, photometric_loss
from recon_core.scene import Bounds, Scene, View


def _kernel_or_skip():
    kernel = imageops._loss_extension()
    if kernel is None:
        pytest.skip("the C++ extension is unavailable (no compiler or RECON_NO_CPP=1)")
    return kernel


def _images(h: int, w: int, dtype: torch.dtype, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A target with structure (smooth ramps + noise) and a prediction near it, some pixels equal
    (L1's sign is 0 there), values in [0, 1]."""
    g = torch.Generator().manual_seed(seed + 7 * h + w)
    shape = (h, w, 3) if n is None else (n, h, w, 3)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h, dtype=dtype), torch.linspace(0, 1, w, dtype=dtype), indexing="ij")
    ramp = torch.stack([xx, yy, 0.5 * (xx + yy)], -1)
    target = (0.6 * ramp + 0.4 * torch.rand(shape, generator=g, dtype=dtype)).clamp(0, 1)
    pred = (target + 0.15 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    pred[..., :2, :3, :] = target[..., :2, :3, :]
    return pred, target


def _value_and_grad(pred: torch.Tensor, target: torch.Tensor, kernel: str, w: float = 0.2) -> tuple[float, torch.Tensor]:
    p = pred.clone().requires_grad_(True)
    loss = photometric_loss(p, target, w, kernel=kernel)
    (grad,) = torch.autograd.grad(loss, p)
    return float(loss.detach()), grad


SIZES = [(11, 11), (11, 19), (16, 16), (23, 17), (37, 64), (200, 200)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
@pytest.mark.parametrize("size", SIZES)
def test_compiled_loss_matches_the_pytorch_loss(dtype: torch.dtype, tol: float, size: tuple[int, int]) -> None:
    _kernel_or_skip()
    pred, target = _images(*size, dtype)
    ref_value, ref_grad = _value_and_grad(pred, target, "torch")
    value, grad = _value_and_grad(pred, target, "cpp")
    assert value == pytest.approx(ref_value, rel=tol, abs=0)
    # gradients relative to the largest (1/numel scale: an absolute tolerance would say nothing)
    scale = float(ref_grad.abs().max())
    assert float((grad - ref_grad).abs().max()) <= tol * scale
    assert grad.dtype == dtype and grad.shape == pred.shape


@pytest.mark.parametrize("w", [0.0, 0.2, 0.7, 1.0])
def test_compiled_loss_weights_and_batches(w: float) -> None:
    _kernel_or_skip()
    pred, target = _images(19, 26, torch.float64, n=3)
    ref_value, ref_grad = _value_and_grad(pred, target, "torch", w)
    value, grad = _value_and_grad(pred, target, "cpp", w)
    assert value == pytest.approx(ref_value, rel=1e-9)
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-9 * float(ref_grad.abs().max()))


def test_compiled_loss_of_equal_images_is_zero_and_known_for_constants() -> None:
    _kernel_or_skip()
    a = torch.full((20, 30, 3), 0.25, dtype=torch.float64)
    b = torch.full((20, 30, 3), 0.75, dtype=torch.float64)
    assert float(photometric_loss(a, a, 0.2, kernel="cpp")) == pytest.approx(0.0, abs=1e-12)
    # constant images: SSIM = (2 ab + C1) / (a^2 + b^2 + C1) (no variance), L1 = |a - b|
    c1 = 0.01**2
    expected = 0.8 * 0.5 + 0.2 * (1 - (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1))
    assert float(photometric_loss(a, b, 0.2, kernel="cpp")) == pytest.approx(expected, abs=1e-12)


def test_compiled_loss_passes_gradcheck() -> None:
    _kernel_or_skip()
    pred, target = _images(13, 15, torch.float64)
    # no pixel where pred == target: L1's kink is not differentiable there
    pred = torch.where((pred - target).abs() < 1e-3, (target + 0.05).clamp(0, 1) - 0.02, pred)
    p = pred.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: photometric_loss(x, target, 0.3, kernel="cpp"), (p,), eps=1e-6, atol=1e-8)


def test_compiled_loss_is_identical_for_any_thread_count() -> None:
    _kernel_or_skip()
    pred, target = _images(61, 83, torch.float32, n=2)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_value_and_grad(pred, target, "cpp"))
    finally:
        torch.set_num_threads(before)
    for value, grad in results[1:]:
        assert value == results[0][0] and torch.equal(grad, results[0][1])


def test_loss_kernel_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(16, 16, 3)
    assert loss_kernel("torch", x) == "torch"
    assert loss_kernel("auto", x.half()) == "torch"  # only float32 / float64
    with pytest.raises(InputError, match="float32/float64 CPU"):
        loss_kernel("cpp", x.half())
    with pytest.raises(InputError, match="unknown loss kernel"):
        loss_kernel("fast", x)
    if imageops._loss_extension() is not None:
        assert loss_kernel("auto", x) == "cpp" and loss_kernel("cpp", x) == "cpp"
        cpp = photometric_loss(x.clone().requires_grad_(True), x, kernel="cpp")
        torch_loss = photometric_loss(x.clone().requires_grad_(True), x, kernel="torch")
        assert "Compiled" in type(cpp.grad_fn).__name__ and "Compiled" not in type(torch_loss.grad_fn).__name__
        with pytest.raises(InputError, match="target requires grad"):
            photometric_loss(x, x.clone().requires_grad_(True), kernel="cpp")
        both = photometric_loss(x.clone().requires_grad_(True), x.clone().requires_grad_(True), kernel="auto")
        assert "Compiled" not in type(both.grad_fn).__name__  # auto: PyTorch differentiates the target too
    monkeypatch.setattr(imageops, "_loss_extension", lambda: None)  # as without a compiler / RECON_NO_CPP=1
    assert loss_kernel("auto", x) == "torch"
    with pytest.raises(InputError, match="'cpp' is unavailable"):
        loss_kernel("cpp", x)


def _scene(size: int = 16) -> Scene:
    from recon_plugins.gaussians.renderers import TorchGaussianRenderer
    from recon_plugins.gaussians.representation import GaussianSplat, GaussianSplatConfig

    g = torch.Generator().manual_seed(3)
    gt = GaussianSplat(GaussianSplatConfig(sh_degree=0))
    n = 40
    gt.set_splats({"means": torch.randn(n, 3, generator=g) * 0.3, "quats": torch.randn(n, 4, generator=g),
                   "scales": torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.04), "opacities": torch.full((n,), 2.0),
                   "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.zeros(n, 0, 3)})
    K = torch.tensor([[1.2 * size, 0, size / 2], [0, 1.2 * size, size / 2], [0, 0, 1]])
    views = []
    for i, deg in enumerate([0, 60, 120]):
        a = math.radians(deg)
        cam = Cameras.create(K, look_at_torch(torch.tensor([2.5 * math.cos(a), 2.5 * math.sin(a), 0.6])), size, size)
        with torch.no_grad():
            image = TorchGaussianRenderer().render(gt, cam, background=torch.zeros(3)).rgb[0].clamp(0, 1)
        views.append(View(f"v{i}", cam, image, "train"))
    return Scene("loss-kernel", views, Bounds.from_cameras(Cameras.cat([v.camera for v in views])))


def _train(kernel: str, scene: Scene, steps: int = 6) -> tuple[list[float], dict[str, torch.Tensor], int]:
    """Train a fresh splat for ``steps`` with ``3dgs-train.loss_kernel=kernel``: the step losses,
    the splat's values and how many times the compiled loss ran."""
    from recon_plugins.gaussians.renderers import TorchGaussianRenderer
    from recon_plugins.gaussians.representation import GaussianSplat, GaussianSplatConfig
    from recon_plugins.gaussians.trainer import GaussianTrainConfig, GaussianTrainer

    g = torch.Generator().manual_seed(5)
    rep = GaussianSplat(GaussianSplatConfig(sh_degree=0))
    n = 30
    rep.set_splats({"means": torch.randn(n, 3, generator=g) * 0.3, "quats": torch.randn(n, 4, generator=g),
                    "scales": torch.log(torch.full((n, 3), 0.08)), "opacities": torch.zeros(n),
                    "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)})
    calls = [0]
    real = imageops._loss_extension

    class _Counting:
        def __getattr__(self, name: str):
            ext = real()
            if name == "l1_dssim_forward":
                calls[0] += 1
            return getattr(ext, name)

    trainer = GaussianTrainer(GaussianTrainConfig(steps=steps, densify=False, loss_kernel=kernel))
    imageops._loss_extension = (lambda: _Counting()) if real() is not None else real
    try:
        trainer.setup(rep, scene, RunContext(device=torch.device("cpu"), seed=0, renderer=TorchGaussianRenderer(),
                                             background=torch.zeros(3), log=lambda m: None))
        losses = [trainer.step(s)["loss"] for s in range(steps)]
    finally:
        imageops._loss_extension = real
    return losses, {k: v.detach().clone() for k, v in rep.splat_values().items()}, calls[0]


def test_trainer_loss_kernel_option_selects_the_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_or_skip()
    scene = _scene()
    ref_losses, ref, ref_calls = _train("torch", scene)
    losses, compiled, compiled_calls = _train("cpp", scene)
    auto_losses, auto, auto_calls = _train("auto", scene)
    assert ref_calls == 0 and compiled_calls == 6 and auto_calls == 6
    # the same loss from the same start; later steps within float32 rounding (Adam's first steps
    # move by +-lr whatever the gradient's size, so rounding-level differences show up at 1e-3)
    assert losses[0] == pytest.approx(ref_losses[0], rel=1e-6)
    assert losses == pytest.approx(ref_losses, rel=1e-2)
    for k in ref:
        assert torch.allclose(compiled[k], ref[k], rtol=0, atol=2e-2), k
        assert torch.equal(auto[k], compiled[k]), k
    assert auto_losses == losses
    monkeypatch.setattr(imageops, "_loss_extension", lambda: None)
    from recon_plugins.gaussians.trainer import GaussianTrainConfig, GaussianTrainer

    with pytest.raises(InputError, match="'cpp' is unavailable"):
        GaussianTrainer(GaussianTrainConfig(steps=1, loss_kernel="cpp")).setup(
            _dummy_rep(), scene,
            RunContext(device=torch.device("cpu"), seed=0, renderer=None, background=torch.zeros(3), log=lambda m: None))


def _dummy_rep():
    from recon_plugins.gaussians.representation import GaussianSplat, GaussianSplatConfig

    rep = GaussianSplat(GaussianSplatConfig(sh_degree=0))
    rep.set_splats({"means": torch.zeros(1, 3), "quats": torch.tensor([[1.0, 0, 0, 0]]), "scales": torch.zeros(1, 3),
                    "opacities": torch.zeros(1), "sh0": torch.zeros(1, 1, 3), "shN": torch.zeros(1, 0, 3)})
    return rep
