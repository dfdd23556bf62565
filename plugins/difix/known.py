"""The ``nearest-gt`` fixer: a fixer whose output is known (an oracle), for testing fixer loops.

For each image it returns the ground-truth image of the view whose camera is nearest (pose
distance of :mod:`.camera_path`: centre distance + rotation angle) among a *pool* of views:

* the views of the dataset named by ``data`` (loaded by ``prepare`` through ``ctx.load``, with the
  loader ``recon run`` would pick), limited to ``split``; or a pool given in code with
  :meth:`NearestGTFixer.set_pool`;
* with neither, the ``views`` passed to :meth:`fix` that carry an image (so the pipeline's final
  post-process returns each evaluated view's own ground truth).

It uses test images when the pool includes them, so it is a *mechanics* check of loops such as
``difix3d+`` (pseudo-views, masking, weighting, resume), never a method to report as a result.
Images with an alpha channel are composited onto ``background`` (default: the run's,
``ctx.background``) like ``3dgs-train`` targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from recon_core.components import Fixer, RunContext
from recon_core.config import option
from recon_core.errors import InputError
from recon_core.scene import View

from .camera_path import pose_distance
from .fixer import check_images

__all__ = ["NearestGTFixer", "NearestGTConfig"]


@dataclass
class NearestGTConfig:
    data: str | None = option(None, "dataset folder whose views form the ground-truth pool (default: the views "
                                    "given to fix that have images)")
    split: str = option("all", "which views of data form the pool", choices=("all", "train", "test"))
    background: list[float] | None = option(None, "RGB behind images with an alpha channel (None: the run's "
                                                  "background, white outside a run)", min=0, max=1)


class NearestGTFixer(Fixer):
    """Oracle fixer: the ground-truth image of the nearest pooled view (tests and upper bounds only)."""

    name = "nearest-gt"
    description = "oracle fixer returning the ground truth of the nearest view (for testing fixer loops)"
    Config = NearestGTConfig

    def __init__(self, config: NearestGTConfig | None = None) -> None:
        super().__init__(config)
        self.pool: list[View] = []
        bg = self.config.background
        if bg is not None and len(bg) != 3:
            raise InputError(f"nearest-gt.background must have 3 values (RGB), got {len(bg)}")
        self.background = torch.tensor([1.0, 1.0, 1.0] if bg is None else [float(c) for c in bg], dtype=torch.float32)

    def set_pool(self, views: Sequence[View]) -> None:
        """Use ``views`` (each with an image) as the ground-truth pool."""
        missing = [v.name for v in views if not v.has("image")]
        if missing:
            raise InputError(f"nearest-gt pool views without an image: {', '.join(missing[:5])}")
        self.pool = list(views)

    def prepare(self, ctx: RunContext) -> None:
        """Take the run's background (unless configured) and load the ``data`` pool with ``ctx.load``."""
        if self.config.background is None and ctx.background is not None:
            self.background = ctx.background.detach().float().cpu().reshape(3)
        if not self.config.data:
            return
        from recon_core.scene import Scene

        path = Path(self.config.data).expanduser()
        if ctx.load is None:
            raise InputError("nearest-gt.data needs a run context that can load data (ctx.load)", path)
        scene = ctx.load(path)
        if not isinstance(scene, Scene):
            raise InputError("nearest-gt.data must be a dataset of posed views, not a video", path)
        views = scene.views if self.config.split == "all" else scene.split(self.config.split)  # type: ignore[arg-type]
        if not views:
            raise InputError(f"nearest-gt.data has no '{self.config.split}' views", path)
        self.set_pool(views)

    def _target(self, view: View) -> Tensor:
        return view.image_on(self.background)

    def fix(self, images: Tensor, references: Tensor | None = None, *, views: Sequence[View] | None = None) -> Tensor:
        """[N, H, W, 3]: for each of ``views`` (required, one per image), the nearest pooled view's image."""
        check_images(images)
        if views is None or len(views) != images.shape[0]:
            raise InputError(f"nearest-gt needs the {images.shape[0]} views (cameras) of the images it fixes")
        pool = self.pool or [v for v in views if v.has("image")]
        if not pool:
            raise InputError("nearest-gt has no ground truth to return: set nearest-gt.data to the dataset folder")
        pool_c2w = torch.stack([v.camera.c2w[0].cpu() for v in pool])
        out = []
        for i, view in enumerate(views):
            d = pose_distance(pool_c2w, view.camera.c2w[0].cpu()[None])
            best = pool[int(d.argmin())]
            if (best.height, best.width) != (images.shape[1], images.shape[2]):
                raise InputError(f"nearest-gt: view {best.name} is {best.width}x{best.height}, the image "
                                 f"{images.shape[2]}x{images.shape[1]}", best.path)
            out.append(self._target(best))
        return torch.stack(out).to(images.device, torch.float32)
