"""Summation rasteriser for image-space 2D Gaussians (GaussianImage / D2GV).

Conventions (see also docs/conventions.md):

* Normalised positions ``xy`` in [-1, 1] map to pixel coordinates ``(xy + 1) / 2 * (W, H)``,
  so -1 and +1 are the outer *edges* of the image, x right, y down.
* Pixel ``(row i, column j)`` is sampled at its centre ``(j + 0.5, i + 0.5)`` (recon's
  convention). GaussianImage's kernel samples at ``(j, i)`` with the same position mapping, i.e.
  its images are shifted by half a pixel against ours; any fitted model absorbs that.
* Covariance from a lower-triangular Cholesky factor ``L = [[l11, 0], [l21, l22]]`` in pixels,
  ``Σ = L Lᵀ``; the conic is ``(a, b, c)`` with ``Σ⁻¹ = [[a, b], [b, c]]``.

Image model (accumulated summation, no alpha compositing, opacity 1)::

    C(p) = clamp( Σ_n w_n · c_n · α_n(p), 0, 1 ),
    α_n(p) = min(1, exp(-σ_n(p))),  σ = ½ (a dx² + c dy²) + b dx dy,  (dx, dy) = p - μ_n

where a Gaussian contributes to pixel p only when ``α_n(p) >= alpha_min`` (1/255) and p lies in
its square footprint ``|dx| <= r_n, |dy| <= r_n`` with ``r_n = ceil(3 √λmax(Σ_n))``. This rule does
not depend on any tiling, so every implementation computes the same image and the same gradients.
``w_n`` is an optional per-Gaussian weight (the pruning mask). Unlike the CUDA reference kernel
nothing is capped per tile (it renders only the first 256 Gaussians of a tile).

Implementations of :func:`rasterize_sum` (``RasterSettings.backend``):

* ``"cpp"``: compiled C++/OpenMP kernel for CPU tensors (``_cpp.py``, ``csrc/rasterize_sum.cpp``):
  16×16 tiles rendered in parallel in the forward pass, a per-Gaussian gather in the backward pass.
* ``"torch"``: its PyTorch twin ``_torch_impl._rasterize_sum`` (any device, plain autograd).
* ``"auto"`` (default): ``"cpp"`` for float32/float64 CPU tensors when the extension is available
  (built on first use; ``RECON_NO_CPP=1`` disables it), otherwise ``"torch"``.

``_reference._rasterize_sum_dense`` evaluates every Gaussian at every pixel, for tests only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from recon_core import InputError

from . import _cpp
from ._torch_impl import _rasterize_sum

__all__ = ["RasterSettings", "Backend", "project_cholesky", "rasterize_sum", "resolve_backend", "footprint_radii"]

Backend = Literal["auto", "cpp", "torch"]


@dataclass(frozen=True)
class RasterSettings:
    """Options of :func:`rasterize_sum` (and of its reference twin).

    Attributes:
        height, width: output size in pixels.
        alpha_min: contributions with α below this are skipped (the reference uses 1/255).
        clamp: clamp the summed colour to [0, 1] (the image model does; off only for debugging).
        chunk_evals: at most this many (Gaussian, pixel) evaluations are materialised at once
            (PyTorch twin only).
        backend: ``"auto"``, ``"cpp"`` (fails if the extension is unavailable or the tensors are
            not float32/float64 on the CPU) or ``"torch"`` (see the module docstring).
    """

    height: int
    width: int
    alpha_min: float = 1.0 / 255.0
    clamp: bool = True
    chunk_evals: int = 1 << 22
    backend: Backend = "auto"


def footprint_radii(cov: Tensor, n_sigma: float = 3.0) -> Tensor:
    """Integer footprint radius ``ceil(n_sigma · √λmax)`` in pixels.

    Args:
        cov: [..., 3] covariance entries (Σ11, Σ12, Σ22) in pixels².
    Returns:
        [...] int64 radii (not differentiable).
    """
    a, b, c = cov.detach().unbind(-1)
    mid = 0.5 * (a + c)
    lam_max = mid + torch.sqrt(torch.clamp(mid * mid - (a * c - b * b), min=0.0))
    return torch.ceil(n_sigma * torch.sqrt(lam_max.clamp_min(0.0))).long()


def project_cholesky(xy: Tensor, chol: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised positions + Cholesky factors → pixel means, conics and footprint radii.

    Args:
        xy: [..., N, 2] positions in [-1, 1] (already through tanh), x right, y down.
        chol: [..., N, 3] Cholesky entries (l11, l21, l22) in pixels; l11, l22 must be > 0.
        height, width: image size in pixels.
    Returns:
        means [..., N, 2] pixel coordinates (pixel centres at i + 0.5),
        conics [..., N, 3] (a, b, c) of Σ⁻¹,
        radii [..., N] int64 footprint radii ``ceil(3 √λmax)``.
    """
    assert xy.shape[-1] == 2 and chol.shape[-1] == 3 and xy.shape[:-1] == chol.shape[:-1], (xy.shape, chol.shape)
    scale = xy.new_tensor([0.5 * width, 0.5 * height])
    means = (xy + 1.0) * scale
    l11, l21, l22 = chol.unbind(-1)
    s11, s12, s22 = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    det = (l11 * l22) ** 2
    conics = torch.stack([s22 / det, -s12 / det, s11 / det], dim=-1)
    radii = footprint_radii(torch.stack([s11, s12, s22], dim=-1))
    return means, conics, radii


def resolve_backend(backend: str, *tensors: Tensor) -> str:
    """``"cpp"`` or ``"torch"``: which implementation ``backend`` picks for these tensors.

    Raises:
        InputError: unknown ``backend``, or ``"cpp"`` asked for where it cannot run.
    """
    if backend not in ("auto", "cpp", "torch"):
        raise InputError(f"unknown rasteriser backend {backend!r}; choose auto, cpp or torch")
    if backend == "torch":
        return "torch"
    fits = all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
    if backend == "auto":
        return "cpp" if fits and _cpp.extension() is not None else "torch"
    if not fits:
        raise InputError("rasteriser backend 'cpp' needs float32/float64 CPU tensors")
    if _cpp.extension() is None:
        raise InputError("rasteriser backend 'cpp' is unavailable (the C++ extension did not build, or RECON_NO_CPP=1)")
    return "cpp"


def rasterize_sum(
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    radii: Tensor,
    weights: Tensor | None,
    settings: RasterSettings,
) -> Tensor:
    """Render B images of N 2D Gaussians by accumulated summation (see the module docstring).

    Args:
        means: [B, N, 2] pixel coordinates (x, y), pixel centres at i + 0.5.
        conics: [B, N, 3] (a, b, c) of the inverse covariance.
        colors: [B, N, C] colours (any C; 3 for RGB).
        radii: [B, N] int64 footprint radii (``project_cholesky``); Gaussians with radius 0 are skipped.
        weights: [B, N] per-Gaussian multipliers (pruning mask), or None for all ones.
        settings: output size, cut-offs and backend.
    Returns:
        [B, H, W, C] float images, clamped to [0, 1] when ``settings.clamp``; differentiable with
        respect to means, conics, colors and weights.
    """
    B, N, _ = means.shape
    assert conics.shape == (B, N, 3) and colors.shape[:2] == (B, N) and radii.shape == (B, N), (
        means.shape,
        conics.shape,
        colors.shape,
        radii.shape,
    )
    assert weights is None or weights.shape == (B, N)
    tensors = (means, conics, colors) if weights is None else (means, conics, colors, weights)
    if resolve_backend(settings.backend, *tensors) == "torch":
        return _rasterize_sum(means, conics, colors, radii, weights, settings)
    dtype = torch.promote_types(torch.promote_types(means.dtype, conics.dtype), colors.dtype)
    img = _cpp.rasterize_sum_cpp(
        means.to(dtype),
        conics.to(dtype),
        colors.to(dtype),
        radii,
        None if weights is None else weights.to(dtype),
        settings.height,
        settings.width,
        settings.alpha_min,
    )
    return img.clamp(0.0, 1.0) if settings.clamp else img
