"""Built-in image metrics: ``psnr``, ``ssim``, ``ms-ssim`` and ``lpips``.

Registered through the ``recon.plugins`` entry point ``metrics`` exactly as a third-party
plugin would be. The pipeline computes each over the full image (the render against the view's
image on the run's background) and, for views with an object mask or alpha, again with that
mask under ``NAME_masked`` (see :mod:`recon_core.evaluate`). Masks: PSNR counts only masked pixels; SSIM composites both images onto the
same background outside the mask and averages the SSIM map over window centres inside the mask;
MS-SSIM and LPIPS composite onto the same background and crop to the mask's bounding box
(see :func:`recon_core.imageops.masked_crop`). In every case, pixels outside the mask have no
effect on the value.
"""

from __future__ import annotations

from recon_core import Evaluator, hookimpl

from .image import MSSSIM, PSNR, SSIM
from .perceptual import LPIPS

__all__ = ["PSNR", "SSIM", "MSSSIM", "LPIPS", "register_evaluators"]


@hookimpl
def register_evaluators() -> list[type[Evaluator]]:
    return [PSNR, SSIM, MSSSIM, LPIPS]
