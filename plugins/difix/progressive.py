"""The ``difix3d+`` refiner: progressive 3D update with a fixer (Difix3D+, CVPR 2025, gsplat version).

Two schedules (``schedule``):

* ``after`` (default): a post-training loop. Run it after ``3dgs-train``; it fixes first at its
  step 0 and then every ``fix_every`` steps (default steps / 3), densification off, the means'
  learning rate held at the final value of a 3dgs-train run. Cheap on CPU: a few hundred steps
  after a short training run show the mechanics.
* ``paper``: the original's (nv-tlabs/Difix3D ``examples/gsplat/simple_trainer_difix3d.py``).
  ``difix3d+`` *is* the training run: from the initialised representation it trains with
  3dgs-train's schedules (means lr decay over ``steps``, SH growth, densification on) and fixes
  interleaved, at the original's ``fix_steps`` of a 60 000-step run (3000, 6000, 8000, …, 60 000)
  scaled by ``steps / 60000 × steps_scaler``; the engine's step counts (SH interval, refine
  start/stop/every, opacity reset) are scaled by the same factor, as the original's
  ``--steps_scaler`` scales them. A fix at the run's last step or later is dropped: in the
  original the fix after the last step trains nothing. The original does not scale its
  ``fix_steps`` with ``--steps_scaler``; we do, so that a short run still fixes several times (at
  ``steps=60000`` both agree).

The round, in either schedule::

    at each fix step:
        novel = shift_poses(current, targets, shift_distance)   # camera_path.py
        renders, alpha = renderer(novel)
        fixed = ctx.fixer.fix(renders, nearest training image per novel camera, views=novel views)
        pseudo-views = (novel cameras, fixed images, masks alpha > alpha_threshold)   # replace the last set
        current = novel
    each step: a pseudo-view with probability novel_prob (once there are any), else a training view;
        loss = weight · ((1 - w) L1 + w (1 - SSIM)), weight novel_weight (pred and target masked)
        or real_weight; Adam on the 3dgs parameters (+ optional densification).

``targets`` are the cameras of the scene's evaluated views (its test split): their *poses* only,
never their images (as in nv-tlabs/Difix3D ``examples/gsplat/simple_trainer_difix3d.py``, which
shifts toward the validation poses). ``current`` starts at the training cameras. Only the most
recent set of pseudo-views is trained on, as in that script.

Optimisation is recon's Gaussian engine (:class:`recon_core.optim.GaussianOptimizer`, the one
``3dgs-train`` uses; its options are this refiner's, densification off by default with
``schedule=after``, on with ``paper``); this refiner picks the view, weights/masks the loss
(:func:`recon_core.imageops.photometric_loss`) and hands it to the engine. Renders and targets
use the run's background. With ``schedule=after`` the means' learning rate stays at the engine's
final value (``lr_means x scene scale x lr_means_final``), i.e. it continues where a full
3dgs-train schedule ends; with ``paper`` it decays over the run as in 3dgs-train. ``state_dict`` holds everything needed to resume
bit-identically: the engine's state, this refiner's generator and view orders, the current
novel poses and the pseudo-views themselves (images and masks).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from recon_core import (
    Cameras, CombinationError, GaussianRepresentation, InputError, OptimConfig, Refiner, Representation, RunContext,
    Scene, Video, View, option,
)
from recon_core.imageops import photometric_loss, psnr
from recon_core.optim import EpochOrder, GaussianOptimizer, TargetCache, default_scene_scale

from .camera_path import nearest_assignments, shift_poses

__all__ = ["Difix3DPlus", "Difix3DPlusConfig", "PseudoViews", "weighted_photometric_loss", "SCHEDULES",
           "PAPER_FIX_STEPS", "PAPER_STEPS", "fix_schedule"]

SCHEDULES = ("after", "paper")
PAPER_STEPS = 60_000
"""Length of the original's run (``simple_trainer_difix3d.py`` ``max_steps``)."""
PAPER_FIX_STEPS = (3_000, *range(6_000, PAPER_STEPS + 1, 2_000))
"""The original's ``fix_steps``: 3000, then 6000 to 60 000 every 2000."""


def fix_schedule(schedule: str, steps: int, *, fix_every: int | None = None, fix_steps: list[int] | None = None,
                 steps_scaler: float = 1.0) -> list[int]:
    """The steps (0-based, each before that step's update) at which the loop renders, fixes and
    replaces its pseudo-views.

    ``after``: 0, fix_every, 2 fix_every, … (fix_every default steps // 3). ``paper``: each of
    ``fix_steps`` (default :data:`PAPER_FIX_STEPS`, written for a 60 000-step run) times
    ``steps / 60000 x steps_scaler``, below ``steps``. A fix at original step s runs after
    its update s - 1, i.e. before our step s.
    """
    steps = int(steps)
    if schedule == "after":
        every = int(fix_every) if fix_every is not None else max(1, steps // 3)
        return list(range(0, steps, max(1, every)))
    if schedule == "paper":
        factor = steps / PAPER_STEPS * float(steps_scaler)
        written = PAPER_FIX_STEPS if fix_steps is None else tuple(int(s) for s in fix_steps)
        return sorted({int(s * factor) for s in written if 0 <= int(s * factor) < steps})
    raise ValueError(f"schedule must be one of {SCHEDULES}, got '{schedule}'")


@dataclass
class Difix3DPlusConfig(OptimConfig):
    """The engine's options (3dgs-train's; no densification by default) plus the progressive loop's."""

    schedule: str = option("after", "after: a loop after 3dgs-train (fixes from step 0, no densification, final lr); "
                                    "paper: the original's, difix3d+ trains from the initialisation with densification "
                                    "and fixes at fix_steps (see docs/benchmarks.md)", choices=SCHEDULES)
    densify: bool | None = option(None, "add/remove Gaussians with the strategy (default: off with schedule=after, on "
                                        "with paper)")
    steps: int = option(6000, "optimisation steps of the progressive stage", min=1)
    fix_every: int | None = option(None, "schedule=after: render, fix and distil new novel views every this many steps, "
                                         "first at step 0 (default steps / 3: three rounds)", min=1)
    fix_steps: list[int] | None = option(None, "schedule=paper: fix steps of a 60000-step run, scaled by steps / 60000 "
                                               "x steps_scaler (default the original's 3000, 6000, 8000, ..., 60000)", min=0)
    shift_distance: float = option(0.5, "scene units each novel camera moves from the nearest current camera toward "
                                        "its target per round (rotation slerped by the same fraction)", min=0)
    novel_prob: float = option(0.3, "probability that a step trains on a pseudo-view once there are some", min=0, max=1)
    novel_weight: float = option(0.3, "loss weight of pseudo-views", min=0)
    real_weight: float = option(1.5, "loss weight of training views", min=0)
    alpha_threshold: float = option(0.5, "pseudo-view pixels count where the render's alpha exceeds this", min=0, max=1)
    fix_batch: int = option(8, "novel views rendered and fixed per call", min=1)
    ssim_weight: float = option(0.2, "loss = weight x ((1 - w) L1 + w (1 - SSIM))", min=0, max=1)


@dataclass
class PseudoViews:
    """Fixed novel views distilled into the representation.

    c2w [M, 4, 4], K [M, 3, 3] float32; width/height [M] int64; images: M tensors (H, W, 3) in
    [0, 1]; masks: M bool tensors (H, W), True where the render was opaque enough.
    """

    c2w: Tensor
    K: Tensor
    width: Tensor
    height: Tensor
    images: list[Tensor]
    masks: list[Tensor]

    def __len__(self) -> int:
        return len(self.images)

    def camera(self, i: int) -> Cameras:
        return Cameras(K=self.K[i:i + 1], c2w=self.c2w[i:i + 1], width=self.width[i:i + 1], height=self.height[i:i + 1])

    def state_dict(self) -> dict[str, Any]:
        return {"c2w": self.c2w, "K": self.K, "width": self.width, "height": self.height,
                "images": list(self.images), "masks": list(self.masks)}

    @staticmethod
    def from_state(state: dict[str, Any]) -> "PseudoViews":
        return PseudoViews(state["c2w"].float(), state["K"].float(), state["width"].long(), state["height"].long(),
                           [t.float() for t in state["images"]], [t.to(torch.bool) for t in state["masks"]])


def weighted_photometric_loss(pred: Tensor, target: Tensor, ssim_weight: float, weight: float = 1.0,
                              mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``weight x`` :func:`~recon_core.imageops.photometric_loss` of pred/target (H, W, 3), both zeroed
    outside ``mask`` (H, W) when given (the Difix3D recipe); returns (loss, unweighted L1)."""
    if mask is not None:
        m = mask.to(pred.dtype)[..., None]
        pred, target = pred * m, target * m
    return weight * photometric_loss(pred, target, ssim_weight), (pred - target).abs().mean()


class Difix3DPlus(Refiner):
    """Progressive distillation of fixed novel views (Difix3D+) into a 3D Gaussian representation."""

    name = "difix3d+"
    description = "Difix3D+ progressive 3D update: fix renders of cameras moved toward novel views, distil them back"
    Config = Difix3DPlusConfig
    requires = frozenset({"gaussians-3d", "fixer"})  # recon run refuses it without --fixer, before any work

    # ----------------------------------------------------------------------------------- setup

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        cfg = self.config
        if not isinstance(data, Scene):
            raise InputError("difix3d+ needs posed views (a Scene), not a video")
        if ctx.fixer is None:
            raise CombinationError("difix3d+ needs a fixer to correct its novel views: add --fixer difix "
                                   "(or --fixer nearest-gt to test the loop with ground truth)")
        for name in ("steps", "fix_every", "fix_batch"):
            if getattr(cfg, name) is not None and int(getattr(cfg, name)) < 1:
                raise InputError(f"difix3d+.{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.schedule not in SCHEDULES:
            raise InputError(f"difix3d+.schedule must be one of {', '.join(SCHEDULES)}, got '{cfg.schedule}'")
        if cfg.fix_steps is not None and any(int(s) < 0 for s in cfg.fix_steps):
            raise InputError(f"difix3d+.fix_steps must be steps >= 0, got {list(cfg.fix_steps)}")
        if cfg.shift_distance <= 0 or not 0.0 <= cfg.novel_prob <= 1.0:
            raise InputError("difix3d+ needs shift_distance > 0 and 0 <= novel_prob <= 1")
        if not isinstance(rep, GaussianRepresentation):
            raise CombinationError(f"difix3d+ needs a Gaussian representation (recon_core.GaussianRepresentation); '{rep.name}' is not one")
        self.rep, self.ctx, self.device = rep, ctx, ctx.device
        self.background = ctx.background_color()
        self.views = data.train_views or list(data.views)
        if not self.views:
            raise InputError("difix3d+ needs at least one training view", data.source)
        self.paper = cfg.schedule == "paper"
        densify = self.paper if cfg.densify is None else bool(cfg.densify)
        # paper: the engine's step counts scale as the original's --steps_scaler (its run is 60000 steps);
        # a non-numeric steps_scaler (an automatic setting of the engine) counts as 1 here
        user = cfg.steps_scaler
        user = float(user) if isinstance(user, (int, float)) and not isinstance(user, bool) else 1.0
        self.fix_at = frozenset(fix_schedule(cfg.schedule, int(cfg.steps), fix_every=cfg.fix_every,
                                             fix_steps=cfg.fix_steps, steps_scaler=user))
        engine_cfg = replace(cfg, densify=densify, steps_scaler=user * int(cfg.steps) / PAPER_STEPS) if self.paper \
            else replace(cfg, densify=densify)
        self.engine = GaussianOptimizer(rep, engine_cfg,
                                        scene_scale=default_scene_scale(data.bounds.radius),
                                        total_steps=int(cfg.steps), generator=torch.Generator().manual_seed(int(ctx.seed)),
                                        views=len(self.views))
        if not self.paper:
            self.engine.set_means_lr(1.0)  # continue where a full 3dgs-train schedule ends
        targets = data.eval_views
        self.targets = Cameras.cat([v.camera for v in targets]).to("cpu")
        if set(map(id, targets)) <= set(map(id, self.views)):
            ctx.log("difix3d+: the scene has no held-out cameras; novel views will coincide with training cameras")
        self.train_c2w = torch.stack([v.camera.c2w[0].cpu() for v in self.views])
        self.current_poses = self.train_c2w.clone()
        self.generator = torch.Generator().manual_seed(int(ctx.seed) + 1)
        self.real_order = EpochOrder(len(self.views))
        self.pseudo_order = EpochOrder(0)
        self.pseudo: PseudoViews | None = None
        self.rounds = 0
        self.real_targets = TargetCache(self.background, self.device)
        self.last_loss = float("nan")

    @property
    def total_steps(self) -> int:
        return int(self.config.steps)

    # ------------------------------------------------------------------------------ fix round

    @torch.no_grad()
    def fix_round(self) -> PseudoViews:
        """Move the novel cameras one step, render them, fix them, and make them the pseudo-views."""
        cfg, ctx = self.config, self.ctx
        novel = shift_poses(self.current_poses, self.targets.c2w, float(cfg.shift_distance))
        cams = self.targets.with_c2w(novel)
        nearest = nearest_assignments(self.train_c2w, novel)
        images: list[Tensor] = []
        masks: list[Tensor] = []
        for start in range(0, len(cams), int(cfg.fix_batch)):
            idx = list(range(start, min(start + int(cfg.fix_batch), len(cams))))
            for group in _same_size_groups(cams, idx):
                batch = cams[group]
                out = ctx.renderer.render(self.rep, batch.to(self.device), background=self.background)
                rgb = out.rgb.detach().float().clamp(0, 1)
                h, w = batch.size(0)
                refs = torch.stack([_resized(self.real_targets(self.views[int(nearest[i])]), h, w) for i in group]).to(rgb.device)
                views = [View(f"novel-{self.rounds}-{i:04d}", cams[i], None, "train") for i in group]
                fixed = ctx.fixer.fix(rgb, refs, views=views)  # type: ignore[union-attr]
                if fixed.shape != rgb.shape:
                    raise RuntimeError(f"fixer {ctx.fixer.name} returned {tuple(fixed.shape)} for renders {tuple(rgb.shape)}")  # type: ignore[union-attr]
                alpha = out.alpha[..., 0] if out.alpha is not None else torch.ones(rgb.shape[:3], device=rgb.device)
                images += list(fixed.detach().float().clamp(0, 1).cpu())
                masks += list((alpha > float(cfg.alpha_threshold)).cpu())
        self.pseudo = PseudoViews(novel, cams.K.clone(), cams.width.clone(), cams.height.clone(), images, masks)
        self.pseudo_order = EpochOrder(len(images))
        moved = float((novel[:, :3, 3] - self.current_poses[nearest_assignments(self.current_poses, novel), :3, 3]).norm(dim=-1).mean())
        left = float((novel[:, :3, 3] - self.targets.c2w[:, :3, 3]).norm(dim=-1).mean())
        self.current_poses = novel
        self.rounds += 1
        ctx.log(f"difix3d+: round {self.rounds}: fixed {len(images)} novel views "
                f"(moved {moved:.3f}, {left:.3f} from their targets on average)")
        return self.pseudo

    # ------------------------------------------------------------------------------------ step

    def step(self, step: int) -> dict[str, float]:
        cfg, engine, rep = self.config, self.engine, self.rep
        if engine.sync() and not self.paper:  # splats were replaced (a checkpoint was loaded): fresh optimizers
            engine.set_means_lr(1.0)
        if self.paper:
            engine.schedule(step)  # means lr decay and SH growth, as 3dgs-train
        if step in self.fix_at:
            self.fix_round()
        use_pseudo = self.pseudo is not None and len(self.pseudo) > 0 and \
            float(torch.rand(1, generator=self.generator)) < float(cfg.novel_prob)
        if use_pseudo:
            assert self.pseudo is not None
            i = self.pseudo_order.next(self.generator)
            camera = self.pseudo.camera(i).to(self.device)
            target, mask, weight = self.pseudo.images[i].to(self.device), self.pseudo.masks[i].to(self.device), cfg.novel_weight
        else:
            i = self.real_order.next(self.generator)
            view = self.views[i]
            camera = view.camera.to(self.device)
            target, mask, weight = self.real_targets(self.views[i]), None, cfg.real_weight
        out = self.ctx.renderer.render(rep, camera, background=self.background)
        engine.before_backward(step, out.info)
        pred = out.rgb[0]
        loss, l1 = weighted_photometric_loss(pred, target, cfg.ssim_weight, float(weight), mask)
        engine.step(loss + engine.regularisation(), step, out.info, camera)
        self.last_loss = float(loss.detach())
        return {"loss": self.last_loss, "l1": float(l1.detach()), "psnr": float(psnr(pred.detach(), target)),
                "pseudo": float(use_pseudo), "gaussians": float(len(rep))}

    # --------------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """Engine state, generator, view orders, novel poses and pseudo-views (deep copies)."""
        return copy.deepcopy({
            "engine": self.engine.state_dict(),
            "generator": self.generator.get_state(),
            "real_order": self.real_order.state_dict(),
            "pseudo_order": self.pseudo_order.state_dict(),
            "rounds": self.rounds,
            "current_poses": self.current_poses,
            "pseudo": None if self.pseudo is None else self.pseudo.state_dict(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state["engine"])
        if not self.paper:
            self.engine.set_means_lr(1.0)
        self.generator.set_state(state["generator"].cpu().to(torch.uint8))
        self.real_order.load_state_dict(state["real_order"])
        self.pseudo_order.load_state_dict(state["pseudo_order"])
        self.rounds = int(state["rounds"])
        self.current_poses = state["current_poses"].float().cpu()
        self.pseudo = None if state["pseudo"] is None else PseudoViews.from_state(state["pseudo"])

    def finish(self) -> dict[str, Any]:
        self.engine.finish()
        return {"rounds": self.rounds, "pseudo_views": 0 if self.pseudo is None else len(self.pseudo),
                "gaussians": len(self.rep), "final_loss": self.last_loss}


def _same_size_groups(cams: Cameras, indices: list[int]) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        groups.setdefault(cams.size(i), []).append(i)
    return list(groups.values())


def _resized(image: Tensor, h: int, w: int) -> Tensor:
    """(H', W', 3) → (h, w, 3) (bilinear, antialiased) when the sizes differ."""
    if image.shape[:2] == (h, w):
        return image
    x = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).clamp(0, 1)
