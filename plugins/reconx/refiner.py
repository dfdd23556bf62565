"""The ``confidence`` refiner: ReconX's confidence-aware 3D Gaussian fitting (Liu et al. 2024, sec. 3.4).

Loss of one view i (one view per step, as ``3dgs-train``)::

    L_i = mean_p C_i(p) λ_rgb |I_i(p) − Î_i(p)|₁            (L1 averaged over the 3 channels)
        + mean_q C_i(q) λ_ssim (1 − SSIM_i(q))             (q: centres of the 11x11 SSIM windows
                                                            fully inside the image, SSIM averaged
                                                            over the channels)
        + mean_p C_i(p) λ_lpips LPIPS_i(p)                (LPIPS spatial map, upsampled to H x W)

with defaults λ = 0.8 / 0.2 / 0.5, 1000 steps and no densification (the paper's setting). The
means are divided by the pixel count (not by Σ C), so a pixel or a view of zero confidence gives
exactly zero gradient. The LPIPS term needs torchvision's backbone weights (read, never
downloaded, by :mod:`recon_plugins.metrics.perceptual`); when they are absent the term is
disabled, a warning names the missing file, and ``finish()`` reports ``lpips: "unavailable: …"``.

Views: the representation's ``input_views`` (the ``reconx`` sparse selection) when it has them,
else the scene's training views; plus, with a ``generator`` (default ``render-fix``), pseudo-views
generated once ``generate_at`` of the steps are done (ReconX: generated frames join the inputs),
and again every ``regenerate_every`` steps when set (from the current reconstruction).
Confidence maps come from the ``source`` option (:mod:`.confidence`); generated views carry their
own map, which every source multiplies in.

Optimizers and learning rates are those of ``3dgs-train``: an inner
:class:`~recon_plugins.gaussians.trainer.GaussianTrainer` with ``densify=False`` is set up, and each
step goes through its public optimisation API (``sync_optimizers``, ``schedule``, ``optimize``);
its background handling and training targets are reused.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recon_core.cameras import Cameras
from recon_core.components import Generator, RunContext, Refiner, Representation
from recon_core.config import option
from recon_core.errors import InputError
from recon_core.imageops import ssim_map
from recon_core.scene import Scene, Video, View
from recon_plugins.gaussians.trainer import GaussianTrainConfig, GaussianTrainer, training_target

from .confidence import ConsistencySettings, confidence_maps

__all__ = ["ConfidenceRefiner", "ConfidenceConfig", "LossWeights", "confidence_loss", "spatial_lpips", "selected_views"]


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
    lpips_map: "nn.Module | None" = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Confidence-weighted L1 + (1 − SSIM) + LPIPS of one view (see the module docstring).

    Args:
        pred, target: (H, W, 3) images in [0, 1] (``pred`` differentiable).
        confidence: (H, W) per-pixel confidence C in [0, 1].
        weights: λ_rgb, λ_ssim, λ_lpips.
        lpips_map: a module ``(pred, target) -> (H, W)`` spatial LPIPS, or None (term left out).

    Returns:
        the scalar loss and its weighted terms ``{"l1", "ssim", "lpips"}`` (lpips only when used).
    """
    h, w = pred.shape[:2]
    assert pred.shape == target.shape == (h, w, 3), f"pred {tuple(pred.shape)} / target {tuple(target.shape)}"
    assert confidence.shape == (h, w), f"confidence {tuple(confidence.shape)}, expected {(h, w)}"
    c = confidence.to(pred)
    terms: dict[str, Tensor] = {}
    terms["l1"] = weights.rgb * (c * (pred - target).abs().mean(-1)).mean()
    window = min(11, min(h, w) if min(h, w) % 2 else min(h, w) - 1)
    if weights.ssim and window >= 3:
        r = window // 2
        s = ssim_map(pred, target, window)[0].mean(-1)  # (H - 2r, W - 2r)
        terms["ssim"] = weights.ssim * (c[r : h - r, r : w - r] * (1.0 - s)).mean()
    if weights.lpips and lpips_map is not None:
        terms["lpips"] = weights.lpips * (c * lpips_map(pred, target)).mean()
    return sum(terms.values()), terms  # type: ignore[return-value]


class _SpatialLPIPS(nn.Module):
    """(H, W, 3) pred/target in [0, 1] → (H, W) LPIPS map (the lpips network with ``spatial=True``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.net.spatial = True
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        to_batch = lambda x: x.permute(2, 0, 1)[None].float()  # noqa: E731
        return self.net(to_batch(pred), to_batch(target), normalize=True)[0, 0]


def spatial_lpips(net: str, device: torch.device) -> tuple[nn.Module | None, str | None]:
    """The differentiable LPIPS map (built as the ``lpips`` metric builds it), or (None, why not)."""
    try:
        from recon_plugins.metrics.perceptual import LPIPS, LPIPSConfig, build_network
    except ImportError as e:  # the metrics plugin is not installed
        return None, f"the metrics plugin is unavailable ({e})"
    reason = LPIPS(LPIPSConfig(net=net)).unavailable_reason()
    if reason is not None:
        return None, reason
    return _SpatialLPIPS(build_network(net)).to(device), None


def selected_views(rep: Representation, scene: Scene) -> list[View]:
    """The views to fit: ``rep.input_views`` (names, the reconx sparse selection) when set, else the
    training views (else every view)."""
    names = list(getattr(rep, "input_views", None) or [])
    if names:
        by_name = {v.name: v for v in scene.views}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"the representation selects views the scene lacks: {', '.join(missing)}", scene.source)
        return [by_name[n] for n in names]
    return scene.train_views or list(scene.views)


@dataclass
class ConfidenceConfig:
    steps: int = option(1000, "optimisation steps (ReconX: 1000)")
    lambda_rgb: float = option(0.8, "weight of the L1 term")
    lambda_ssim: float = option(0.2, "weight of the 1 - SSIM term")
    lambda_lpips: float = option(0.5, "weight of the LPIPS term (disabled, with a warning, when its weights are absent)")
    lpips_net: str = option("alex", "LPIPS backbone", choices=("alex", "vgg"))
    source: str = option("supplied", "confidence source: supplied (View.confidence, else 1), consistency "
                                     "(x multi-view consistency of the current reconstruction), none")
    confidence_every: int = option(0, "recompute computed confidence maps every N steps (0: once, and after generation)")
    depth_tolerance: float = option(0.03, "consistency: relative depth difference still counted as the same surface")
    color_sigma: float = option(0.1, "consistency: colour difference scale of the photometric agreement")
    unseen: float = option(0.5, "consistency: confidence of pixels no other view sees")
    generator: str = option("render-fix", "generator of extra views along a path between the inputs ('none': inputs only)")
    generated_views: int = option(12, "how many views the generator makes (forwarded as its num_views option)")
    generate_at: float = option(0.3, "generate once this fraction of the steps is done (fit the inputs first)")
    regenerate_every: int = option(0, "generate the views again from the current reconstruction every N steps after "
                                      "the first generation (0: once)")
    background: list[float] = option(help="RGB background behind the Gaussians", factory=lambda: [1.0, 1.0, 1.0])
    sh_degree: int | None = option(None, "highest SH degree to train (default: all the representation stores)")
    sh_degree_interval: int = option(1000, "raise the SH degree in use by one every this many steps")


class ConfidenceRefiner(Refiner):
    """ReconX confidence-aware Gaussian fitting, optionally with generated views."""

    name = "confidence"
    description = "ReconX: confidence-weighted L1 + SSIM + LPIPS fit, no densification, generated views"
    Config = ConfidenceConfig
    requires = frozenset({"gaussians-3d"})

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        cfg = self.config
        if not isinstance(data, Scene):
            raise InputError("the confidence refiner needs posed views (a Scene), not a video")
        if not 0.0 <= cfg.generate_at <= 1.0:
            raise InputError(f"confidence.generate_at must be in [0, 1], got {cfg.generate_at}")
        self.rep, self.scene, self.ctx = rep, data, ctx
        self.inputs = selected_views(rep, data)
        if not self.inputs:
            raise InputError("the confidence refiner needs at least one view", data.source)
        # 3dgs-train's optimizers, learning rates and background handling, without densification
        self.engine = GaussianTrainer(GaussianTrainConfig(steps=cfg.steps, densify=False, background=list(cfg.background),
                                                          sh_degree=cfg.sh_degree, sh_degree_interval=cfg.sh_degree_interval))
        self.engine.setup(rep, Scene(data.name, self.inputs, data.bounds, data.point_cloud, source=data.source), ctx)
        self.weights = LossWeights(cfg.lambda_rgb, cfg.lambda_ssim, cfg.lambda_lpips)
        self.lpips, self.lpips_reason = (None, None)
        if cfg.lambda_lpips > 0:
            self.lpips, self.lpips_reason = spatial_lpips(cfg.lpips_net, ctx.device)
            if self.lpips is None:
                message = f"confidence: LPIPS term disabled (λ_lpips={cfg.lambda_lpips} not applied): {self.lpips_reason}"
                warnings.warn(message, stacklevel=2)
                ctx.log(message)
        self.consistency = ConsistencySettings(cfg.depth_tolerance, cfg.color_sigma, cfg.unseen)
        self.generated: list[View] = []
        self.generate_step = int(round(cfg.generate_at * self.total_steps)) if cfg.generator != "none" else None
        self._refresh_views()
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        self.order = torch.zeros(0, dtype=torch.int64)
        self.position = 0
        self.last_loss = float("nan")

    @property
    def total_steps(self) -> int:
        return int(self.config.steps)

    # ------------------------------------------------------------------------------- views

    def _refresh_views(self) -> None:
        """Views = inputs + generated; targets over the background; confidence maps from the source."""
        self.views = self.inputs + self.generated
        bg = self.engine.background.cpu()
        self.targets = [training_target(v, bg) for v in self.views]
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
        self.order = torch.zeros(0, dtype=torch.int64)  # a new epoch over inputs + generated views

    def _next_view(self) -> int:
        if self.position >= len(self.order):
            self.order = torch.randperm(len(self.views), generator=self.generator)
            self.position = 0
        index = int(self.order[self.position])
        self.position += 1
        return index

    # -------------------------------------------------------------------------------- step

    def step(self, step: int) -> dict[str, float]:
        cfg, rep, engine = self.config, self.rep, self.engine
        if self.generate_step is not None and step >= self.generate_step and (not self.generated or (
                cfg.regenerate_every > 0 and step > self.generate_step and (step - self.generate_step) % cfg.regenerate_every == 0)):
            self._generate()
        elif cfg.confidence_every > 0 and step > 0 and step % cfg.confidence_every == 0 and cfg.source == "consistency":
            self._update_confidence()
        engine.sync_optimizers()  # parameters replaced (a checkpoint was loaded): fresh optimizers
        engine.schedule(step)  # 3dgs-train's means lr decay and SH degree

        index = self._next_view()
        view = self.views[index]
        camera = view.camera.to(self.ctx.device)
        out = self.ctx.renderer.render(rep, camera, background=engine.background)
        pred, target = out.rgb[0], self.targets[index]
        loss, terms = confidence_loss(pred, target, self.confidences[index], self.weights, self.lpips)
        engine.optimize(loss, step, camera)  # densify=False: backward + Adam only
        self.last_loss = float(loss.detach())
        with torch.no_grad():
            mse = ((pred.detach() - target) ** 2).mean().clamp_min(1e-12)
        logs = {"loss": self.last_loss, "psnr": float(-10.0 * torch.log10(mse)), "views": float(len(self.views))}
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        return logs

    # ------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Optimizer moments, view order, the private generator and the generated views."""
        engine = self.engine
        return copy.deepcopy({
            "optimizers": {n: opt.state_dict() for n, opt in engine.optimizers.items()},
            "generator": self.generator.get_state(),
            "order": self.order,
            "position": self.position,
            "generated": [
                {"name": v.name, "K": v.camera.K[0], "c2w": v.camera.c2w[0], "width": v.width, "height": v.height,
                 "image": v.image, "confidence": v.confidence}
                for v in self.generated
            ],
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        engine = self.engine
        engine.optimizers = engine.build_optimizers()
        for name, opt in engine.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.generator.set_state(state["generator"].cpu().to(torch.uint8))
        self.order = state["order"].to(torch.int64).cpu()
        self.position = int(state["position"])
        self.generated = [
            View(g["name"], Cameras.create(g["K"], g["c2w"][None], int(g["width"]), int(g["height"])), g["image"],
                 "train", confidence=g["confidence"])
            for g in state["generated"]
        ]
        if self.generated:
            self._refresh_views()

    def finish(self) -> dict[str, Any]:
        if hasattr(self.rep, "active_sh_degree"):
            self.rep.active_sh_degree = self.engine.max_sh_degree
        return {
            "final_loss": self.last_loss,
            "input_views": [v.name for v in self.inputs],
            "generated_views": len(self.generated),
            "confidence_source": self.config.source,
            "lpips": "used" if self.lpips is not None else (f"unavailable: {self.lpips_reason}" if self.lpips_reason else "off"),
            "gaussians": int(self.rep.means.shape[0]),
            "completed_points": int(getattr(self.rep, "completed_points", 0)),
        }
