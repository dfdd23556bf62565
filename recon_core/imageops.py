"""Differentiable image comparisons shared by refiners (losses) and evaluators (metrics).

Images are float tensors in [0, 1] shaped (H, W, 3) or (N, H, W, 3); masks are bool (H, W) or
(N, H, W). SSIM follows Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5),
C1 = (0.01)^2, C2 = (0.03)^2 and 'valid' filtering (no padding), as skimage does with
``gaussian_weights=True, use_sample_covariance=False, data_range=1``.

MS-SSIM (Wang, Simoncelli & Bovik 2003) multiplies the contrast-structure term of SSIM at
successively 2x2-average-pooled scales with the full SSIM at the coarsest scale, using the
standard five weights :data:`MS_SSIM_WEIGHTS`. Our benchmark images are small (200x200,
320x180), so :func:`ms_ssim_plan` fits the pyramid to the image: it keeps as many scales as
leave at least one full window at the coarsest scale (renormalising the first weights to sum to
one), and when even one 11x11 window does not fit, it shrinks the window to the largest odd size
that does (sigma scaled with it). 200x200 and 320x180 keep all five scales.

:func:`photometric_loss` is the one training loss ``(1 - w) L1 + w (1 - SSIM)`` (3DGS, w = 0.2);
:func:`psnr` the one PSNR (losses' logs and the ``psnr`` metric alike). The loss has two
implementations of its unmasked L1 + SSIM case: the PyTorch ops below (``kernel="torch"``, the
reference) and a compiled CPU kernel with a hand-written backward (``kernel="cpp"``,
``csrc/loss_cpu.cpp``, built on first use like the plugins' extensions); ``kernel="auto"`` takes
the compiled one for CPU float32/float64 images when it builds (:func:`loss_kernel`).

Masked comparisons for metrics whose value depends on a neighbourhood (MS-SSIM, LPIPS) use
:func:`masked_crop`: both images are composited onto the same background outside the mask and
cropped to the mask's bounding box, so pixels outside the mask have no effect on the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cpp_extension import cpp_disabled, declare_extension
from .errors import InputError

__all__ = [
    "psnr",
    "ssim_map",
    "ssim",
    "photometric_loss",
    "LOSS_KERNELS",
    "LOSS_EXTENSION",
    "loss_kernel",
    "gaussian_window",
    "MS_SSIM_WEIGHTS",
    "MsSsimPlan",
    "ms_ssim_plan",
    "ms_ssim",
    "mask_bbox",
    "masked_crop",
]


def _batched(x: Tensor) -> Tensor:
    """(H, W, C) or (N, H, W, C) → (N, C, H, W)."""
    if x.ndim == 3:
        x = x[None]
    return x.permute(0, 3, 1, 2)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all (or only masked) pixels and channels."""
    err = (pred - target) ** 2
    if mask is not None:
        m = mask.to(err.dtype)[..., None].expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1)
    else:
        mse = err.mean()
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def ssim_map(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5, padding: str = "valid") -> Tensor:
    """Per-pixel SSIM, differentiable: (N, H - ws + 1, W - ws + 1, C) for ``padding="valid"``;
    (N, H, W, C) for ``"same"``, the images reflect-padded by ws // 2 first (kornia's
    ``metrics.ssim``, which the DGGT-TTR fork's loss uses)."""
    s, _ = _ssim_cs_maps(_batched(pred), _batched(target), window_size, sigma, padding)
    return s.permute(0, 2, 3, 1)


def _ssim_cs_maps(x: Tensor, y: Tensor, window_size: int, sigma: float, padding: str = "valid") -> tuple[Tensor, Tensor]:
    """SSIM and contrast-structure maps of (N, C, H, W) images, data range 1 ('valid' region,
    or 'same' with reflect padding)."""
    c = x.shape[1]
    g = gaussian_window(window_size, sigma, x.dtype, x.device)
    wx = g.view(1, 1, 1, -1).expand(c, 1, 1, window_size)
    wy = g.view(1, 1, -1, 1).expand(c, 1, window_size, 1)
    r = window_size // 2

    def blur(t: Tensor) -> Tensor:  # separable Gaussian filter
        if padding == "same":
            t = F.pad(t, (r, r, r, r), mode="reflect")
        return F.conv2d(F.conv2d(t, wx, groups=c), wy, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    s = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return s, cs


def ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None, window_size: int = 11) -> Tensor:
    """Mean SSIM; with a mask, averaged over window centres whose pixel is inside the mask."""
    s = ssim_map(pred, target, window_size)
    if mask is None:
        return s.mean()
    m = mask if mask.ndim == 3 else mask[None]
    r = window_size // 2
    m = m[:, r : m.shape[1] - r, r : m.shape[2] - r].to(s.dtype)[..., None].expand_as(s)
    return (s * m).sum() / m.sum().clamp_min(1)


LOSS_KERNELS: tuple[str, ...] = ("auto", "cpp", "torch")
"""Implementations of :func:`photometric_loss`'s L1 + SSIM: ``auto`` (compiled where it runs), ``cpp``, ``torch``."""

LOSS_EXTENSION = declare_extension("recon_core_loss", [Path(__file__).with_name("csrc") / "loss_cpu.cpp"])
"""The compiled CPU L1 + D-SSIM loss, forward and backward (``csrc/loss_cpu.cpp``)."""

_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2


def _loss_extension() -> ModuleType | None:
    """The compiled module with ``l1_dssim_forward`` / ``l1_dssim_backward``, or None."""
    return LOSS_EXTENSION.load()


def loss_kernel(choice: str, reference: Tensor) -> str:
    """``"cpp"`` or ``"torch"``: which implementation :func:`photometric_loss` uses for images like
    ``reference`` under ``choice`` (:data:`LOSS_KERNELS`). ``auto``: the compiled kernel for CPU
    float32/float64 images when it builds, else torch (CUDA, half precision, ``RECON_NO_CPP=1``);
    ``cpp`` raises :class:`~recon_core.errors.InputError` where the compiled kernel cannot run."""
    if choice not in LOSS_KERNELS:
        raise InputError(f"unknown loss kernel {choice!r}; choose one of {', '.join(LOSS_KERNELS)}")
    if choice == "torch":
        return "torch"
    usable = reference.device.type == "cpu" and reference.dtype in (torch.float32, torch.float64)
    if choice == "cpp":
        if not usable:
            raise InputError(f"loss kernel 'cpp' needs float32/float64 CPU images, got {reference.dtype} on "
                             f"{reference.device}; use 'torch' (or 'auto') on other devices")
        if _loss_extension() is None:
            reason = "RECON_NO_CPP is set" if cpp_disabled() else "it could not be built (see the warning above)"
            raise InputError(f"loss kernel 'cpp' is unavailable: {reason}; use 'torch' or 'auto'")
        return "cpp"
    return "cpp" if usable and _loss_extension() is not None else "torch"


class _CompiledL1DSsim(torch.autograd.Function):
    """``(1 - w) L1 + w (1 - SSIM)`` of (N, H, W, C) images by the compiled kernel; the gradient
    flows to ``pred`` only (the target is a constant, as in training)."""

    @staticmethod
    def forward(ctx: Any, pred: Tensor, target: Tensor, ssim_weight: float, window: Tensor) -> Tensor:
        ext = _loss_extension()
        assert ext is not None  # loss_kernel() checked
        loss, _, coef = ext.l1_dssim_forward(pred, target, window, ssim_weight, _SSIM_C1, _SSIM_C2,
                                             ctx.needs_input_grad[0])
        ctx.save_for_backward(pred, target, window, coef)
        ctx.ssim_weight = ssim_weight
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        pred, target, window, coef = ctx.saved_tensors
        ext = _loss_extension()
        assert ext is not None
        return ext.l1_dssim_backward(pred, target, window, coef, ctx.ssim_weight, float(grad)), None, None, None


def photometric_loss(
    pred: Tensor, target: Tensor, ssim_weight: float = 0.2, mask: Tensor | None = None, window_size: int = 11,
    kernel: str = "torch",
) -> Tensor:
    """``(1 - w) · L1 + w · (1 - SSIM)`` of (H, W, C) or (N, H, W, C) images, differentiable.

    Rules:

    * **Small images**: when the image is smaller than SSIM's window (``window_size``, 11) on
      either side, or ``ssim_weight`` is 0, the loss is the plain L1 (not scaled by 1 - w).
    * **Mask** (bool (H, W) or (N, H, W), True = counts): both images are set to 0 outside the
      mask first, so pixels outside it change neither the value nor the gradient; L1 is averaged
      over the masked pixels and channels, SSIM (:func:`ssim`) over the window centres that lie
      on masked pixels. A mask with no window centre (only a thin border strip) gives an SSIM of 0,
      i.e. a constant ``w`` added to the loss, without gradient.
    * **Kernel** (:data:`LOSS_KERNELS`, resolved by :func:`loss_kernel`): ``"torch"`` (default)
      computes with PyTorch ops; ``"cpp"`` / ``"auto"`` compute the unmasked L1 + SSIM (the same
      'valid' SSIM, no padding) in one compiled CPU pass and its backward by hand, the gradient
      flowing to ``pred`` only (``"cpp"`` refuses a ``target`` that requires grad, ``"auto"``
      leaves it to PyTorch). Masked losses and the plain-L1 rule above always take the PyTorch ops.
    """
    small = ssim_weight == 0 or min(pred.shape[-3], pred.shape[-2]) < window_size
    # 'auto' leaves a target that requires grad to the PyTorch ops; 'cpp' refuses it below
    compiled = kernel != "torch" and mask is None and not small and not (kernel == "auto" and target.requires_grad)
    if compiled and loss_kernel(kernel, pred) == "cpp":
        if target.requires_grad:
            raise InputError("the compiled photometric loss differentiates pred only; the target requires grad "
                             "(use kernel 'torch' or 'auto')")
        if target.shape != pred.shape or target.dtype != pred.dtype or target.device != pred.device:
            raise InputError(f"photometric loss: pred {tuple(pred.shape)} {pred.dtype} and target "
                             f"{tuple(target.shape)} {target.dtype} differ")
        batched = (lambda t: t[None] if t.ndim == 3 else t)  # noqa: E731
        window = gaussian_window(window_size, 1.5, pred.dtype)
        return _CompiledL1DSsim.apply(batched(pred).contiguous(), batched(target).contiguous(), float(ssim_weight), window)
    if mask is not None:
        m = mask.to(pred.dtype)[..., None]
        pred, target = pred * m, target * m
        l1 = (pred - target).abs().sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)
    else:
        l1 = (pred - target).abs().mean()
    if small:
        return l1
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim(pred, target, mask, window_size))


# ------------------------------------------------------------------------------------- MS-SSIM

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of Wang et al. 2003, finest scale first."""


@dataclass(frozen=True)
class MsSsimPlan:
    """How MS-SSIM is evaluated for one image size.

    Attributes:
        weights: exponent per scale, finest first; sums to 1 when scales were dropped.
        window_size: odd Gaussian window size used at every scale.
        sigma: Gaussian standard deviation of the window.
    """

    weights: tuple[float, ...]
    window_size: int
    sigma: float

    @property
    def scales(self) -> int:
        return len(self.weights)


def ms_ssim_plan(
    height: int,
    width: int,
    window_size: int = 11,
    sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> MsSsimPlan:
    """Fit the MS-SSIM pyramid to an image of ``height`` x ``width`` pixels.

    Scale ``s`` (0-based) sees ``floor(size / 2**s)`` pixels per side and needs at least one full
    window. All scales that fit are kept; when some are dropped, the remaining (finest) weights are
    renormalised to sum to one, so a single remaining scale is plain SSIM. When not even the finest
    scale fits the window, the window shrinks to the largest odd size that fits and sigma is
    scaled by the same factor. Raises ValueError for images under 3 pixels on a side.
    """
    smallest = min(height, width)
    if smallest < 3:
        raise ValueError(f"MS-SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    if window_size % 2 == 0 or window_size < 3:
        raise ValueError(f"window_size must be odd and at least 3, got {window_size}")
    if not weights:
        raise ValueError("MS-SSIM needs at least one scale weight")
    if smallest < window_size:
        shrunk = smallest if smallest % 2 == 1 else smallest - 1
        return MsSsimPlan((1.0,), shrunk, sigma * shrunk / window_size)
    scales = 1
    while scales < len(weights) and smallest // 2**scales >= window_size:
        scales += 1
    kept = tuple(float(w) for w in weights[:scales])
    if scales < len(weights):
        total = sum(kept)
        kept = tuple(w / total for w in kept)
    return MsSsimPlan(kept, window_size, sigma)


def ms_ssim(
    pred: Tensor,
    target: Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> Tensor:
    """Multi-scale SSIM of (H, W, C) or (N, H, W, C) images in [0, 1], differentiable.

    Per image and channel: ``prod_j cs_j ** w_j`` over the finer scales times ``ssim_M ** w_M``
    at the coarsest, with each term the spatial mean over the 'valid' window positions and
    clamped at 0 (as TensorFlow's ``ssim_multiscale`` and pytorch-msssim do, so negative
    correlations cannot produce NaN; the gradient through a clamped term is 0). Returns the mean over images and channels. Scales and
    window follow :func:`ms_ssim_plan`; between scales both images are 2x2 average-pooled
    (odd trailing rows/columns dropped).
    """
    x, y = _batched(pred), _batched(target)
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM needs images of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    plan = ms_ssim_plan(x.shape[2], x.shape[3], window_size, sigma, weights)
    value = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    for scale, weight in enumerate(plan.weights):
        if scale > 0:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        s, cs = _ssim_cs_maps(x, y, plan.window_size, plan.sigma)
        term = (s if scale == plan.scales - 1 else cs).mean(dim=(2, 3))
        positive = term > 0
        # term ** weight where positive, 0 elsewhere, with finite gradients (0 ** w has none)
        value = value * torch.where(positive, torch.where(positive, term, torch.ones_like(term)) ** weight, 0.0)
    return value.mean()


# ----------------------------------------------------------------------------------- masking


def mask_bbox(mask: Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the True pixels of a bool (H, W) mask, bottom/right exclusive."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("the mask selects no pixel")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def masked_crop(images: Sequence[Tensor], mask: Tensor, background: float = 1.0, min_size: int = 1) -> list[Tensor]:
    """Composite (H, W, C) images onto ``background`` outside ``mask`` and crop to its bounding box.

    Every image gets the same treatment, so pixels outside the mask cannot influence a metric
    computed on the results. When the box is smaller than ``min_size`` on a side, the crops are
    padded (centred) with ``background`` to ``min_size``, which equals a larger box of background.
    Raises ValueError when the mask selects no pixel.
    """
    top, bottom, left, right = mask_bbox(mask)
    keep = mask[top:bottom, left:right, None]
    out = []
    for image in images:
        crop = image[top:bottom, left:right]
        crop = torch.where(keep, crop, torch.full_like(crop, background))
        pad_h, pad_w = max(0, min_size - crop.shape[0]), max(0, min_size - crop.shape[1])
        if pad_h or pad_w:
            chw = crop.permute(2, 0, 1)
            pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            crop = F.pad(chw, pads, value=background).permute(1, 2, 0)
        out.append(crop)
    return out

