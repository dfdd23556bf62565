"""The compiled CPU summation rasteriser (``csrc/rasterize_sum.cpp``) and its autograd wrapper.

The extension is built on first use by :func:`recon_core.cpp_extension.load_extension` (ninja,
the host C++ compiler, OpenMP; cached in torch's extension directory). When it cannot be built,
:func:`extension` returns None after one warning and ``rasterize_sum`` uses its PyTorch twin;
``RECON_NO_CPP=1`` turns the compiled path off silently.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from recon_core.cpp_extension import declare_extension

__all__ = ["EXTENSION", "EXTENSION_NAME", "SOURCES", "extension", "rasterize_sum_cpp"]

EXTENSION_NAME = "recon_d2gv_cpu"
SOURCES = (Path(__file__).with_name("csrc") / "rasterize_sum.cpp",)
EXTENSION = declare_extension(EXTENSION_NAME, SOURCES)  # recon doctor --build builds it ahead


def extension() -> ModuleType | None:
    """The compiled module (built once per environment), or None when it is unavailable."""
    return EXTENSION.load()


class _RasterizeSumCpp(torch.autograd.Function):
    """Unclamped summation image; backward gives gradients of means, conics, colours and weights."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        means: Tensor,
        conics: Tensor,
        colors: Tensor,
        weights: Tensor | None,
        radii: Tensor,
        height: int,
        width: int,
        alpha_min: float,
    ) -> Tensor:
        ext = extension()
        assert ext is not None, "rasterize_sum_cpp called without the compiled extension"
        ctx.save_for_backward(means, conics, colors, weights, radii)
        ctx.frame = (height, width, alpha_min)
        return ext.forward(means, conics, colors, weights, radii, height, width, alpha_min)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        means, conics, colors, weights, radii = ctx.saved_tensors
        d_means, d_conics, d_colors, d_weights = extension().backward(grad, means, conics, colors, weights, radii, *ctx.frame)
        return d_means, d_conics, d_colors, d_weights, None, None, None, None


def rasterize_sum_cpp(
    means: Tensor,
    conics: Tensor,
    colors: Tensor,
    radii: Tensor,
    weights: Tensor | None,
    height: int,
    width: int,
    alpha_min: float,
) -> Tensor:
    """Compiled summation rasteriser: [B, N, ·] CPU float32/float64 tensors → unclamped [B, H, W, C].

    Differentiable (once) with respect to means, conics, colors and weights. Arguments as in
    :func:`rasterize.rasterize_sum`; ``radii`` must be int64.
    """
    return _RasterizeSumCpp.apply(means, conics, colors, weights, radii.long(), int(height), int(width), float(alpha_min))
