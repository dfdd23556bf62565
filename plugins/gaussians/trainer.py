"""The ``3dgs-train`` refiner: photometric optimisation with densification (3DGS / gsplat style).

One step = one training view (batch size 1) drawn from a seeded ``torch.Generator`` (a fresh
random permutation of the training views each epoch), rendered by the run's renderer on the
run's background (``--set run.background=R,G,B``), compared with the view's image on that
background (:meth:`recon_core.View.image_on`) by ``(1 - w) L1 + w (1 - SSIM)``
(:func:`recon_core.imageops.photometric_loss`, w = 0.2; on CPU by default its compiled kernel,
``loss_kernel``), then handed to the optimisation
engine (:class:`recon_core.optim.GaussianOptimizer`: Adam per entry with gsplat's learning
rates, the means' lr decay, progressive SH, and the densification strategy ``strategy``:
``default``, ``gsplat-default`` or ``mcmc``).

It uses nothing but the Gaussian scene protocol, so it trains any representation that
implements it (``3dgs``, ``reconx``, a third party's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from recon_core import CombinationError, GaussianRepresentation, InputError, Refiner, Representation, RunContext, Scene, Video, option
from recon_core.imageops import LOSS_KERNELS, loss_kernel, photometric_loss, psnr
from recon_core.optim import EpochOrder, GaussianOptimizer, OptimConfig, TargetCache, default_scene_scale

__all__ = ["GaussianTrainer", "GaussianTrainConfig"]

@dataclass
class GaussianTrainConfig(OptimConfig):
    """The engine's options (learning rates, schedules, ``strategy``) plus the training loop's."""

    steps: int = option(2000, "training steps (gsplat trains 30000 on a GPU; 2000 is a CPU-friendly default)", min=1)
    ssim_weight: float = option(0.2, "loss = (1 - w) L1 + w (1 - SSIM)", min=0, max=1)
    loss_kernel: str = option("auto", "the L1 + SSIM loss's implementation: auto (the compiled CPU kernel where it "
                              "builds, else PyTorch; CUDA: PyTorch), cpp, torch (the PyTorch reference)", choices=LOSS_KERNELS)
    scene_scale: float | None = option(None, "scene scale for the means' lr and size thresholds (default 1.1 x bounds radius)", min=1e-12)


class GaussianTrainer(Refiner):
    """Optimise 3D Gaussians against the training views (3DGS), with densification."""

    name = "3dgs-train"
    description = "3DGS optimisation: L1 + SSIM, Adam, progressive SH, densification (default, gsplat-default or mcmc)"
    Config = GaussianTrainConfig
    requires = frozenset({"gaussians-3d"})

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        cfg = self.config
        if not isinstance(data, Scene):
            raise InputError("3dgs-train needs posed views (a Scene), not a video")
        if not isinstance(rep, GaussianRepresentation):
            raise CombinationError(f"3dgs-train needs a Gaussian representation (recon_core.GaussianRepresentation); '{rep.name}' is not one")
        self.views = data.train_views or list(data.views)
        if not self.views:
            raise InputError("3dgs-train needs at least one training view", data.source)
        self.rep, self.ctx = rep, ctx
        loss_kernel(cfg.loss_kernel, torch.empty(0, device=ctx.device))  # 'cpp' where it cannot run: an error now
        self.background = ctx.background_color()
        self.targets = TargetCache(self.background, ctx.device)
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        scene_scale = float(cfg.scene_scale) if cfg.scene_scale else default_scene_scale(data.bounds.radius)
        self.engine = GaussianOptimizer(rep, cfg, scene_scale=scene_scale, total_steps=self.total_steps,
                                        generator=self.generator, views=len(self.views),
                                        pixels=sum(v.width * v.height for v in self.views))
        self.order = EpochOrder(len(self.views))
        self.last_loss = float("nan")

    @property
    def total_steps(self) -> int:
        return int(self.config.steps)

    def step(self, step: int) -> dict[str, float]:
        engine = self.engine
        engine.sync()
        at = engine.schedule(step, fraction=self.ctx.budget_fraction())  # ahead of step when a budget runs short
        view = self.views[self.order.next(self.generator)]
        camera = view.camera.to(self.ctx.device)
        target = self.targets(view)
        out = self.ctx.renderer.render(self.rep, camera, background=self.background)
        engine.before_backward(at, out.info)
        pred = out.rgb[0]
        loss = photometric_loss(pred, target, self.config.ssim_weight, kernel=self.config.loss_kernel) + engine.regularisation()
        engine.step(loss, at, out.info, camera)
        self.last_loss = float(loss.detach())
        return {"loss": self.last_loss, "psnr": float(psnr(pred.detach(), target)), "gaussians": float(len(self.rep))}

    def state_dict(self) -> dict[str, Any]:
        """The engine's state (optimizers, strategy, generator) and the view order."""
        return {"engine": self.engine.state_dict(), "order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state["engine"])
        self.order.load_state_dict(state["order"])

    def finish(self) -> dict[str, Any]:
        self.engine.finish()
        return {"gaussians": len(self.rep), "final_loss": self.last_loss}
