"""``unsharp``: unsharp-mask sharpening of rendered images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recon_core import Fixer, InputError, View, option


@dataclass
class UnsharpConfig:
    sigma: float = option(1.0, "standard deviation of the Gaussian blur, in pixels")
    amount: float = option(0.5, "how much of the detail (image - blur) is added back")
    threshold: float = option(0.0, "sharpen only pixels whose detail exceeds this (0 = everywhere)")
    truncate: float = option(3.0, "blur kernel radius in standard deviations")


def gaussian_blur(images: Tensor, sigma: float, truncate: float = 3.0) -> Tensor:
    """Separable Gaussian blur of [N, H, W, C] images; edges repeat the border pixel.

    The kernel radius is ``int(truncate * sigma + 0.5)``, the same as
    ``scipy.ndimage.gaussian_filter(..., mode="nearest", truncate=truncate)``.
    """
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return images
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, h, w, c = images.shape
    x = images.permute(0, 3, 1, 2).reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w).permute(0, 2, 3, 1)


class UnsharpMask(Fixer):
    """Sharpens renders: ``img + amount * (img - blur(img))`` where the detail exceeds ``threshold``.

    Needs no weights and ignores ``references``; works on any device.
    """

    name = "unsharp"
    description = "Unsharp-mask sharpening of renders (example third-party plugin)"
    Config = UnsharpConfig

    def fix(self, images: Tensor, references: Tensor | None = None, *, views: Sequence[View] | None = None) -> Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"unsharp: images have shape {tuple(images.shape)}, expected [N, H, W, 3]")
        if self.config.sigma <= 0 or self.config.amount < 0 or self.config.threshold < 0:
            raise InputError(
                f"unsharp: sigma must be > 0 and amount, threshold >= 0 "
                f"(got sigma={self.config.sigma}, amount={self.config.amount}, threshold={self.config.threshold})"
            )
        detail = images - gaussian_blur(images, self.config.sigma, self.config.truncate)
        if self.config.threshold > 0:
            detail = torch.where(detail.abs() > self.config.threshold, detail, torch.zeros_like(detail))
        return (images + self.config.amount * detail).clamp(0.0, 1.0)
