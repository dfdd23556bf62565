"""The ``confidence`` refiner: ReconX's confidence-aware 3D Gaussian fitting (Liu et al. 2024, sec. 3.4).

Loss of one view i (one view per step, as ``3dgs-train``)::

    L_i = mean_p C_i(p) λ_rgb |I_i(p) − Î_i(p)|₁            (L1 averaged over the 3 channels)
        + mean_q C_i(q) λ_ssim (1 − SSIM_i(q))             (q: centres of the 11x11 SSIM windows
                                                            fully inside the image, SSIM averaged
                                                            over the channels)
        + mean_p C_i(p) λ_lpips LPIPS_i(p)                (LPIPS spatial map, upsampled to H x W)

with defaults λ = 0.8 / 0.2 / 0.5, 1000 steps and no densification (the paper's setting). The
means are divided by the pixel count (not by Σ C), so a pixel or a view of zero confidence gives
exactly zero gradient. The LPIPS term is the run's ``lpips`` evaluator's differentiable map
(:meth:`recon_core.ImageEvaluator.loss_map`; ``--set lpips.net=vgg`` picks the backbone); when
its weights are absent the term is disabled, a warning names the missing file, and ``finish()``
reports ``lpips: "unavailable: …"``. SSIM follows :func:`recon_core.imageops.photometric_loss`:
11x11 windows, left out on images smaller than that.

Views: the representation's ``input_views`` (the ``reconx`` sparse selection) when it has them,
else the scene's training views; plus, with a ``generator`` (default ``render-fix``), pseudo-views
generated once ``generate_at`` of the steps are done (ReconX: generated frames join the inputs),
and again every ``regenerate_every`` steps when set (from the current reconstruction).
Confidence maps come from the ``source`` option (:mod:`.confidence`); generated views carry their
own map, which every source multiplies in.

Optimisation is recon's Gaussian engine (:class:`recon_core.optim.GaussianOptimizer`, the one
``3dgs-train`` uses: gsplat's learning rates and schedules), with densification off by default
(``--set confidence.densify=true`` turns it on). Targets are the views on the run's
background (:meth:`recon_core.View.image_on`).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from recon_core import (
    Cameras, CombinationError, Generator, GaussianRepresentation, ImageEvaluator, InputError, Refiner, Representation,
    RunContext, Scene, Video, View, option,
)
from recon_core.imageops import psnr, ssim_map
from recon_core.optim import EpochOrder, GaussianOptimizer, OptimConfig, default_scene_scale

from .confidence import ConsistencySettings, confidence_maps
from .representation import ReconXSplat

__all__ = ["ConfidenceRefiner", "ConfidenceConfig", "LossWeights", "confidence_loss", "lpips_map", "selected_views"]


@dataclass(frozen=True)
class LossWeights:
    """λ of the three terms of the confidence-aware loss (ReconX: 0.8 / 0.2 / 0.5)."""

    rgb: float = 0.8
    ssim: float = 0.2
    lpips: float = 0.5


def confidence_loss(
    pred: Tensor,
    target: Tensor,
    confidence: Tensor,
    weights: LossWeights = LossWeights(),
    lpips_map: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Confidence-weighted L1 + (1 − SSIM) + LPIPS of one view (see the module docstring).

    Args:
        pred, target: (H, W, 3) images in [0, 1] (``pred`` differentiable).
        confidence: (H, W) per-pixel confidence C in [0, 1].
        weights: λ_rgb, λ_ssim, λ_lpips.
        lpips_map: ``(pred, target) -> (H, W)`` differentiable LPIPS map, or None (term left out).

    Returns:
        the scalar loss and its weighted terms ``{"l1", "ssim", "lpips"}`` (lpips only when used).
    """
    h, w = pred.shape[:2]
    assert pred.shape == target.shape == (h, w, 3), f"pred {tuple(pred.shape)} / target {tuple(target.shape)}"
    assert confidence.shape == (h, w), f"confidence {tuple(confidence.shape)}, expected {(h, w)}"
    c = confidence.to(pred)
    terms: dict[str, Tensor] = {}
    terms["l1"] = weights.rgb * (c * (pred - target).abs().mean(-1)).mean()
    if weights.ssim and min(h, w) >= 11:  # the rule of imageops.photometric_loss
        r = 5
        s = ssim_map(pred, target, 11)[0].mean(-1)  # (H - 2r, W - 2r)
        terms["ssim"] = weights.ssim * (c[r : h - r, r : w - r] * (1.0 - s)).mean()
    if weights.lpips and lpips_map is not None:
        terms["lpips"] = weights.lpips * (c * lpips_map(pred, target)).mean()
    return sum(terms.values()), terms  # type: ignore[return-value]


def lpips_map(ctx: RunContext) -> tuple[Callable[[Tensor, Tensor], Tensor] | None, str | None]:
    """The run's ``lpips`` evaluator's differentiable (H, W) map, or (None, why not)."""
    if ctx.create is None:
        return None, "the run context cannot create the lpips evaluator"
    try:
        metric = ctx.create("evaluator", "lpips")
    except Exception as e:  # noqa: BLE001 - not installed, or failed to load: the term is optional
        return None, f"the lpips evaluator is unavailable ({e})"
    if not isinstance(metric, ImageEvaluator):
        return None, "the installed 'lpips' is not an image evaluator"
    reason = metric.unavailable_reason()
    if reason is not None:
        return None, reason
    return metric.loss_map, None


def selected_views(rep: Representation, scene: Scene) -> list[View]:
    """The views to fit: the sparse selection of a ``reconx`` representation (this plugin's own),
    else the training views (else every view) — any other Gaussian representation works too."""
    names = list(rep.input_views) if isinstance(rep, ReconXSplat) else []
    if names:
        by_name = {v.name: v for v in scene.views}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"the representation selects views the scene lacks: {', '.join(missing)}", scene.source)
        return [by_name[n] for n in names]
    return scene.train_views or list(scene.views)


@dataclass
class ConfidenceConfig(OptimConfig):
    """The engine's options (3dgs-train's learning rates and schedules; no densification, as in
    ReconX) plus the confidence-aware fit's."""

    densify: bool = option(False, "add/remove Gaussians with the strategy (ReconX: no)")
    steps: int = option(1000, "optimisation steps (ReconX: 1000)", min=1)
    lambda_rgb: float = option(0.8, "weight of the L1 term", min=0)
    lambda_ssim: float = option(0.2, "weight of the 1 - SSIM term", min=0)
    lambda_lpips: float = option(0.5, "weight of the LPIPS term (the lpips evaluator's map, --set lpips.net=vgg for "
                                      "VGG; disabled, with a warning, when its weights are absent)", min=0)
    source: str = option("supplied", "confidence source: supplied (View.confidence, else 1), consistency "
                                     "(x multi-view consistency of the current reconstruction), none")
    confidence_every: int = option(0, "recompute computed confidence maps every N steps (0: once, and after generation)", min=0)
    depth_tolerance: float = option(0.03, "consistency: relative depth difference still counted as the same surface", min=0)
    color_sigma: float = option(0.1, "consistency: colour difference scale of the photometric agreement", min=1e-12)
    unseen: float = option(0.5, "consistency: confidence of pixels no other view sees", min=0, max=1)
    generator: str = option("render-fix", "generator of extra views along a path between the inputs ('none': inputs only)",
                            component="generator")
    generated_views: int = option(12, "how many views the generator makes (forwarded as its num_views option)", min=0)
    generate_at: float = option(0.3, "generate once this fraction of the steps is done (fit the inputs first)", min=0, max=1)
    regenerate_every: int = option(0, "generate the views again from the current reconstruction every N steps after "
                                      "the first generation (0: once)", min=0)


class ConfidenceRefiner(Refiner):
    """ReconX confidence-aware Gaussian fitting, optionally with generated views."""

    name = "confidence"
    description = "ReconX: confidence-weighted L1 + SSIM + LPIPS fit, no densification, generated views"
    Config = ConfidenceConfig
    requires = frozenset({"gaussians-3d"})

    @classmethod
    def uses(cls, config: Any) -> list[tuple[str, str]]:
        used = super().uses(config)
        if config.lambda_lpips > 0:
            used.append(("evaluator", "lpips"))
        return used

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        cfg = self.config
        if not isinstance(data, Scene):
            raise InputError("the confidence refiner needs posed views (a Scene), not a video")
        if not isinstance(rep, GaussianRepresentation):
            raise CombinationError(f"the confidence refiner needs a Gaussian representation; '{rep.name}' is not one")
        if not 0.0 <= cfg.generate_at <= 1.0:
            raise InputError(f"confidence.generate_at must be in [0, 1], got {cfg.generate_at}")
        self.rep, self.scene, self.ctx = rep, data, ctx
        self.inputs = selected_views(rep, data)
        if not self.inputs:
            raise InputError("the confidence refiner needs at least one view", data.source)
        self.background = ctx.background_color()
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        self.engine = GaussianOptimizer(rep, cfg, scene_scale=default_scene_scale(data.bounds.radius),
                                        total_steps=self.total_steps, generator=self.generator, views=len(self.inputs),
                                        pixels=sum(v.width * v.height for v in self.inputs))
        self.weights = LossWeights(cfg.lambda_rgb, cfg.lambda_ssim, cfg.lambda_lpips)
        self.lpips, self.lpips_reason = (None, None)
        if cfg.lambda_lpips > 0:
            self.lpips, self.lpips_reason = lpips_map(ctx)
            if self.lpips is None:
                message = f"confidence: LPIPS term disabled (λ_lpips={cfg.lambda_lpips} not applied): {self.lpips_reason}"
                warnings.warn(message, stacklevel=2)
                ctx.log(message)
        self.consistency = ConsistencySettings(cfg.depth_tolerance, cfg.color_sigma, cfg.unseen)
        self.generated: list[View] = []
        self.generate_step = int(round(cfg.generate_at * self.total_steps)) if cfg.generator != "none" else None
        self._refresh_views()
        self.last_loss = float("nan")

    @property
    def total_steps(self) -> int:
        return int(self.config.steps)

    # ------------------------------------------------------------------------------- views

    def _refresh_views(self) -> None:
        """Views = inputs + generated; targets over the background; confidence maps from the source."""
        self.views = self.inputs + self.generated
        self.order = EpochOrder(len(self.views))  # a new epoch over inputs + generated views
        bg = self.background.cpu()
        self.targets = [v.image_on(bg) for v in self.views]
        self._update_confidence()

    def _update_confidence(self) -> None:
        with torch.no_grad():
            self.confidences = [c.to(self.ctx.device) for c in confidence_maps(
                self.config.source, self.views, self.targets, self.rep, self.ctx.renderer, self.consistency)]
        self.targets = [t.to(self.ctx.device) for t in self.targets]

    def _generate(self) -> None:
        """Ask the generator for pseudo-views of the current reconstruction; they join the inputs."""
        if self.ctx.create is None:
            raise InputError("the confidence refiner's generator needs a run context that can create components")
        gen = self.ctx.create("generator", self.config.generator)
        if not isinstance(gen, Generator):
            raise InputError(f"'{self.config.generator}' is not a generator")
        if any(f.name == "num_views" for f in dataclasses.fields(gen.config)):
            gen.config = dataclasses.replace(gen.config, num_views=int(self.config.generated_views))
        scene = Scene(self.scene.name, list(self.inputs), self.scene.bounds, self.scene.point_cloud, source=self.scene.source)
        with torch.no_grad():
            views = gen.generate(self.rep, scene, self.ctx)
        for v in views:
            if v.split != "train" or not v.has("confidence"):
                raise InputError(f"generator {gen.name} returned view {v.name} without a confidence map or not in the train split")
        self.generated = list(views)
        self.ctx.log(f"confidence: {gen.name} generated {len(views)} views")
        self._refresh_views()

    # -------------------------------------------------------------------------------- step

    def step(self, step: int) -> dict[str, float]:
        cfg, rep, engine = self.config, self.rep, self.engine
        progressed = self.generate_step is not None and (step >= self.generate_step or self.ctx.budget_fraction() >= cfg.generate_at)
        if progressed and (not self.generated or (
                cfg.regenerate_every > 0 and step > self.generate_step and (step - self.generate_step) % cfg.regenerate_every == 0)):
            self._generate()
        elif cfg.confidence_every > 0 and step > 0 and step % cfg.confidence_every == 0 and cfg.source == "consistency":
            self._update_confidence()
        engine.sync()  # splats replaced (a checkpoint was loaded): fresh optimizers
        at = engine.schedule(step, fraction=self.ctx.budget_fraction())  # lr decay and SH degree (ahead of step when a budget runs short)

        index = self.order.next(self.generator)
        view = self.views[index]
        camera = view.camera.to(self.ctx.device)
        out = self.ctx.renderer.render(rep, camera, background=self.background)
        engine.before_backward(at, out.info)
        pred, target = out.rgb[0], self.targets[index]
        loss, terms = confidence_loss(pred, target, self.confidences[index], self.weights, self.lpips)
        engine.step(loss + engine.regularisation(), at, out.info, camera)
        self.last_loss = float(loss.detach())
        logs = {"loss": self.last_loss, "psnr": float(psnr(pred.detach(), target)), "views": float(len(self.views))}
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        return logs

    # ------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """The engine's state (optimizers, strategy, generator), view order and the generated views."""
        return copy.deepcopy({
            "engine": self.engine.state_dict(),
            "order": self.order.state_dict(),
            "generated": [
                {"name": v.name, "K": v.camera.K[0], "c2w": v.camera.c2w[0], "width": v.width, "height": v.height,
                 "image": v.image, "confidence": v.confidence}
                for v in self.generated
            ],
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state["engine"])
        self.generated = [
            View(g["name"], Cameras.create(g["K"], g["c2w"][None], int(g["width"]), int(g["height"])), g["image"],
                 "train", confidence=g["confidence"])
            for g in state["generated"]
        ]
        if self.generated:
            self._refresh_views()
        self.order.load_state_dict(state["order"])

    def finish(self) -> dict[str, Any]:
        self.engine.finish()
        return {
            "final_loss": self.last_loss,
            "input_views": [v.name for v in self.inputs],
            "generated_views": len(self.generated),
            "confidence_source": self.config.source,
            "lpips": "used" if self.lpips is not None else (f"unavailable: {self.lpips_reason}" if self.lpips_reason else "off"),
            "gaussians": len(self.rep),
            "completed_points": self.rep.completed_points if isinstance(self.rep, ReconXSplat) else 0,
        }
