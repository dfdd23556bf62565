"""DGGT/VGGT input geometry: frames resized to width 518, height rounded to a multiple of 14,
centre-cropped to 518 when taller ("crop" mode of VGGT's ``load_and_preprocess_images``).

Images are resized bicubically (antialiased, clamped to [0, 1]); discrete masks (sky, dynamic)
with nearest-neighbour only (a bilinear resize turns thin objects into sky). Intrinsics map
with the same scale and crop so a camera stays consistent with its resized image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = ["ResizePlan", "plan_resize", "resize_images", "resize_masks"]


@dataclass(frozen=True)
class ResizePlan:
    """How a (src_width x src_height) frame becomes the network input.

    The frame is resized to (width x resized_height), then rows ``crop_top`` to
    ``crop_top + height`` are kept (``height == resized_height`` when nothing is cropped).
    """

    src_width: int
    src_height: int
    width: int
    resized_height: int
    height: int
    crop_top: int

    @property
    def scale_x(self) -> float:
        return self.width / self.src_width

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.src_height

    def K_to_network(self, K: Tensor) -> Tensor:
        """Source intrinsics [..., 3, 3] → network-input intrinsics."""
        K = K.clone()
        K[..., 0, :] *= self.scale_x
        K[..., 1, :] *= self.scale_y
        K[..., 1, 2] -= self.crop_top
        return K

    def K_to_source(self, K: Tensor) -> Tensor:
        """Network-input intrinsics [..., 3, 3] → intrinsics of the original frame."""
        K = K.clone()
        K[..., 1, 2] += self.crop_top
        K[..., 0, :] /= self.scale_x
        K[..., 1, :] /= self.scale_y
        return K


def plan_resize(src_width: int, src_height: int, target_width: int = 518, patch_size: int = 14) -> ResizePlan:
    """Width → ``target_width``; height → ``round(h · target/w / patch) · patch``, centre-cropped to
    ``target_width`` when larger (so the input is never taller than it is wide at 518)."""
    if src_width <= 0 or src_height <= 0:
        raise ValueError(f"invalid frame size {src_width}x{src_height}")
    if target_width % patch_size:
        raise ValueError(f"target width {target_width} is not a multiple of the patch size {patch_size}")
    new_h = max(patch_size, round(src_height * (target_width / src_width) / patch_size) * patch_size)
    height = min(new_h, target_width)
    return ResizePlan(src_width, src_height, target_width, new_h, height, (new_h - height) // 2)


def resize_images(images: Tensor, plan: ResizePlan) -> Tensor:
    """images [S, H, W, 3] float in [0, 1] → [S, 3, plan.height, plan.width] (bicubic, antialiased)."""
    x = images.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(plan.resized_height, plan.width), mode="bicubic", antialias=True, align_corners=False)
    return x[:, :, plan.crop_top : plan.crop_top + plan.height].clamp(0.0, 1.0)


def resize_masks(masks: Tensor, plan: ResizePlan) -> Tensor:
    """Boolean masks [S, H, W] → [S, plan.height, plan.width], nearest-neighbour (pixel centres)."""
    x = F.interpolate(masks[:, None].float(), size=(plan.resized_height, plan.width), mode="nearest-exact")
    return x[:, 0, plan.crop_top : plan.crop_top + plan.height] > 0.5
