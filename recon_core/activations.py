"""Elementwise activations whose value and derivative come from one compiled pass, differentiable to
any order.

Why: methods that differentiate a network twice (IDR's eikonal loss and normals: ∇ₓ f, then the
gradient of a loss on it) make PyTorch's autograd record, for every activation, the activation, its
derivative in the backward (another transcendental pass), and in the double backward the derivative
of that (a third), each with its own elementwise multiplies. Here a kernel returns ``(y, d)`` with
``d = y'(z)`` in one pass; the backward is ``gy · d``; when ``d`` itself receives a gradient ``gd`` (the
double backward: ``d`` is used by the first-order ``gy · d``) it adds ``gd · y''(z)``, with ``y''``
written as torch ops on the saved outputs ``y`` and ``d``, so that the backward is differentiable
again; the common case (both gradients, no further graph) is one fused kernel.

A method supplies an :class:`ActivationKernels` (e.g. IDR's clamped Softplus, FFB's sine) and calls
:func:`apply_activation`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["ActivationKernels", "activation_with_derivative", "apply_activation"]


class ActivationKernels(Protocol):
    """The three pieces of a compiled activation ``y(z)``."""

    def value_and_derivative(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z → (y(z), y'(z)), same shape and dtype as ``z`` (a compiled kernel)."""

    def second_derivative(self, y: Tensor, d: Tensor) -> Tensor:
        """y''(z) from the outputs ``y`` and ``d = y'(z)``, in torch ops (so that it is differentiable)."""

    def fused_grad(self, gy: Tensor, gd: Tensor, y: Tensor, d: Tensor) -> Tensor:
        """``gy · d + gd · y''(z)`` in one pass (a compiled kernel; called only without autograd)."""


class _Activation(torch.autograd.Function):
    """z → (y, d) with the backward described in the module docstring."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, kernels: ActivationKernels) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        y, d = kernels.value_and_derivative(z)
        ctx.kernels = kernels
        ctx.save_for_backward(y, d)
        return y, d

    @staticmethod
    def backward(ctx: Any, gy: Tensor | None, gd: Tensor | None) -> tuple[Tensor | None, None]:  # type: ignore[override]
        y, d = ctx.saved_tensors
        if gd is None:
            return (None if gy is None else gy * d), None
        if gy is not None and not torch.is_grad_enabled():  # the usual double backward: one fused pass
            return ctx.kernels.fused_grad(gy, gd, y, d), None
        gz = gd * ctx.kernels.second_derivative(y, d)
        return (gz if gy is None else gy * d + gz), None


def apply_activation(z: Tensor, kernels: ActivationKernels) -> Tensor:
    """``y(z)`` through the compiled ``kernels``, with gradients of every order (module docstring)."""
    return _Activation.apply(z, kernels)[0]


def activation_with_derivative(z: Tensor, kernels: ActivationKernels) -> tuple[Tensor, Tensor]:
    """``(y(z), y'(z))``, both differentiable: for tests and for callers that use the derivative."""
    return _Activation.apply(z, kernels)
