"""Closed-form image metrics: PSNR, SSIM and MS-SSIM (no learned weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from recon_core import ImageEvaluator, InputError, option
from recon_core import imageops

from ._inputs import check_pair, selects_nothing


WINDOW = 11
"""SSIM's Gaussian window size (sigma 1.5)."""


class PSNR(ImageEvaluator):
    """Peak signal-to-noise ratio in dB (data range 1) over all, or only masked, pixels.

    Identical images give 120 dB (the MSE is floored at 1e-12); an empty mask gives NaN.
    """

    name = "psnr"
    description = "Peak signal-to-noise ratio (dB) over the full image (psnr_masked: inside the object mask)"
    unit = "dB"

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        pred, target, mask = check_pair(self.name, pred, target, mask, dtype=torch.float64)  # cheap: no filtering
        if selects_nothing(mask):
            return math.nan
        return float(imageops.psnr(pred, target, mask))


@dataclass
class SSIMConfig:
    background: float = option(1.0, "grey level both images get outside the mask before filtering", min=0, max=1)


class SSIM(ImageEvaluator):
    """Structural similarity (Wang et al. 2004), equal to skimage's with Gaussian weights.

    With a mask, both images are composited onto ``background`` outside it and the SSIM map is
    averaged over window centres inside the mask (centres within 5 pixels of the border have no
    full window and never count). NaN when no window centre counts (an image under 11x11, a
    mask without a pixel 5 pixels away from the border).
    """

    name = "ssim"
    description = "Structural similarity (11x11 Gaussian window, sigma 1.5), as skimage"
    Config = SSIMConfig

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        pred, target, mask = check_pair(self.name, pred, target, mask)
        if min(pred.shape[:2]) < WINDOW:
            return math.nan  # no full window fits
        if mask is None:
            return float(imageops.ssim(pred, target))
        r = WINDOW // 2
        if not bool(mask[r:-r, r:-r].any()):
            return math.nan  # also covers an empty mask: no window centre inside it
        keep = mask[..., None]
        fill = torch.full_like(pred, self.config.background)
        pred, target = torch.where(keep, pred, fill), torch.where(keep, target, fill)
        return float(imageops.ssim(pred, target, mask, window_size=WINDOW))


@dataclass
class MSSSIMConfig:
    scales: int = option(5, "number of scales (at most 5); fewer are used when the image is too small", min=1, max=5)
    background: float = option(1.0, "grey level both images get outside the mask", min=0, max=1)


class MSSSIM(ImageEvaluator):
    """Multi-scale SSIM with the standard five weights, fitted to small images.

    See :func:`recon_core.imageops.ms_ssim_plan` for how scales and window shrink when an image
    (or a mask's bounding box) is too small. With a mask, both images are composited onto
    ``background`` outside it and cropped to the mask's bounding box. NaN for an empty mask or
    a region under 3 pixels on a side.
    """

    name = "ms-ssim"
    description = "Multi-scale SSIM (5 scales, fewer on small images)"
    Config = MSSSIMConfig

    def weights(self) -> tuple[float, ...]:
        """The standard weights of the configured scales (renormalised to sum 1 when fewer than 5)."""
        standard = imageops.MS_SSIM_WEIGHTS
        if self.config.scales == len(standard):
            return standard
        kept = standard[: self.config.scales]
        return tuple(w / sum(kept) for w in kept)

    def compute(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
        pred, target, mask = check_pair(self.name, pred, target, mask)
        if not 1 <= self.config.scales <= len(imageops.MS_SSIM_WEIGHTS):
            raise InputError(f"ms-ssim: scales must be between 1 and 5, got {self.config.scales}")
        if selects_nothing(mask):
            return math.nan
        if mask is not None:
            pred, target = imageops.masked_crop([pred, target], mask, self.config.background)
        if min(pred.shape[:2]) < 3:
            return math.nan  # not even a 3x3 window fits
        return float(imageops.ms_ssim(pred, target, weights=self.weights()))
