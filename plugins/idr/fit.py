"""``idr-fit``: IDR's optimisation of an ``idr`` representation against masked posed images.

Each step draws ``batch_rays`` random (view, pixel) pairs from a seeded private generator, traces
them (no gradients), and minimises

    L = L_rgb + w_eik · L_eikonal + w_mask · L_mask

* L_rgb: L1 between rendered and observed colour (in the network's range ``idr.rgb_range``: [0, 1], or
  IDR's [−1, 1]) on rays that hit the surface *and* are inside the object mask, summed and divided by
  the batch size; colour is computed at the differentiable surface
  point (implicit differentiation, :func:`raytrace.surface_points`);
* L_eikonal: mean (‖∇f‖ − 1)² over the traced points and ``batch_rays / 2`` uniform points in the
  bounding cube;
* L_mask: on the other rays inside the bounding sphere, BCE-with-logits of ``−α · f(x)`` against the
  mask (x: the surface point, or the minimal-SDF sample), summed, divided by α and the batch size;
  α starts at ``alpha_init`` and is multiplied by ``alpha_factor`` at each of ``alpha_milestones``
  (fractions of the run).

Adam with parameter groups: the networks at ``lr``; grid feature tables of hash-grid encoders
(including the grid inside FFB) at ``encoder_lr``, by default the encoder's ``table_lr``; an encoder's
other weights (FFB's SIREN and Fourier maps) at ``encoder_weights_lr``, by default the encoder's
``weights_lr`` when it declares one, else ``lr``; pose corrections at ``camera_lr``. Every lr is
multiplied by ``lr_gamma`` at ``lr_milestones``: by default the encoder's ``lr_milestones`` when it
declares them (FFB: every tenth from half-way, like NFFB's step decay), else IDR's 50 % and 75 %. Adam's
(β1, β2) are torch's (0.9, 0.999), as IDR's; the encoder's groups take ``encoder_betas`` (instant-NGP and
NFFB use 0.9, 0.99: no gain measured here, docs/benchmarks.md). Before each step the gradient's global
norm is clipped to ``grad_clip``, by default the encoder's (hashgrid, ffb: NFFB's 1.0; none for Fourier,
as IDR). Needs object masks (``View.object_mask``, or ``View.alpha > 0.5``).

Schedules (α, lr, coarse-to-fine) are functions of the run's *progress* in [0, 1],
``ctx.progress(step, steps)``: ``step / steps``, or the fraction of the time budget used when that is
ahead (``--set run.budget=600``, or ``cpu:600`` for CPU time; :mod:`recon_core.budget`), so the
milestones are reached whatever the step rate. The benchmark (benchmarks/idr_bench.py) runs the
same refine loop with its budget.

Coarse-to-fine (Neuralangelo, NFFB): encoders with grid levels (``hashgrid``, ``ffb``, ``ffb-stylemod``
expose ``n_grid_levels`` and ``active_levels``) start with ``c2f_start_levels`` levels; the others are
unlocked one by one, evenly until ``c2f_until`` of the run. Locked levels output zeros (no gradient).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from torch import Tensor

from recon_core import InputError, RunContext, Refiner, Representation, Scene, Video, option
from recon_core.memory import keep_freed_memory

from .raytrace import TraceResult, surface_points
from .representation import IDRRepresentation, pixel_rays

__all__ = ["IDRFit", "TrainingViews"]

DEFAULT_TABLE_LR = 1e-2
"""Adam lr of feature tables when neither idr-fit.encoder_lr nor the encoder's ``table_lr`` says (instant-NGP's)."""
ADAM_BETAS = (0.9, 0.999)
"""Adam (β1, β2) of IDR's networks (torch's defaults, as IDR)."""


@dataclass
class TrainingViews:
    """Training data packed for random ray batches (V views, padded to P = max H·W pixels).

    rgb [V, P, 3], mask [V, P] bool, K [V, 3, 3], c2w [V, 4, 4], width/npix [V] int64.
    """

    rgb: Tensor
    mask: Tensor
    K: Tensor
    c2w: Tensor
    width: Tensor
    npix: Tensor

    @staticmethod
    def from_scene(scene: Scene, device: torch.device) -> "TrainingViews":
        views = scene.train_views
        if not views:
            raise InputError("idr-fit needs training views")
        npix = torch.tensor([v.height * v.width for v in views])
        p = int(npix.max())
        rgb = torch.zeros(len(views), p, 3)
        mask = torch.zeros(len(views), p, dtype=torch.bool)
        for i, v in enumerate(views):
            img = v.image
            if v.has("object_mask"):
                m = v.object_mask
            elif v.has("alpha"):
                m = v.alpha > 0.5
            else:
                raise InputError(f"idr-fit needs object masks; view {v.name} has none", v.path)
            rgb[i, : img.shape[0] * img.shape[1]] = img.reshape(-1, 3).float()
            mask[i, : m.numel()] = m.reshape(-1).bool()
        cams = scene.cameras(views)
        return TrainingViews(rgb.to(device), mask.to(device), cams.K.to(device), cams.c2w.to(device),
                             cams.width.to(device), npix.to(device))


class IDRFit(Refiner):
    """IDR training: RGB L1 + eikonal + mask losses, optional camera refinement (see module docstring)."""

    name = "idr-fit"
    description = "IDR optimisation (RGB L1 at differentiable surface points, eikonal, mask BCE; optional poses)"
    requires = frozenset({"sdf", "neural-field"})
    IDR_LR_MILESTONES = (0.5, 0.75)  # IDR halves its lr at 1000 and 1500 of 2000 epochs

    @dataclass
    class Config:
        steps: int | None = option(None, "optimisation steps; none: 20000, or 100000 under run.budget (the budget ends "
                                   "the run and sets the schedules; a 60 CPU-min hashgrid run makes ~40000 steps)", min=1)
        batch_rays: int | None = option(None, "random rays per step; none: IDR's 2048 on CUDA, 1024 on the CPU (the benchmark's)", min=1)
        lr: float | None = option(None, "Adam learning rate of the networks; none: IDR's 1e-4 on CUDA, 5e-4 on the CPU "
                                  "(the benchmark's)", min=0)
        encoder_lr: float | None = option(None, "Adam learning rate of grid feature tables (hashgrid, the grid of ffb); "
                                          "none: the encoder's table_lr (hashgrid 1e-2, ffb 1e-3)", min=0)
        encoder_betas: list[float] = option(None, "Adam (β1, β2) of the encoder's tables and weights (instant-NGP and NFFB: "
                                            "0.9, 0.99)", factory=lambda: list(ADAM_BETAS), min=0, max=1)
        encoder_weights_lr: float | None = option(None, "Adam learning rate of an encoder's other weights (FFB's SIREN, "
                                                  "Fourier maps); none: the encoder's weights_lr (ffb 1e-4), else lr", min=0)
        camera_lr: float = option(1e-4, "Adam learning rate of pose corrections (refine_cameras)", min=0)
        lr_milestones: list[float] | None = option(None, "fractions of the run where the lr is multiplied by lr_gamma; "
                                                   "none: the encoder's lr_milestones (ffb 0.5…0.9), else IDR's 0.5, 0.75", min=0, max=1)
        lr_gamma: float = option(0.5, "lr decay factor", min=0)
        grad_clip: float | None = option(None, "clip the gradient's global norm to this before each Adam step (0: "
                                                "never); none: the encoder's grad_clip (hashgrid, ffb: NFFB's 1.0), else "
                                                "no clipping, as IDR", min=0)
        eikonal_weight: float = option(0.1, "weight of the eikonal loss", min=0)
        mask_weight: float = option(100.0, "weight of the mask loss", min=0)
        alpha_init: float = option(50.0, "initial α of the mask loss", min=0)
        alpha_factor: float = option(2.0, "α multiplier at each milestone", min=0)
        alpha_milestones: list[float] = option(None, "fractions of the run where α is multiplied",
                                               factory=lambda: [0.125, 0.25, 0.375, 0.5, 0.625], min=0, max=1)
        c2f_start_levels: int = option(4, "grid levels active at the start (encoders with grid levels)", min=1)
        c2f_until: float = option(0.5, "fraction of the run at which all grid levels are active (0: no coarse-to-fine)", min=0, max=1)
        log_every: int = option(100, "log losses every N steps (0: never)", min=0)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.rep: IDRRepresentation | None = None
        self.data: TrainingViews | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.generator: torch.Generator | None = None
        self.last: dict[str, float] = {}
        self.lr_milestones: list[float] = []
        self.grad_clip = 0.0
        self.batch_rays = 0
        self.ctx: RunContext | None = None

    # -------------------------------------------------------------------------------- contract

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        if not isinstance(rep, IDRRepresentation):
            raise InputError(f"idr-fit trains the idr representation, not '{rep.name}'")
        if not isinstance(data, Scene):
            raise InputError("idr-fit needs posed views (a Scene)")
        self.rep, self.ctx = rep, ctx
        dev = rep.center.device
        self.data = TrainingViews.from_scene(data, dev)
        c = self.config
        # only the feature tables get the high grid lr: FFB's SIREN weights at 1e-2 diverge within 50 steps
        encoder = rep.implicit.encoder
        enc_params = encoder.table_parameters()
        enc_ids = {id(p) for p in enc_params}
        weights_lr = c.encoder_weights_lr if c.encoder_weights_lr is not None else encoder.weights_lr
        enc_weights = [] if weights_lr is None else [p for p in encoder.parameters() if id(p) not in enc_ids]
        special = enc_ids | {id(p) for p in enc_weights}
        net_params = [p for p in list(rep.implicit.parameters()) + list(rep.rendering.parameters()) if id(p) not in special]
        cuda = dev.type == "cuda"
        self.batch_rays = c.batch_rays if c.batch_rays is not None else (2048 if cuda else 1024)
        lr = c.lr if c.lr is not None else (1e-4 if cuda else 5e-4)
        betas = c.encoder_betas
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise InputError(f"idr-fit.encoder_betas must be two numbers in [0, 1), got {list(betas)}")
        enc_betas = (float(betas[0]), float(betas[1]))
        groups = [{"params": net_params, "lr": lr, "base_lr": lr, "betas": ADAM_BETAS}]
        if enc_weights:
            groups.append({"params": enc_weights, "lr": float(weights_lr), "base_lr": float(weights_lr), "betas": enc_betas})
        if enc_params:
            table_lr = c.encoder_lr if c.encoder_lr is not None else float(encoder.table_lr or DEFAULT_TABLE_LR)
            groups.append({"params": enc_params, "lr": table_lr, "base_lr": table_lr, "betas": enc_betas})
        if rep.config.refine_cameras:
            groups.append({"params": [rep.pose_delta], "lr": c.camera_lr, "base_lr": c.camera_lr})
        # fused: one kernel per parameter group instead of a dozen passes (hash tables: 3x faster on the CPU)
        fused = dev.type in ("cpu", "cuda") and all(p.is_floating_point() for g in groups for p in g["params"])
        self.optimizer = torch.optim.Adam(groups, eps=1e-15 if enc_params else 1e-8, fused=fused)
        self.lr_milestones = sorted(c.lr_milestones if c.lr_milestones is not None
                                    else encoder.lr_milestones or self.IDR_LR_MILESTONES)
        self.grad_clip = float(c.grad_clip if c.grad_clip is not None else encoder.grad_clip or 0.0)
        self.generator = torch.Generator(device="cpu").manual_seed(int(ctx.seed))
        if dev.type == "cpu":  # every step frees and reallocates table-sized gradients: keep them in the heap
            keep_freed_memory()

    DEFAULT_STEPS = 20000
    BUDGET_STEPS = 100000
    """Steps when ``steps`` is unset and the run has a budget: a cap the budget reaches first, so that the
    schedules follow the budget alone (as benchmarks/idr_bench.py's ``--max-steps``). With 20000 a
    60 CPU-min run stopped at 20000 steps and ran its schedules by steps (docs/benchmarks.md, IDR)."""

    @property
    def total_steps(self) -> int:
        if self.config.steps is not None:
            return self.config.steps
        budgeted = self.ctx is not None and self.ctx.budget is not None
        return self.BUDGET_STEPS if budgeted else self.DEFAULT_STEPS

    def fraction(self, step: int) -> float:
        """Progress of the run at ``step``: ``max(step / steps, fraction of the time budget used)``."""
        if self.ctx is None:  # not set up: the steps alone
            return step / max(self.total_steps, 1)
        return self.ctx.progress(step, self.total_steps)

    def _milestones_passed(self, step: int, fractions: list[float]) -> int:
        return bisect.bisect_right(sorted(fractions), self.fraction(step))

    def active_levels(self, step: int, n_levels: int) -> int:
        """Grid levels unlocked at ``step`` (coarse-to-fine, see module docstring)."""
        c = self.config
        start = max(1, min(c.c2f_start_levels, n_levels))
        if c.c2f_until <= 0 or start >= n_levels:
            return n_levels
        k = int(self.fraction(step) / c.c2f_until * (n_levels - start + 1))
        return min(n_levels, start + k)

    def alpha(self, step: int) -> float:
        """Mask-loss α at ``step``."""
        c = self.config
        return c.alpha_init * c.alpha_factor ** self._milestones_passed(step, c.alpha_milestones)

    def step(self, step: int) -> dict[str, float]:
        assert self.rep is not None and self.data is not None and self.optimizer is not None, "setup() first"
        return self._step(step)

    def _step(self, step: int) -> dict[str, float]:
        c, rep, d = self.config, self.rep, self.data
        dev = rep.center.device
        decay = c.lr_gamma ** self._milestones_passed(step, self.lr_milestones)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * decay
        alpha = self.alpha(step)
        enc = rep.implicit.encoder
        if hasattr(enc, "active_levels"):
            enc.active_levels = self.active_levels(step, enc.n_grid_levels)

        # ---- a random batch of rays
        b = self.batch_rays
        view = torch.randint(len(d.rgb), (b,), generator=self.generator).to(dev)
        pix = (torch.rand(b, generator=self.generator).to(dev) * d.npix[view]).long().clamp_max(d.npix[view] - 1)
        uv = torch.stack([pix % d.width[view], pix // d.width[view]], dim=-1).float() + 0.5
        rgb_gt, mask_gt = d.rgb[view, pix], d.mask[view, pix]
        c2w = rep.refined_c2w(view) if rep.config.refine_cameras else d.c2w[view]
        origins, dirs = pixel_rays(d.K[view], c2w, uv)
        o, v = rep.network_rays(origins, dirs)

        # ---- trace (no grad; it caches the weight-normalised weights for itself only) ...
        tr = rep.trace(o.detach(), v.detach(), generator=self.generator)
        # ... then the differentiable part, with weights computed once *with* their graph. (A cache
        # opened around the trace would hold graph-less weights: the weights would never train.)
        with parametrize.cached():
            loss, loss_rgb, eikonal, loss_mask, hit, rgb_mask = self._losses(tr, o, v, rgb_gt, mask_gt, alpha)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip)
        self.optimizer.step()

        n_rgb = int(rgb_mask.sum())
        l1 = float(loss_rgb.detach()) * b / max(n_rgb, 1)
        self.last = {
            "loss": float(loss.detach()), "rgb_l1": l1, "eikonal": float(eikonal.detach()), "mask": float(loss_mask.detach()),
            "alpha": alpha, "hit_iou": float((hit & mask_gt).sum()) / max(int((hit | mask_gt).sum()), 1),
        }
        if c.log_every and step % c.log_every == 0:
            self.ctx.log(f"idr-fit {step}: " + " ".join(f"{k}={v:.4g}" for k, v in self.last.items()))
        return self.last

    def _losses(self, tr: TraceResult, o: Tensor, v: Tensor, rgb_gt: Tensor, mask_gt: Tensor, alpha: float) -> tuple[Tensor, ...]:
        """(loss, L_rgb, L_eikonal, L_mask, hit, rgb_mask) of one traced batch (see module docstring)."""
        c, rep = self.config, self.rep
        dev = rep.center.device
        b = len(o)
        hit = tr.hit & tr.in_sphere
        h = hit.nonzero().squeeze(1)
        x0 = o.detach()[h] + tr.t[h, None] * v.detach()[h]
        rand_pts = (torch.rand(b // 2, 3, generator=self.generator).to(dev) * 2 - 1) * rep.config.trace_settings(dev).radius
        rgb_mask = hit & mask_gt
        m_idx = (~rgb_mask & tr.in_sphere).nonzero().squeeze(1)
        # Without camera refinement the rays carry no graph, so the surface points' SDF (for the
        # implicit differentiation) and the mask points' SDF are rows of the eikonal evaluation: one
        # network call instead of three (IDR too evaluates all traced points in one forward). The rows
        # are independent, so values and gradients are those of separate calls.
        merged = not (o.requires_grad or v.requires_grad)
        xm = o[m_idx] + tr.t[m_idx, None] * v[m_idx]
        pts = torch.cat([x0, rand_pts, xm.detach()]) if merged else torch.cat([x0, rand_pts])
        f_all, _, g = rep.implicit.sdf_and_gradient(pts, create_graph=True)
        n_eik = len(h) + len(rand_pts)
        eikonal = ((g[:n_eik].norm(dim=-1) - 1) ** 2).mean()

        loss_rgb = torch.zeros((), device=dev)
        if len(h):
            xs = surface_points(rep.implicit.sdf, o[h], v[h], tr.t[h], g[: len(h)], f=f_all[: len(h)] if merged else None)
            shaded = rep.shade(xs, v[h], create_graph=True)
            sel = rgb_mask[h]
            # in the network's colour range: IDR's [-1, 1] doubles the L1 against eikonal and mask
            loss_rgb = (shaded.rgb_net[sel] - rep.to_rgb_range(rgb_gt[h][sel])).abs().sum() / b

        loss_mask = torch.zeros((), device=dev)
        if len(m_idx):
            logits = -alpha * (f_all[n_eik:] if merged else rep.implicit.sdf(xm))
            loss_mask = F.binary_cross_entropy_with_logits(logits, mask_gt[m_idx].float(), reduction="sum") / (alpha * b)

        loss = loss_rgb + c.eikonal_weight * eikonal + c.mask_weight * loss_mask
        return loss, loss_rgb, eikonal, loss_mask, hit, rgb_mask

    def state_dict(self) -> dict[str, Any]:
        assert self.optimizer is not None and self.generator is not None
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None and self.generator is not None
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def finish(self) -> dict[str, Any]:
        return dict(self.last)
