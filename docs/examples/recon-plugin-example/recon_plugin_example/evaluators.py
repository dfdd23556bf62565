"""``mae``: mean absolute error between a render and its ground truth."""

from __future__ import annotations

from torch import Tensor

from recon_core import ImageEvaluator, InputError


class MeanAbsoluteError(ImageEvaluator):
    """Mean of |pred - target| over all pixels and channels, or only over masked pixels."""

    name = "mae"
    description = "Mean absolute error over all or masked pixels (example third-party plugin)"
    higher_is_better = False

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        if pred.shape != target.shape or pred.ndim != 3:
            raise InputError(f"mae: prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (H, W, 3)")
        err = (pred.double() - target.double()).abs()
        if mask is None:
            return float(err.mean())
        if tuple(mask.shape) != tuple(pred.shape[:2]) or not bool(mask.any()):
            raise InputError(f"mae: mask {tuple(mask.shape)} must be (H, W) and select at least one pixel")
        return float(err[mask.to(err.device)].mean())
