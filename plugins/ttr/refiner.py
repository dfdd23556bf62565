"""The ``ttr`` refiner: test-time refinement of poses and Gaussians (DGGT-TTR), with a held-out guard.

Stages (each optional; ``total_steps = steps_pose + steps_gs`` of the enabled ones):

1. **pose** (``steps_pose``): a per-frame se(3) correction ``xi = (omega, tau)`` [N, 6] is
   left-multiplied onto each optimised view's world-to-camera matrix (:mod:`.poses`); frame 0
   (the first optimised view in time order) stays fixed; Adam with ``lr_pose`` (rotation) and
   ``lr_pose_translation`` (translation, default: the same).
2. **attributes** (``steps_gs``): opacity, colour (SH) and rotation always; position
   (``refine_xyz``) and scale (``refine_scale``) optionally; the pose corrections keep moving at
   ``pose_lr_factor_gs`` times their rate; one Adam learning rate per parameter group.

One step renders ``views_per_step`` optimised views (0: all of them, as the fork does; a subset
is drawn from a private seeded generator) at their corrected poses — each at its own time for
dynamic representations, which the renderer handles through ``cameras.times`` — and minimises
``L1 + ssim_weight * (1 - SSIM)`` over non-sky pixels (:func:`masked_photometric_loss`; masks are
the loaders' nearest-neighbour sky masks; ``ssim_weight`` 0.1 equals the fork's 0.2 x kornia's
``ssim_loss``, which is (1 - SSIM) / 2). Rows flagged ``dynamic`` (dggt's per-frame Gaussians) are
left alone unless ``refine_dynamic``, as the fork detaches them.

**Presets.** ``preset=fork`` is the DGGT-TTR fork's ``inference_refine_mode2.py`` step for step
(:data:`FORK_PRESET`): its loss (:func:`fork_loss`: L1 + 0.2 · kornia ``ssim_loss`` map, SSIM over
the whole image, masked means), learning rates on the *activated* opacity, RGB and scale
(``lr_space=activated``; Adam on those values through the chain rule), scales at 1e-5, frame 0
out of the loss, its pose map ``[so3_exp(ω) | τ]``, Adam's eps 1e-8, and each stage keeping its
lowest-loss step (the fork keeps, with that loss, the pose that produced it and the Gaussians after
the step). ``preset=recon`` (default) differs in three places: the held-out guard below chooses the
kept step instead of the training loss (the training loss keeps falling while test PSNR need not:
the guard never leaves the held-out full-image PSNR below its starting value at the checks, which
the lowest training loss cannot promise), the se(3) exponential for the pose corrections, and frame
0 stays in the loss (its pose is fixed, its pixels still inform the Gaussians). docs/benchmarks.md
compares both on ``street``.

**Held-out guard** (beyond the fork; ``select=guard``): views of the ``test``/``val`` split, plus
``holdout`` training frames, are never optimised (:func:`.holdout.split_views`). Their PSNR over
the *full image* is measured — exactly as the run's evaluation computes ``psnr`` (float64, renders
clamped, targets on the run's background), after giving a camera-holding representation the
current poses as ``finish`` will — at the start of each stage and every ``eval_every`` steps; each
stage ends with the parameters (pose corrections included) of its best held-out score, and stops
early after ``patience`` checks without improvement (0: never). (Before issue 19 the guard scored
non-sky pixels while metrics.json scored the full image, so the two disagreed.) Held-out views keep their *given* poses: they
are not optimised, and correcting them from the images would mean fitting them (the choice
NeRF-style evaluation avoids); so their score measures the refined scene from independent poses.
The pose stage is not guarded (pose corrections of the optimised views cannot change
held-out renders); without held-out views the guard is off and each stage keeps its last
parameters.

**What is refined, through recon's Gaussian scene protocol** (no class is hard-coded):

* parameters: the entries of ``rep.splats`` (:class:`recon_core.GaussianRepresentation`) named
  in ``rep.refinable``: ``means`` (position), ``quats`` (rotation), ``scales`` (log-scale),
  ``opacities`` (logit), ``sh0`` and ``shN`` (colour). ``opacities``, ``sh0`` and ``quats``
  are required.
* cameras: a representation providing "cameras" (``Representation.cameras()``) supplies the
  starting poses of the views it covers (matched by (camera, time): by time, and among cameras
  of one time by pose; else by order); otherwise they are the
  scene's. At ``finish()`` the refined poses are written into the scene views' cameras (the
  pipeline checkpoints those, so a resumed run keeps them) and, for such a representation, back
  into it through ``rep.set_cameras(cameras)`` (:class:`~recon_core.Representation`), so
  render/eval/export use them.
* a video (no cameras): the representation's cameras, one per frame (e.g. dggt's predicted
  poses), pair with the frames; every frame is a training view (``holdout`` takes some out).

The step-wise contract holds: ``state_dict()`` keeps the pose corrections, the current stage's
optimizer state, the guard, the best-so-far snapshot, the view-sampling generator and the
metrics measured so far, so an interrupted run resumes bit-identically on CPU.

``finish()`` reports, per stage, train and held-out PSNR / SSIM (and LPIPS when the evaluator's
weights are present) before and after, over the full image (``psnr``) and over non-sky pixels
(``psnr_nonsky``), named as in metrics.json, and the optimised views' pose error (mean rotation
degrees, mean camera-centre metres) against ``true_poses`` (a ``cameras_opencv.json``-style
file) when given: in the data's world frame, and after the best rigid alignment onto the true
poses (:func:`.poses.align_rigid`; frame 0 fixes the gauge at its *given* pose, whose own error
the absolute numbers keep).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recon_core import (
    Bounds, Cameras, CombinationError, GaussianRepresentation, ImageEvaluator, InputError, Refiner, Representation,
    RunContext, Scene, Video, View, option,
)
from recon_core.gaussians import SH_C0
from recon_core.evaluate import NONSKY_SUFFIX
from recon_core.imageops import photometric_loss, psnr, ssim_map

from .holdout import HoldoutGuard, split_views
from .poses import align_rigid, apply_corrections, pose_errors

__all__ = [
    "TTRConfig",
    "TestTimeRefiner",
    "ROLES",
    "refinable_parameters",
    "masked_photometric_loss",
    "fork_loss",
    "resolve_preset",
    "FORK_PRESET",
    "representation_cameras",
    "video_scene",
]

ROLES = ("means", "quats", "scales", "opacities", "sh0", "shN")
"""Parameter roles TTR knows (3dgs layout names; see the module doc)."""
_ALWAYS = ("opacities", "sh0", "quats")
_ACTIVATION: dict[str, tuple[Any, Any, Any]] = {
    "opacities": (torch.sigmoid, lambda x: torch.logit(x.clamp(1e-6, 1 - 1e-6)), lambda x: 1.0 / (x * (1 - x)).clamp_min(1e-12)),
    "sh0": (lambda r: r * SH_C0 + 0.5, lambda x: (x - 0.5) / SH_C0, lambda x: torch.full_like(x, 1.0 / SH_C0)),
    "scales": (torch.exp, lambda x: torch.log(x.clamp_min(1e-12)), lambda x: 1.0 / x.clamp_min(1e-12)),
}
"""lr_space=activated, per role: (raw → activated, activated → raw, d raw / d activated). Adam
steps the activated value x with dL/dx = dL/draw · draw/dx, then the raw splat becomes raw(x);
an opacity outside (0, 1), which the fork's unclamped parameter may reach, is kept at 1e-6 from it."""
"""Roles the attribute stage always refines (``shN`` too when present)."""


@dataclass
class TTRConfig:
    preset: str = option("recon", "recon: the options below; fork: the DGGT-TTR fork step for step (inference_refine_mode2.py: "
                                  "its loss, its learning-rate parameterisation, scales at 1e-5, dynamic Gaussians and frame 0 "
                                  "left alone, the lowest-loss step kept; overrides the options it fixes, see docs)",
                         choices=("recon", "fork"))
    refine_pose: bool = option(True, "stage 1: refine per-frame se(3) pose corrections (frame 0 fixed)")
    refine_gs: bool = option(True, "stage 2: refine Gaussian opacity, colour and rotation (+ xyz/scale when enabled)")
    refine_xyz: bool = option(False, "stage 2 also refines positions (may overfit: the held-out guard watches)")
    refine_scale: bool = option(False, "stage 2 also refines scales (may overfit: the held-out guard watches)")
    steps_pose: int = option(50, "steps of stage 1", min=0)
    steps_gs: int = option(50, "steps of stage 2", min=0)
    lr_pose: float = option(1e-4, "Adam learning rate of the pose corrections' rotation (radians)", min=0)
    lr_pose_translation: float | None = option(None, "Adam learning rate of the pose corrections' translation (metres; default lr_pose)", min=0)
    pose_lr_factor_gs: float = option(0.1, "stage 2 pose learning rate = this x stage 1's (0 freezes the poses)", min=0)
    lr_opacity: float = option(0.05, "learning rate of the logit opacities", min=0)
    lr_color: float = option(3e-3, "learning rate of the SH DC colour (higher bands: / 20)", min=0)
    lr_rotation: float = option(1e-3, "learning rate of the quaternions", min=0)
    lr_scale: float = option(1e-3, "learning rate of the log-scales (refine_scale)", min=0)
    lr_xyz: float = option(1e-4, "learning rate of the positions in world units (refine_xyz)", min=0)
    lr_space: str = option("raw", "what the opacity / colour / scale learning rates step: raw (logit opacity, SH DC, "
                                  "log-scale: recon's parameters) or activated (opacity, RGB, scale: the fork's)",
                           choices=("raw", "activated"))
    refine_dynamic: bool = option(False, "stage 2 also refines the per-frame dynamic Gaussians (rows flagged 'dynamic'); "
                                         "the fork detaches them: each is seen by one frame only, so refining it just fits that frame")
    skip_first_frame: bool = option(False, "leave frame 0 (the fixed pose reference) out of the loss, as the fork does")
    select: str = option("guard", "which step each stage keeps: guard (best held-out full-image PSNR; the last step "
                                  "without held-out views), loss (the fork: lowest training loss), last",
                         choices=("guard", "loss", "last"))
    lr_final: float = option(1.0, "every learning rate decays exponentially to this fraction over its stage (1: constant, as the fork)", min=1e-12, max=1)
    ssim_weight: float = option(0.1, "loss = L1 + w (1 - SSIM) over non-sky pixels (0.1 is the fork's 0.2 x kornia's "
                                     "ssim_loss = (1 - SSIM) / 2)", min=0)
    views_per_step: int = option(0, "optimised views rendered per step (0: all, as the fork)", min=0)
    holdout: int = option(0, "also hold out this many training frames (evenly spaced, never frame 0) besides the test split", min=0)
    eval_every: int = option(10, "measure held-out PSNR every this many steps", min=1)
    patience: int = option(0, "end a stage after this many held-out checks without a new best (0: run every step)", min=0)
    true_poses: str | None = option(None, "cameras_opencv.json-style file of true poses: report pose errors")
    lpips: bool = option(True, "report LPIPS before/after when the lpips evaluator's weights are present")
    eval_chunk: int = option(4, "views rendered per renderer call when measuring", min=1)


FORK_PRESET: dict[str, Any] = {
    "refine_scale": True, "lr_scale": 1e-5, "lr_space": "activated", "refine_dynamic": False, "skip_first_frame": True,
    "select": "loss", "lr_final": 1.0, "views_per_step": 0, "lr_pose_translation": None,
}
"""What ``preset=fork`` fixes (Shilin-Zhao/dggt-ttr ``inference_refine_mode2.py``); its loss (L1 +
0.2 kornia ``ssim_loss``), its pose map ([so3_exp(omega) | tau]) and Adam's default eps come with it.
Learning rates and step counts not listed keep their options, whose defaults are the fork's."""


def resolve_preset(config: TTRConfig) -> TTRConfig:
    """``config`` with its preset's fixed values applied (a copy; ``recon`` changes nothing)."""
    return dataclasses.replace(config, **FORK_PRESET) if config.preset == "fork" else config


# ------------------------------------------------------------------------------------ pieces


def refinable_parameters(rep: Representation) -> dict[str, nn.Parameter]:
    """The representation's refinable splat entries TTR knows (:data:`ROLES`), by name (none for a
    representation without splats: only its poses can be refined, ``ttr.refine_gs=false``)."""
    if not isinstance(rep, GaussianRepresentation):  # renderable but without splats: poses only
        return {}
    return {k: rep.splats[k] for k in ROLES if k in rep.splats and k in rep.refinable}


def masked_photometric_loss(pred: Tensor, target: Tensor, valid: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """``L1 + ssim_weight * (1 - SSIM)`` over ``valid`` pixels only.

    Args:
        pred, target: [N, H, W, 3] (or [H, W, 3]) images in [0, 1].
        valid: [N, H, W] (or [H, W]) bool, True where the pixel counts (non-sky).

    This is :func:`recon_core.imageops.photometric_loss` (masked) with its SSIM weight w / (1 + w),
    scaled by 1 + w: ``(1 + w)((1 - w') L1 + w' (1 - SSIM)) = L1 + w (1 - SSIM)``. Below SSIM's
    11-pixel window that rule leaves (1 + w) L1.
    """
    w = float(ssim_weight)
    return (1.0 + w) * photometric_loss(pred, target, w / (1.0 + w), valid)


def fork_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """The fork's ``compute_loss`` with a mask: masked mean L1 + 0.2 · masked mean of kornia's
    ``ssim_loss`` map, clamp((1 − SSIM) / 2, 0, 1), SSIM computed on the whole images with 11-pixel
    Gaussian windows and reflect padding ('same' size).

    Args: pred, target [N, H, W, 3]; valid [N, H, W] bool.
    """
    m = valid.to(pred.dtype)[..., None]
    count = m.sum() * pred.shape[-1] + 1e-8
    l1 = ((pred - target).abs() * m).sum() / count
    smap = ssim_map(pred, target, 11, 1.5, padding="same")
    return l1 + 0.2 * (((1.0 - smap) / 2).clamp(0.0, 1.0) * m).sum() / count


def representation_cameras(rep: Representation) -> Cameras | None:
    """The representation's own cameras (``Representation.cameras()``), when it holds any."""
    cams = rep.cameras() if "cameras" in rep.provides else None
    return cams if cams is not None and len(cams) > 0 else None


def video_scene(video: Video, cameras: Cameras | None) -> Scene:
    """A video's frames as training views at the representation's cameras (one per frame, e.g.
    dggt's predicted poses), named ``frame-00000``… like the pipeline's per-frame renders."""
    if cameras is None or len(cameras) != video.num_frames:
        have = "no cameras" if cameras is None else f"{len(cameras)} cameras"
        raise InputError(
            f"ttr needs posed views: a Scene, or a video whose representation holds one camera per frame "
            f"(e.g. dggt, which predicts them); this one has {have} for {video.num_frames} frames", video.source
        )
    times = cameras.times if cameras.times is not None else video.timestamps
    cams = Cameras(K=cameras.K.detach().cpu(), c2w=cameras.c2w.detach().cpu(), width=cameras.width.cpu(),
                   height=cameras.height.cpu(), times=times.detach().float().cpu().clone())
    views = [View(f"frame-{i:05d}", cams[i], (lambda i=i: video.frame(i)), "train") for i in range(len(cams))]
    return Scene(video.name, views, Bounds.from_cameras(cams), source=video.source)


def _match_cameras(cams: Cameras, views: list[View]) -> list[int | None]:
    """For each view, the index of its camera in ``cams``: the same (camera, time). Among the
    cameras within 1 ms of the view's time (three rig cameras share one), the one nearest in pose
    (‖R − R_k‖² + ‖c − c_k‖²), each used once; without times, by order."""
    if cams.times is not None and all(v.time is not None for v in views):
        times = cams.times.detach().cpu().double()
        R = cams.c2w[:, :3, :3].detach().cpu().double()
        c = cams.c2w[:, :3, 3].detach().cpu().double()
        taken: set[int] = set()
        out: list[int | None] = []
        for v in views:
            d = (times - float(v.time)).abs()  # type: ignore[arg-type]
            cand = [int(i) for i in torch.nonzero(d < 1e-3).flatten() if int(i) not in taken]
            if not cand:
                out.append(None)
                continue
            Rv, cv = v.camera.c2w[0, :3, :3].double(), v.camera.c2w[0, :3, 3].double()
            cost = {i: float(((R[i] - Rv) ** 2).sum() + ((c[i] - cv) ** 2).sum()) for i in cand}
            best = min(cand, key=lambda i: cost[i])
            taken.add(best)
            out.append(best)
        return out
    return list(range(len(views))) if len(cams) == len(views) else [None] * len(views)


def _read_true_poses(path: str) -> dict[str, Tensor]:
    """{view name: c2w [4, 4]} from a cameras_opencv.json-style file."""
    from recon_core.restore import read_cameras_file

    cams, names = read_cameras_file(path)  # type: ignore[arg-type]
    return {name: cams.c2w[i] for i, name in enumerate(names)}


# ----------------------------------------------------------------------------------- refiner


class TestTimeRefiner(Refiner):
    """DGGT-TTR: pose then attribute refinement against the input views, with a held-out guard."""

    __test__ = False  # not a pytest class despite the name

    name = "ttr"
    description = "test-time refinement: se(3) poses, then Gaussian attributes; held-out guard keeps the best"
    Config = TTRConfig
    requires = frozenset({"gaussians-3d"})

    # ----------------------------------------------------------------------------------- setup

    def setup(self, rep: Representation, data: Scene | Video, ctx: RunContext) -> None:
        cfg: TTRConfig = resolve_preset(self.config)
        self.config = cfg
        if isinstance(data, Video):
            data = video_scene(data, representation_cameras(rep))
        self.params = refinable_parameters(rep)
        missing = [r for r in _ALWAYS if r not in self.params]
        if cfg.refine_gs and missing:
            raise CombinationError(
                f"ttr needs the refinable splat entries {', '.join(missing)} of '{rep.name}'; "
                "use another refiner or ttr.refine_gs=false"
            )
        for flag, role in (("refine_xyz", "means"), ("refine_scale", "scales")):
            if getattr(cfg, flag) and role not in self.params:
                raise CombinationError(f"ttr.{flag} needs the '{role}' parameter, which '{rep.name}' does not expose")
        try:
            self.views, self.held = split_views(data, int(cfg.holdout))
        except ValueError as e:
            raise InputError(f"ttr: {e}") from None
        if not self.views:
            raise InputError("ttr needs at least one training view", data.source)
        self.rep, self.scene, self.ctx, self.device = rep, data, ctx, ctx.device
        self.background = ctx.background_color()

        cams = Cameras.cat([v.camera for v in self.views]).to(self.device)
        self.from_rep = [None] * len(self.views)
        rep_cams = representation_cameras(rep)
        if rep_cams is not None:
            self.from_rep = _match_cameras(rep_cams, self.views)
            c2w, K = cams.c2w.clone(), cams.K.clone()
            for i, j in enumerate(self.from_rep):
                if j is not None:
                    c2w[i] = rep_cams.c2w[j].to(c2w)
                    K[i] = rep_cams.K[j].to(K)
            cams = Cameras(K=K, c2w=c2w, width=cams.width, height=cams.height, distortion=cams.distortion, times=cams.times)
        finite = torch.isfinite(cams.K).flatten(1).all(1) & torch.isfinite(cams.c2w).flatten(1).all(1)
        if not bool(finite.all()):
            bad = [v.name for v, ok in zip(self.views, finite.tolist()) if not ok]
            raise InputError(f"ttr: the cameras of {', '.join(bad[:5])} are not finite (a network that predicted "
                             "them may have output a zero field of view)")
        self.cams = cams
        self.base_c2w = cams.c2w.detach().clone()
        self.omega = nn.Parameter(torch.zeros(len(self.views), 3, device=self.device))
        """[N, 3] axis-angle part of the pose corrections (radians); row 0 stays 0."""
        self.tau = nn.Parameter(torch.zeros(len(self.views), 3, device=self.device))
        """[N, 3] translation part of the pose corrections (metres, camera axes); row 0 stays 0."""
        self.free = torch.ones(len(self.views), 1, device=self.device)
        self.free[0] = 0.0  # frame 0 is the fixed reference
        self.pose_mapping = "fork" if cfg.preset == "fork" else "se3"
        dynamic = rep.splats.get("dynamic") if isinstance(rep, GaussianRepresentation) else None
        self.frozen_rows = dynamic.detach().bool() if dynamic is not None and not cfg.refine_dynamic and bool(dynamic.any()) else None
        """Rows stage 2 leaves alone (the per-frame dynamic Gaussians, unless ``refine_dynamic``)."""
        self.shadows: dict[str, Tensor] = {}
        """lr_space=activated: the activated values Adam steps, by role (the raw splats follow them)."""
        self.best_loss = float("inf")
        self.snapshot_step = -1
        self.warned_set_cameras = False

        self.held_cams = Cameras.cat([v.camera for v in self.held]).to(self.device) if self.held else None
        self.targets = [(v.image_on(self.background.cpu()).to(self.device), _valid(v).to(self.device)) for v in self.views]
        self.held_targets = [(v.image_on(self.background.cpu()).to(self.device), _valid(v).to(self.device)) for v in self.held]
        self.true_c2w = self._true_poses(cfg.true_poses)
        self.lpips_unavailable: str | None = None
        self.evaluators = self._evaluators()

        self.stages = [s for s, on, n in (("pose", cfg.refine_pose, cfg.steps_pose), ("attributes", cfg.refine_gs, cfg.steps_gs))
                       if on and int(n) > 0]
        self.stage_steps = {"pose": int(cfg.steps_pose), "attributes": int(cfg.steps_gs)}
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        self.stage_index = -1
        self.stage_done = True
        self.stage_run = 0  # steps of the current stage done
        self.optimizer: torch.optim.Optimizer | None = None
        self.guard = HoldoutGuard(patience=int(cfg.patience))
        self.snapshot: dict[str, Tensor] | None = None
        self.measured: dict[str, Any] | None = None  # metrics of the current parameters, when known
        self.reports: list[dict[str, Any]] = []
        self.stage_before: dict[str, Any] = {}
        self.history: list[tuple[str, int, float]] = []
        """Held-out checks: (stage, step within the stage, mean held-out PSNR in dB)."""
        self.last_loss = float("nan")

    def _true_poses(self, path: str | None) -> Tensor | None:
        """True c2w [N, 4, 4] (float64) of the optimised views by view name, or None without a file."""
        if not path:
            return None
        poses = _read_true_poses(path)
        missing = [v.name for v in self.views if v.name not in poses]
        if missing:
            raise InputError(f"true_poses has no pose for view(s) {', '.join(missing[:5])}", path)
        return torch.stack([poses[v.name] for v in self.views]).to(self.device, torch.float64)

    def _evaluators(self) -> dict[str, Any]:
        """The run's SSIM (and LPIPS, when usable) evaluators, created through the run context."""
        out: dict[str, Any] = {}
        for name in self._reported_metrics(self.config):
            try:
                ev = self.ctx.create("evaluator", name) if self.ctx.create is not None else None
            except Exception as e:  # noqa: BLE001 - an extra report: a missing metric plugin must not stop TTR
                self.ctx.log(f"ttr: the {name} evaluator is unavailable ({e})")
                continue
            if not isinstance(ev, ImageEvaluator):
                continue
            reason = ev.unavailable_reason()
            if reason is None:
                out[name] = ev
            elif name == "lpips":
                self.lpips_unavailable = reason
        return out

    @staticmethod
    def _reported_metrics(config: TTRConfig) -> list[str]:
        return ["ssim"] + (["lpips"] if config.lpips else [])

    @classmethod
    def uses(cls, config: Any) -> list[tuple[str, str]]:
        return super().uses(config) + [("evaluator", n) for n in cls._reported_metrics(config)]

    @property
    def total_steps(self) -> int:
        return sum(self.stage_steps[s] for s in self.stages)

    # ------------------------------------------------------------------------------- cameras

    def corrected_c2w(self) -> Tensor:
        """[N, 4, 4] current camera-to-world of the optimised views (differentiable w.r.t. ``omega``, ``tau``).

        Frame 0 is the given pose bit for bit (the float64 round trip of a zero correction may
        change the last float32 bit of an arbitrary pose)."""
        corrected = apply_corrections(self.base_c2w, torch.cat([self.omega, self.tau], dim=1) * self.free, self.pose_mapping)
        return torch.where(self.free[:, :, None] > 0, corrected, self.base_c2w)

    def _cameras(self, index: list[int], c2w: Tensor) -> Cameras:
        return self.cams[index].with_c2w(c2w[index])

    # -------------------------------------------------------------------------------- stages

    def _locate(self, step: int) -> tuple[int, int]:
        """(stage index, step within the stage) of a global step."""
        for i, s in enumerate(self.stages):
            n = self.stage_steps[s]
            if step < n:
                return i, step
            step -= n
        raise IndexError("step beyond total_steps")

    def _trained(self, stage: int) -> dict[str, nn.Parameter]:
        """Representation parameters a stage refines, by role."""
        if self.stages[stage] == "pose":
            return {}
        cfg = self.config
        roles = list(_ALWAYS) + ["shN"] + (["means"] if cfg.refine_xyz else []) + (["scales"] if cfg.refine_scale else [])
        return {r: self.params[r] for r in roles if r in self.params and self.params[r].numel() > 0}

    def _build_optimizer(self, stage: int) -> torch.optim.Optimizer:
        cfg = self.config
        lrs = {"opacities": cfg.lr_opacity, "sh0": cfg.lr_color, "shN": cfg.lr_color / 20.0, "quats": cfg.lr_rotation,
               "scales": cfg.lr_scale, "means": cfg.lr_xyz}
        self.shadows = {}
        groups: list[dict[str, Any]] = []
        for r, p in self._trained(stage).items():
            if cfg.lr_space == "activated" and r in _ACTIVATION:
                self.shadows[r] = _ACTIVATION[r][0](p.detach()).clone().requires_grad_(True)
                p = self.shadows[r]
            groups.append({"params": [p], "lr": float(lrs[r]), "name": r})
        factor = 1.0 if self.stages[stage] == "pose" else float(cfg.pose_lr_factor_gs)
        if cfg.refine_pose and factor > 0:
            lr_rot = float(cfg.lr_pose) * factor
            lr_trans = float(cfg.lr_pose if cfg.lr_pose_translation is None else cfg.lr_pose_translation) * factor
            groups.append({"params": [self.omega], "lr": lr_rot, "name": "pose_rotation"})
            groups.append({"params": [self.tau], "lr": lr_trans, "name": "pose_translation"})
        for g in groups:
            g["base_lr"] = g["lr"]
        eps = 1e-8 if cfg.preset == "fork" else 1e-15  # the fork's Adam keeps torch's default
        return torch.optim.Adam(groups, betas=(0.9, 0.999), eps=eps)

    def _enter_stage(self, stage: int) -> None:
        self.stage_index = stage
        self.stage_done = False
        self.optimizer = self._build_optimizer(stage)
        self.guard = HoldoutGuard(patience=int(self.config.patience))
        self.best_loss = float("inf")
        if self.measured is None:
            self.measured = self._measure()
        self.stage_before = self.measured
        if self._guarded(stage):
            self._check(0, self.measured["heldout"]["psnr"])
        name = self.stages[stage]
        self.ctx.log(f"ttr: stage {name} starts ({self.stage_steps[name]} steps); "
                     f"train PSNR {self.measured['train']['psnr']:.3f} dB, held-out {self.measured['heldout'].get('psnr', math.nan):.3f} dB")

    def _guarded(self, stage: int) -> bool:
        """Whether the held-out guard watches ``stage``: there are held-out views and the stage
        changes the representation (pose corrections alone cannot change held-out renders, which
        use the given poses)."""
        return self.config.select == "guard" and bool(self.held) and bool(self._trained(stage))

    def _check(self, local_step: int, score: float) -> None:
        """Feed a held-out score to the guard; snapshot the parameters on a new best."""
        self.history.append((self.stages[self.stage_index], local_step, float(score)))
        if self.guard.update(score, local_step):
            trained = self._trained(self.stage_index)
            self.snapshot = {"omega": self.omega.detach().clone(), "tau": self.tau.detach().clone(), **{r: p.detach().clone() for r, p in trained.items()}}

    def _end_stage(self, steps_run: int) -> None:
        restored = False
        if (self._guarded(self.stage_index) or self.config.select == "loss") and self.snapshot is not None:
            with torch.no_grad():
                self.omega.copy_(self.snapshot["omega"])
                self.tau.copy_(self.snapshot["tau"])
                for r, p in self._trained(self.stage_index).items():
                    p.copy_(self.snapshot[r])
            restored = True
        self.measured = self._measure()
        name = self.stages[self.stage_index]
        self.reports.append({
            "stage": name,
            "steps_run": steps_run,
            "stopped_early": bool(self.guard.stopped),
            "kept_step": (self.snapshot_step if self.config.select == "loss" else self.guard.best_step) if restored else steps_run,
            "best_heldout_psnr": self.guard.best if restored and self.config.select == "guard" else None,
            "lowest_loss": self.best_loss if self.config.select == "loss" else None,
            "before": self.stage_before,
            "after": self.measured,
        })
        self.stage_done = True
        self.snapshot = None
        self.ctx.log(f"ttr: stage {name} ends after {steps_run} steps, keeping step {self.reports[-1]['kept_step']}; "
                     f"train PSNR {self.measured['train']['psnr']:.3f} dB, held-out {self.measured['heldout'].get('psnr', math.nan):.3f} dB")

    # ------------------------------------------------------------------------------ measuring

    @torch.no_grad()
    def _render(self, cams: Cameras) -> Tensor:
        chunk = max(1, int(self.config.eval_chunk))
        parts = [self.ctx.renderer.render(self.rep, cams[list(range(s, min(s + chunk, len(cams))))], background=self.background).rgb
                 for s in range(0, len(cams), chunk)]
        return torch.cat(parts).clamp(0.0, 1.0)

    def _scores(self, cams: Cameras, targets: list[tuple[Tensor, Tensor]], full: bool) -> dict[str, float]:
        """Mean per-view metrics, labelled as in metrics.json: ``psnr`` over the full image (what
        the run's evaluation reports, computed the same way: float64, renders clamped to [0, 1])
        and ``psnr_nonsky`` over the pixels that are not sky (what the loss sees); with ``full``,
        the SSIM/LPIPS evaluators likewise (``ssim``, ``ssim_nonsky``, ...)."""
        pred = self._render(cams)
        out: dict[str, list[float]] = {"psnr": [], "psnr_nonsky": []}
        for i, (target, valid) in enumerate(targets):
            p, t = pred[i].double(), target.double()
            out["psnr"].append(float(psnr(p, t)))
            out["psnr_nonsky"].append(float(psnr(p, t, valid)))
            if full:
                for name, ev in self.evaluators.items():
                    out.setdefault(name, []).append(float(ev.compute(pred[i], target, None)))
                    out.setdefault(name + NONSKY_SUFFIX, []).append(float(ev.compute(pred[i], target, valid)))
        return {k: sum(v) / len(v) for k, v in out.items()}

    def heldout_psnr(self) -> float:
        """Mean full-image PSNR (dB) of the held-out views at their given poses: the figure the
        run's evaluation reports for them (``psnr`` in metrics.json), for the current state."""
        assert self.held_cams is not None
        self._sync_representation()
        return self._scores(self.held_cams, self.held_targets, full=False)["psnr"]

    def _sync_representation(self) -> None:
        """Give a representation holding cameras the current refined poses, as ``finish`` will, so
        what is measured is what will be evaluated (dggt picks each camera's dynamic Gaussians
        and its sky range from them)."""
        if representation_cameras(self.rep) is not None and any(j is not None for j in self.from_rep):
            self._write_rep_cameras(self.corrected_c2w().detach())

    def _measure(self) -> dict[str, Any]:
        """Train / held-out image metrics and the optimised views' pose error, for the current state."""
        self._sync_representation()
        c2w = self.corrected_c2w().detach()
        out: dict[str, Any] = {"train": self._scores(self.cams.with_c2w(c2w), self.targets, full=True), "heldout": {}}
        if self.held_cams is not None:
            out["heldout"] = self._scores(self.held_cams, self.held_targets, full=True)
        if self.true_c2w is not None:
            rot, trans = pose_errors(c2w.double(), self.true_c2w)
            aligned = align_rigid(c2w, self.true_c2w) @ c2w.double()
            rot_a, trans_a = pose_errors(aligned, self.true_c2w)
            out["pose_error"] = {"rotation_deg": float(rot.mean()), "translation_m": float(trans.mean()),
                                 "rotation_deg_max": float(rot.max()), "translation_m_max": float(trans.max()),
                                 "aligned_rotation_deg": float(rot_a.mean()), "aligned_translation_m": float(trans_a.mean())}
        return out

    # ------------------------------------------------------------------------------------ step

    def _pick_views(self) -> list[int]:
        n, k = len(self.views), int(self.config.views_per_step)
        if k <= 0 or k >= n:
            return list(range(n))
        return sorted(torch.randperm(n, generator=self.generator)[:k].tolist())

    def step(self, step: int) -> dict[str, float]:
        # with a time budget (run.budget) running short, the schedule moves on with the fraction of it
        # used: a stage whose share of the budget is spent ends (keeping its best) and the next begins
        at = min(max(step, int(self.ctx.budget_fraction() * self.total_steps)), self.total_steps - 1)
        stage, local = self._locate(at)
        if stage != self.stage_index:
            if self.stage_index >= 0 and not self.stage_done:
                self._end_stage(self.stage_run)
            self._enter_stage(stage)
        if self.stage_done:  # stopped early by the guard: the rest of the stage is skipped
            return {"skipped": 1.0}
        cfg = self.config
        index = self._pick_views()
        if cfg.skip_first_frame and len(self.views) > 1:
            index = [i for i in index if i != 0] or [1]
        c2w = self.corrected_c2w()
        pred = self.ctx.renderer.render(self.rep, self._cameras(index, c2w), background=self.background).rgb
        target = torch.stack([self.targets[i][0] for i in index])
        valid = torch.stack([self.targets[i][1] for i in index])
        loss = fork_loss(pred, target, valid) if cfg.preset == "fork" else masked_photometric_loss(pred, target, valid, cfg.ssim_weight)
        assert self.optimizer is not None
        tensors = [p for g in self.optimizer.param_groups for p in g["params"]]
        roles = [g["name"] for g in self.optimizer.param_groups for _ in g["params"]]
        raw = [self.params[r] if r in self.shadows else p for r, p in zip(roles, tensors)]
        grads = torch.autograd.grad(loss, raw, allow_unused=True)
        for r, p, x, g in zip(roles, tensors, raw, grads):
            g = torch.zeros_like(x) if g is None else g
            if self.frozen_rows is not None and r in self.params and self.frozen_rows.shape[0] == g.shape[0]:
                g = g.masked_fill(self.frozen_rows.view(-1, *[1] * (g.ndim - 1)), 0.0)  # detached, as the fork
            if r in self.shadows:
                g = g * _ACTIVATION[r][2](p.detach())
            p.grad = g
        n = self.stage_steps[self.stages[stage]]
        decay = float(cfg.lr_final) ** (local / max(n - 1, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay
        pose_before = (self.omega.detach().clone(), self.tau.detach().clone())
        self.optimizer.step()
        with torch.no_grad():
            for r, x in self.shadows.items():
                new = _ACTIVATION[r][1](x.detach())
                if self.frozen_rows is not None and self.frozen_rows.shape[0] == new.shape[0]:
                    keep = self.frozen_rows.view(-1, *[1] * (new.ndim - 1))
                    new = torch.where(keep, self.params[r], new)
                self.params[r].copy_(new)
        for p in tensors:
            p.grad = None
        self.measured = None
        if cfg.select == "loss" and float(loss.detach()) < self.best_loss:
            # the fork keeps, with the lowest loss, the pose that produced it and the Gaussians after that step
            self.best_loss = float(loss.detach())
            self.snapshot_step = local
            self.snapshot = {"omega": pose_before[0], "tau": pose_before[1],
                             **{r: p.detach().clone() for r, p in self._trained(stage).items()}}
        logs = {"loss": float(loss.detach()), "stage": float(stage)}
        self.last_loss = logs["loss"]
        done = self.stage_run = local + 1
        if self._guarded(stage) and (done % max(1, int(cfg.eval_every)) == 0 or done == n):
            score = self.heldout_psnr()
            self._check(done, score)
            logs["heldout_psnr"] = score
            if self.guard.stopped and done < n:
                self.ctx.log(f"ttr: held-out PSNR has not improved for {self.guard.patience} checks; stopping stage "
                             f"{self.stages[stage]} at step {done}")
                self._end_stage(done)
                return logs
        if done == n:
            self._end_stage(done)
        return logs

    # --------------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """Pose corrections, optimizer, guard, best snapshot, generator, metrics so far (deep copies)."""
        return copy.deepcopy({
            "omega": self.omega.detach(),
            "tau": self.tau.detach(),
            "stage_index": self.stage_index,
            "stage_done": self.stage_done,
            "stage_run": self.stage_run,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "guard": self.guard.state_dict(),
            "snapshot": self.snapshot,
            "measured": self.measured,
            "stage_before": self.stage_before,
            "reports": self.reports,
            "history": self.history,
            "generator": self.generator.get_state(),
            "last_loss": self.last_loss,
            "shadows": {r: x.detach() for r, x in self.shadows.items()},
            "base_c2w": self.base_c2w,  # the representation's cameras follow the refined poses during the run
            "best_loss": self.best_loss,
            "snapshot_step": self.snapshot_step,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state_dict`` was taken (after ``setup`` on the restored representation)."""
        if "base_c2w" in state:
            self.base_c2w = state["base_c2w"].to(self.base_c2w)
            self.cams = self.cams.with_c2w(self.base_c2w)
        with torch.no_grad():
            self.omega.copy_(state["omega"].to(self.omega))
            self.tau.copy_(state["tau"].to(self.tau))
        self.stage_index = int(state["stage_index"])
        if self.stage_index >= 0:
            self.optimizer = self._build_optimizer(self.stage_index)
            with torch.no_grad():
                for r, x in state.get("shadows", {}).items():
                    self.shadows[r].copy_(x.to(self.shadows[r]))
            if state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
        self.stage_done = bool(state["stage_done"])
        self.stage_run = int(state.get("stage_run", 0))
        self.guard.load_state_dict(state["guard"])
        self.snapshot = {k: v.to(self.device) for k, v in state["snapshot"].items()} if state["snapshot"] else None
        self.measured = copy.deepcopy(state["measured"])
        self.stage_before = copy.deepcopy(state["stage_before"])
        self.reports = copy.deepcopy(state["reports"])
        self.history = [tuple(h) for h in state["history"]]  # type: ignore[misc]
        self.generator.set_state(state["generator"].cpu().to(torch.uint8))
        self.last_loss = float(state["last_loss"])
        self.best_loss = float(state.get("best_loss", float("inf")))
        self.snapshot_step = int(state.get("snapshot_step", -1))

    # --------------------------------------------------------------------------------- finish

    def finish(self) -> dict[str, Any]:
        """Write the refined poses back and report per-stage before/after metrics."""
        if self.stage_index >= 0 and not self.stage_done:  # stopped by the time budget inside a stage
            self._end_stage(self.stage_run)
        c2w = self.corrected_c2w().detach()
        self._write_back(c2w)
        report: dict[str, Any] = {
            "optimised_views": len(self.views),
            "heldout_views": len(self.held),
            "heldout_poses": "given (never optimised)",
            "stages": self.reports,
            "final_loss": self.last_loss,
        }
        if self.lpips_unavailable:
            report["lpips_unavailable"] = self.lpips_unavailable
        if self.reports:
            first, last = self.reports[0]["before"], self.reports[-1]["after"]
            report["train_psnr"] = {"before": first["train"]["psnr"], "after": last["train"]["psnr"]}
            report["train_psnr_nonsky"] = {"before": first["train"]["psnr_nonsky"], "after": last["train"]["psnr_nonsky"]}
            if self.held:
                report["heldout_psnr"] = {"before": first["heldout"]["psnr"], "after": last["heldout"]["psnr"]}
                report["heldout_psnr_nonsky"] = {"before": first["heldout"]["psnr_nonsky"], "after": last["heldout"]["psnr_nonsky"]}
            if "pose_error" in first:
                report["pose_error"] = {"before": first["pose_error"], "after": last["pose_error"]}
        return report

    def _write_back(self, c2w: Tensor) -> None:
        """Refined poses into the scene views' cameras and, when it holds them, the representation."""
        for i, view in enumerate(self.views):
            view.camera = view.camera.with_c2w(c2w[i : i + 1].to(view.camera.c2w))
        if representation_cameras(self.rep) is None or all(j is None for j in self.from_rep):
            return
        self._write_rep_cameras(c2w)

    def _write_rep_cameras(self, c2w: Tensor) -> None:
        rep_cams = representation_cameras(self.rep)
        assert rep_cams is not None
        new = rep_cams.c2w.detach().clone()
        for i, j in enumerate(self.from_rep):
            if j is not None:
                new[j] = c2w[i].to(new)
        try:
            self.rep.set_cameras(rep_cams.with_c2w(new))
        except NotImplementedError:
            if not self.warned_set_cameras:
                self.ctx.log(f"ttr: '{self.rep.name}' has no set_cameras(); its own cameras keep the unrefined poses")
            self.warned_set_cameras = True


def _valid(view: View) -> Tensor:
    """[H, W] bool: pixels that count (not sky; every pixel without a sky mask)."""
    if view.has("sky_mask"):
        return ~view.sky_mask.to(torch.bool)
    return torch.ones(view.height, view.width, dtype=torch.bool)
