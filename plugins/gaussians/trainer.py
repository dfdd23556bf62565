"""The ``3dgs-train`` refiner: photometric optimisation with densification (3DGS / gsplat style).

One step = one training view (batch size 1) drawn from a seeded ``torch.Generator`` (a fresh
random permutation of the training views each epoch), rendered by the run's renderer on the
configured ``background``, compared with the target by ``(1 - w) L1 + w (1 - SSIM)`` (w = 0.2),
then one Adam step per parameter and the densification strategy (:mod:`.strategy`).

Learning rates follow gsplat's ``examples/simple_trainer.py``: means 1.6e-4 x scene scale,
decaying exponentially to 1 % at the last step; quats 1e-3, scales 5e-3, opacities 5e-2,
sh0 2.5e-3, shN 2.5e-3 / 20; Adam eps 1e-15. The scene scale is 1.1 x the radius of the
scene's bounds (gsplat: 1.1 x the largest camera distance from the cameras' mean). The SH
degree in use rises by one every ``sh_degree_interval`` steps up to ``sh_degree``.

Masks and background: the renderer composites the Gaussians over ``background`` (default
white, the loaders' default for RGBA images), and the target is made to match: a view with an
alpha channel has its image re-composited onto ``background`` (the loader's own background is
read off the fully transparent pixels); a view with only an object mask gets ``background``
outside the mask. The colour is also stored on the representation (``set_background``, the
``3dgs`` ``background_color`` buffer, returned as ``Gaussians3D.background``), so evaluation
and later renders composite the same colour without being told.

Densification needs the loss gradient w.r.t. the projected (2D) means. Rather than reaching into
a renderer for its ``means2d``, it is derived from the world-space gradient of the means
(:func:`.strategy.screen_gradients`), so any differentiable Gaussian renderer works; on
``torch-3dgs`` it agrees with the rasteriser's own ``means2d.grad`` to about 1 % (tested).

Works on every representation in the 3dgs layout: ``nn.Parameter`` attributes ``means``,
``quats``, ``scales``, ``opacities``, ``sh0``, ``shN`` as described in
:mod:`.representation` (an ``active_sh_degree`` attribute, when present, is driven).

Other refiners reuse the optimisation with their own choice of view and loss (``confidence``
/ ReconX, ``difix3d+``) through a small public API; set the trainer up, then per step::

    trainer.sync_optimizers()          # rebuild Adam (and strategy state) if the parameters were replaced
    trainer.schedule(step)             # means lr decay + SH degree (or trainer.set_means_lr(fraction))
    pred = renderer.render(rep, camera, background=trainer.background).rgb[0]
    loss = my_loss(pred, target)
    trainer.optimize(loss, step, camera)   # zero_grad, backward, Adam step, densification
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recon_core.cameras import Cameras
from recon_core.components import RunContext, Refiner, Representation
from recon_core.config import option
from recon_core.errors import CombinationError, InputError
from recon_core.imageops import ssim
from recon_core.scene import Scene, Video, View

from .representation import PARAMETER_NAMES
from .strategy import DefaultStrategy, screen_gradients

__all__ = ["GaussianTrainer", "GaussianTrainConfig", "training_target"]

_CACHE_BYTES = 2 << 30
"""Training targets are kept in memory up to this size (2 GiB), then re-read each time."""


@dataclass
class GaussianTrainConfig:
    steps: int = option(2000, "training steps (gsplat trains 30000 on a GPU; 2000 is a CPU-friendly default)")
    lr_means: float = option(1.6e-4, "learning rate of the means, times the scene scale")
    lr_means_final: float = option(0.01, "the means' learning rate decays exponentially to this fraction at the last step")
    lr_quats: float = option(1e-3, "learning rate of the quaternions")
    lr_scales: float = option(5e-3, "learning rate of the log-scales")
    lr_opacities: float = option(5e-2, "learning rate of the logit opacities")
    lr_sh0: float = option(2.5e-3, "learning rate of the SH DC coefficients")
    lr_shN: float = option(2.5e-3 / 20, "learning rate of the higher SH bands")
    ssim_weight: float = option(0.2, "loss = (1 - w) L1 + w (1 - SSIM)")
    sh_degree: int | None = option(None, "highest SH degree to train (default: all the representation stores)")
    sh_degree_interval: int = option(1000, "raise the SH degree in use by one every this many steps")
    background: list[float] = option(help="RGB background behind the Gaussians (also used for targets of masked views)",
                                     factory=lambda: [1.0, 1.0, 1.0])
    densify: bool = option(True, "clone/split/prune Gaussians (DefaultStrategy)")
    refine_start: int = option(500, "first step at which Gaussians are cloned/split/pruned")
    refine_stop: int = option(15_000, "no densification from this step on")
    refine_every: int = option(100, "densify every this many steps")
    reset_every: int = option(3000, "clamp opacities to 2 x prune_opa every this many steps")
    grow_grad2d: float = option(0.0002, "clone/split Gaussians whose mean screen-space gradient exceeds this")
    grow_scale3d: float = option(0.01, "clone (below) or split (above) at this max scale x scene scale")
    prune_opa: float = option(0.005, "remove Gaussians less opaque than this")
    prune_scale3d: float = option(0.1, "after the first reset, remove Gaussians larger than this x scene scale")
    max_gaussians: int = option(0, "cap on the number of Gaussians growth may reach (0: none)")
    scene_scale: float | None = option(None, "scene scale for the means' lr and size thresholds (default 1.1 x bounds radius)")


def training_target(view: View, background: Tensor) -> Tensor:
    """The image ``view`` should render to over ``background`` (3,): (H, W, 3) float32.

    Alpha views are re-composited onto ``background`` (the image's current background is the
    median colour of its fully transparent pixels); mask-only views get ``background`` outside
    the mask; other views are returned unchanged.
    """
    image = view.image.float()
    bg = background.to(image)
    if view.has("alpha"):
        a = view.alpha.float()[..., None]
        clear = image[a[..., 0] < 1.0 / 255.0]
        current = clear.median(dim=0).values if len(clear) else bg
        return (image + (bg - current) * (1.0 - a)).clamp(0.0, 1.0)
    if view.has("object_mask"):
        return torch.where(view.object_mask.to(torch.bool)[..., None], image, bg)
    return image


class GaussianTrainer(Refiner):
    """Optimise 3D Gaussians against the training views (3DGS), with densification."""

    name = "3dgs-train"
    description = "3DGS optimisation: L1 + SSIM, Adam, progressive SH, clone/split/prune"
    Config = GaussianTrainConfig
    requires = frozenset({"gaussians-3d"})

    # ----------------------------------------------------------------------------------- setup

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        cfg = self.config
        if not isinstance(data, Scene):
            raise InputError("3dgs-train needs posed views (a Scene), not a video")
        missing = [n for n in PARAMETER_NAMES if not isinstance(getattr(rep, n, None), nn.Parameter)]
        if missing:
            raise CombinationError(
                f"3dgs-train needs a representation in the 3dgs parameter layout; '{rep.name}' lacks "
                f"{', '.join(missing)} (use --repr 3dgs, or another refiner)"
            )
        self.views = data.train_views or list(data.views)
        if not self.views:
            raise InputError("3dgs-train needs at least one training view", data.source)
        if len(cfg.background) != 3:
            raise InputError(f"3dgs-train.background must have 3 values (RGB), got {len(cfg.background)}")
        self.rep, self.ctx, self.device = rep, ctx, ctx.device
        self.background = torch.tensor([float(c) for c in cfg.background], dtype=torch.float32, device=self.device)
        if hasattr(rep, "set_background"):  # later renders (evaluation, `recon render`) use the same colour
            rep.set_background(self.background)
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        self.scene_scale = float(cfg.scene_scale) if cfg.scene_scale else 1.1 * float(data.bounds.radius)
        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opa,
            grow_grad2d=cfg.grow_grad2d,
            grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d,
            refine_start=cfg.refine_start,
            refine_stop=cfg.refine_stop,
            refine_every=cfg.refine_every,
            reset_every=cfg.reset_every,
            max_gaussians=cfg.max_gaussians,
        )
        stored = _stored_sh_degree(rep)
        self.max_sh_degree = stored if cfg.sh_degree is None else max(0, min(int(cfg.sh_degree), stored))
        self.optimizers = self.build_optimizers()
        self.strategy_state = self.strategy.initialize_state(self.scene_scale, rep.means.shape[0], self.device)
        self.order = torch.zeros(0, dtype=torch.int64)
        self.position = 0
        self._targets: dict[int, Tensor] = {}
        self.last_loss = float("nan")

    @property
    def total_steps(self) -> int:
        return int(self.config.steps)

    def _params(self) -> dict[str, nn.Parameter]:
        return {n: getattr(self.rep, n) for n in PARAMETER_NAMES}

    def _in_sync(self) -> bool:
        return all(self.optimizers[n].param_groups[0]["params"][0] is p for n, p in self._params().items())

    # ---------------------------------------------------------------- public optimisation API

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Fresh Adam optimizers (one per 3dgs parameter, gsplat's learning rates) on the
        representation's current parameters; the means' lr is the undecayed one."""
        cfg = self.config
        lrs = {
            "means": cfg.lr_means * self.scene_scale,
            "quats": cfg.lr_quats,
            "scales": cfg.lr_scales,
            "opacities": cfg.lr_opacities,
            "sh0": cfg.lr_sh0,
            "shN": cfg.lr_shN,
        }
        return {n: torch.optim.Adam([p], lr=lrs[n], eps=1e-15) for n, p in self._params().items()}

    def sync_optimizers(self) -> bool:
        """Rebuild ``optimizers`` and the strategy state when the representation's parameters were
        replaced from outside (e.g. a checkpoint was loaded); True when they were rebuilt."""
        if self._in_sync():
            return False
        self.optimizers = self.build_optimizers()
        self.strategy_state = self.strategy.initialize_state(self.scene_scale, self.rep.means.shape[0], self.device)
        return True

    def set_means_lr(self, fraction: float) -> float:
        """Set the means' lr to its value at ``fraction`` (0: first step, 1: last) of the exponential
        decay, ``lr_means x scene scale x lr_means_final ** fraction``; returns it."""
        cfg = self.config
        lr = cfg.lr_means * self.scene_scale * cfg.lr_means_final ** float(fraction)
        self.optimizers["means"].param_groups[0]["lr"] = lr
        return lr

    def schedule(self, step: int) -> None:
        """Per-step schedules: the means' lr decay over ``steps`` and the SH degree in use."""
        self.set_means_lr(step / max(self.total_steps, 1))
        if hasattr(self.rep, "active_sh_degree"):
            self.rep.active_sh_degree = min(step // max(int(self.config.sh_degree_interval), 1), self.max_sh_degree)

    def optimize(self, loss: Tensor, step: int, camera: Cameras) -> bool:
        """Backpropagate ``loss`` (of a render through ``camera``, one camera), take one Adam step
        and, when ``densify`` is on, one densification step; True when the Gaussian set changed
        (the representation then holds new parameters, and ``optimizers`` follow them)."""
        cfg, rep = self.config, self.rep
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = None
        if cfg.densify and step < cfg.refine_stop and rep.means.grad is not None:
            h, w = camera.size(0)
            grads = screen_gradients(rep.means.detach(), rep.means.grad, rep.scales.detach(), camera.K[0], camera.c2w[0], w, h)
        for opt in self.optimizers.values():
            opt.step()
        if grads is None:
            return False
        params = self._params()
        report = self.strategy.step_post_backward(params, self.optimizers, self.strategy_state, step, grads, self.generator)
        if not any(report.values()):
            return False
        for name, p in params.items():
            setattr(rep, name, p)
        return True

    # ------------------------------------------------------------------------------------ step

    def _next_view(self) -> int:
        if self.position >= len(self.order):
            self.order = torch.randperm(len(self.views), generator=self.generator)
            self.position = 0
        index = int(self.order[self.position])
        self.position += 1
        return index

    def _target(self, index: int) -> Tensor:
        """The view's target image, cached while the cache stays under ``_CACHE_BYTES``."""
        cached = self._targets.get(index)
        if cached is not None:
            return cached
        target = training_target(self.views[index], self.background.cpu()).to(self.device)
        if sum(t.numel() * t.element_size() for t in self._targets.values()) + target.numel() * target.element_size() <= _CACHE_BYTES:
            self._targets[index] = target
        return target

    def step(self, step: int) -> dict[str, float]:
        cfg = self.config
        self.sync_optimizers()
        self.schedule(step)
        index = self._next_view()
        view = self.views[index]
        camera = view.camera.to(self.device)
        target = self._target(index)
        pred = self.ctx.renderer.render(self.rep, camera, background=self.background).rgb[0]
        l1 = (pred - target).abs().mean()
        if min(view.height, view.width) >= 11:  # SSIM's 11x11 window needs at least that many pixels
            loss = (1.0 - cfg.ssim_weight) * l1 + cfg.ssim_weight * (1.0 - ssim(pred, target))
        else:
            loss = l1
        self.optimize(loss, step, camera)
        logs = {"loss": float(loss.detach()), "l1": float(l1.detach())}
        with torch.no_grad():
            mse = ((pred.detach() - target) ** 2).mean().clamp_min(1e-12)
        logs["psnr"] = float(-10.0 * torch.log10(mse))
        logs["gaussians"] = float(self.rep.means.shape[0])
        self.last_loss = logs["loss"]
        return logs

    # --------------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """Optimizer moments, strategy state, view order and the generator (deep copies)."""
        return copy.deepcopy(
            {
                "optimizers": {n: opt.state_dict() for n, opt in self.optimizers.items()},
                "strategy": self.strategy_state,
                "generator": self.generator.get_state(),
                "order": self.order,
                "position": self.position,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the optimizers on the representation's current (restored) parameters, then load."""
        self.optimizers = self.build_optimizers()
        n = self.rep.means.shape[0]
        for name, opt in self.optimizers.items():
            saved = state["optimizers"][name]
            for entry in saved.get("state", {}).values():
                for key, value in entry.items():
                    if key != "step" and isinstance(value, Tensor) and value.shape[:1] != (n,):
                        raise InputError(f"3dgs-train checkpoint holds {value.shape[0]} Gaussians for '{name}', the representation {n}")
            opt.load_state_dict(saved)
        self.strategy_state = {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in state["strategy"].items()}
        self.generator.set_state(state["generator"].cpu().to(torch.uint8))
        self.order = state["order"].to(torch.int64).cpu()
        self.position = int(state["position"])

    def finish(self) -> dict[str, Any]:
        if hasattr(self.rep, "active_sh_degree"):
            self.rep.active_sh_degree = self.max_sh_degree
        return {"gaussians": int(self.rep.means.shape[0]), "final_loss": self.last_loss}


def _stored_sh_degree(rep: Representation) -> int:
    """SH degree the representation's ``shN`` [N, K-1, 3] can hold."""
    k = rep.shN.shape[1] + 1
    degree = 0
    while (degree + 2) ** 2 <= k:
        degree += 1
    return degree
