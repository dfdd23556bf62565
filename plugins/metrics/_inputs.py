"""Validation shared by the image metrics: shapes, dtypes and masks of one (pred, target) pair.

Bad input (mismatched shapes, non-finite values, a non-boolean mask) is an InputError. A metric
that is merely undefined for one view (its mask selects no pixel, the image is smaller than the
metric's window) returns NaN instead, which the pipeline records as null in metrics.json, so
one such view does not abort a finished run's evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon_core import InputError


def check_pair(
    metric: str, pred: Tensor, target: Tensor, mask: Tensor | None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Return ``pred``/``target`` as ``dtype`` (H, W, 3) on one device and ``mask`` as bool (H, W).

    float32 is the default: filtered metrics (SSIM, MS-SSIM) agree with a float64 computation to
    about 1e-6 and run tens of times faster on CPU, where torch has no fast float64 convolution.

    Raises InputError (naming the metric and the problem) for mismatched shapes, non-finite
    values and non-boolean or wrongly sized masks. An empty mask is returned as is (see
    :func:`selects_nothing`).
    """
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise InputError(f"{metric}: prediction has shape {tuple(pred.shape)}, expected (H, W, 3)")
    if target.shape != pred.shape:
        raise InputError(
            f"{metric}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
        raise InputError(f"{metric}: images contain NaN or infinite values")
    pred = pred.detach().to(dtype)
    target = target.detach().to(device=pred.device, dtype=dtype)
    if mask is None:
        return pred, target, None
    if mask.dtype != torch.bool:
        raise InputError(f"{metric}: mask has dtype {mask.dtype}, expected torch.bool (see docs/conventions.md)")
    if tuple(mask.shape) != tuple(pred.shape[:2]):
        raise InputError(f"{metric}: mask has shape {tuple(mask.shape)}, expected {tuple(pred.shape[:2])}")
    return pred, target, mask.to(pred.device)


def selects_nothing(mask: Tensor | None) -> bool:
    """True when a mask is given but selects no pixel (the metric is then NaN)."""
    return mask is not None and not bool(mask.any())
