"""``d2gv-fit``: fits every GoP of a ``d2gv`` representation, GoPs in parallel.

One GoP (:func:`fit_gop`, a pure function of a :class:`GopJob`, so it runs the same in this
process, a worker process or a Ray task):

1. static stage: the canonical Gaussians (no deformation) are fitted to the frames of the GoP
   with an L2 loss. With ``sampling=random`` (cpu) it fits the GoP's mean frame: the mean over
   frames of ||render − frame||² equals ||render − mean frame||² plus a constant, so one render
   per step gives the same gradients as all frames. With ``sampling=sequential`` (paper) it
   fits the frames one after the other, as the original does.
2. deformation stage: Gaussians + MLP fitted to frames at t = (i+1)/F, a random mini-batch per
   step (cpu) or the frames in order, cycling (paper; the cycle continues from the static stage).

Learnable pruning: from step ``prune_start`` on, the contribution of Gaussian n is multiplied by
the straight-through mask [sigmoid(m_n) > 0.2], and every ``prune_every``-th step
``sparsity_weight · mean(sigmoid(m))`` is added to the loss; the pruned Gaussians are removed
at the end.

Presets (``preset``; ``auto`` follows ``d2gv.preset``), every option overriding its preset:

* ``cpu``: 1 000 static + 800 deformation steps, one random frame per step, the MLP in bfloat16;
  one Adam for everything: Gaussians at ``lr_gaussians`` halved every ``lr_step_every`` (a
  fraction of all steps, counted over both stages so the deformation stage starts at the decayed
  rate), mask logits at ``lr_mask``, the MLP from ``lr_mlp`` to ``lr_mlp_final`` exponentially
  over the deformation stage; pruning from step 0, the penalty (5e-4) every step. Every
  schedule is a fraction of the step counts, so it scales with ``static_steps``/``deform_steps``.
* ``paper``: the original's ``train_prune.py`` literally (Evan-sudo/D2GV): 10 000 coarse + 50 000
  fine iterations, one frame per step in order; Gaussians and mask logits with Adan (lr 5e-3,
  ``adan.py``) under StepLR (halved every 20 000 iterations); the MLP with Adam (eps 1e-15), lr
  8e-4 → 1.6e-5 exponentially over 50 000 fine iterations (its first fine step at the rate of
  iteration 10 000, as in the original, whose schedule is updated during the coarse stage too);
  pruning after fine iteration 30 000, the penalty 5e-3 on every 15th iteration. These step
  numbers stay literal whatever the step counts (set ``lr_step_every``/``prune_start`` to scale).
* ``codec``: ``cpu`` with 1 500 deformation steps (the Bunny figure of docs/benchmarks.md).

Time budget (``run.budget``, :mod:`recon_core.budget`): the refiner's share is split among the
GoPs still to fit when it starts, each GoP getting its own allowance of the budget's clock —
wall clock: the share over the number of waves of parallel GoPs (``ceil(GoPs / workers)``);
CPU time: the share over the GoPs (the workers' CPU seconds add up and are charged to the
share). A GoP's schedules (stage switch, learning rates, pruning start) follow
``max(step, fraction of its allowance used × steps)``, so a GoP whose allowance runs short skips
ahead through its schedule and ends, pruned and evaluated, when the allowance is spent; an
interrupted GoP keeps its allowance and the seconds it used in its ``.partial`` state. Worker
start-up and the final evaluation are outside the GoPs' allowances, so a wall-clock share can be
overrun by those (seconds).

Interrupts: the workers check a stop request every step (Ctrl-C or SIGTERM to them, or to this
process, which passes it on) and hand back their GoP's state mid-way (parameters, optimiser
moments, sampler state, next step); it is saved as ``gop_XXXXX.partial`` and a resumed fit
continues from it, bit-identically on CPU. Progress (GoPs done, each running GoP's step, ETA)
comes back from the workers while they run.

The refiner overrides ``run``: it hands one job per unfinished GoP to an executor
(``executors.py``), writes each finished GoP to ``<out_dir>/d2gv-gops/gop_XXXXX.*`` (checkpoint
module) so an interrupted fit resumes without redoing finished GoPs, stitches the GoPs back into
the representation and reports per-frame and mean PSNR / MS-SSIM, payload bytes and timings.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from recon_core import FrameRenderer, InputError, Interrupted, RunContext, Video, option
from recon_core.budget import Budget, BudgetClock
from recon_core.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from recon_core.imageops import psnr
from recon_core.progress import progress_bar

from . import executors
from .adan import Adan
from .deform import DeformSettings
from .executors import EXECUTORS, make_executor
from .gop_refiner import GopRefiner
from .renderer import render_gaussians
from .representation import D2GV, GopModel

__all__ = ["FitConfig", "FitSettings", "FIT_PRESETS", "GopJob", "GopResult", "fit_gop", "D2GVFit", "evaluate_frames"]

FIT_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "static_steps": 1000, "deform_steps": 800, "frames_per_step": 1, "sampling": "random", "optimizer": "adam",
        "lr_gaussians": 5e-3, "lr_step_every": 0.28, "lr_mlp": 8e-4, "lr_mlp_final": 1.6e-5, "lr_mask": 1e-2,
        "sparsity_weight": 5e-4, "prune_start": 0.0, "prune_every": 1, "mlp_bf16": True,
    },
    "paper": {
        "static_steps": 10000, "deform_steps": 50000, "frames_per_step": 1, "sampling": "sequential", "optimizer": "adan",
        "lr_gaussians": 5e-3, "lr_step_every": None, "lr_mlp": 8e-4, "lr_mlp_final": 1.6e-5, "lr_mask": 5e-3,
        "sparsity_weight": 5e-3, "prune_start": None, "prune_every": 15, "mlp_bf16": False,
    },
}
FIT_PRESETS["codec"] = {**FIT_PRESETS["cpu"], "deform_steps": 1500}  # the Bunny figure (docs/benchmarks.md)
"""What each ``d2gv-fit.preset`` sets; ``None`` schedules of ``paper`` are its literal step numbers
(:data:`PAPER_STEPS`)."""

PAPER_STEPS = {"lr_step": 20000, "fine_prune_after": 30000, "mlp_decay": 50000}
"""The original's literal schedule: StepLR period, fine iteration after which pruning starts,
horizon of the MLP's exponential decay."""


@dataclass
class FitConfig:
    preset: str = option("auto", "auto: the d2gv representation's preset; cpu: CPU-tuned (docs/benchmarks.md); paper: the original's train_prune.py schedule; codec: cpu with 1 500 deformation steps (the Bunny figure)", choices=("auto", *FIT_PRESETS))
    static_steps: int | None = option(None, "steps of the static stage (none: the preset's; cpu 1000, paper 10000)", min=0)
    deform_steps: int | None = option(None, "steps of the deformation stage (none: the preset's; cpu 800, codec 1500, paper 50000)", min=0)
    frames_per_step: int | None = option(None, "frames per step (none: the preset's, 1)", min=1)
    sampling: str | None = option(None, "frames per step: random (cpu; static stage on the mean frame) or sequential (paper: in order, cycling)", choices=("random", "sequential"))
    optimizer: str | None = option(None, "optimiser of Gaussians and mask logits: adam (cpu) or adan (paper); the MLP always uses Adam", choices=("adam", "adan"))
    lr_gaussians: float | None = option(None, "learning rate of positions, Cholesky factors and colours (none: the preset's, 5e-3)", min=0)
    lr_step_every: float | None = option(None, "halve the Gaussian learning rate every this fraction of all steps (none: the preset's; cpu 0.28, paper every 20 000 steps)", min=1e-6, max=1)
    lr_mlp: float | None = option(None, "initial learning rate of the deformation MLP (none: the preset's, 8e-4)", min=0)
    lr_mlp_final: float | None = option(None, "final learning rate of the MLP, exponential decay over the deformation stage (paper: over 50 000 steps)", min=0)
    lr_mask: float | None = option(None, "learning rate of the pruning logits (none: the preset's; cpu 1e-2, paper 5e-3 decayed with the Gaussians')", min=0)
    prune: bool = option(True, "learnable pruning (straight-through mask + sparsity penalty)")
    prune_start: float | None = option(None, "pruning starts after this fraction of all steps (none: the preset's; cpu 0, paper after fine iteration 30 000)", min=0, max=1)
    prune_every: int | None = option(None, "add the sparsity penalty every this many steps (none: the preset's; cpu 1, paper 15)", min=1)
    sparsity_weight: float | None = option(None, "weight of mean(sigmoid(mask logits)) in the loss (none: the preset's; cpu 5e-4, paper 5e-3)", min=0)
    mlp_bf16: bool | None = option(None, "run the deformation MLP in bfloat16 while fitting (none: the preset's; cpu on, paper off; ~3x faster where the CPU has AVX512-BF16/AMX)")
    executor: str = option("local", "where GoPs are fitted", choices=tuple(EXECUTORS))
    workers: int = option(0, "parallel GoP fits (0: one per CPU core, at most the number of GoPs)", min=0)
    threads_per_worker: int = option(0, "torch threads per worker (0: cores // workers, at least 1)", min=0)
    address: str = option("", "Ray cluster address for executor=ray (empty: start a local Ray instance)")
    work_dir: str = option("", "where finished GoPs are saved (empty: <run dir>/d2gv-gops, or a temp dir)")
    evaluate: bool = option(True, "render every frame after fitting and report PSNR / MS-SSIM")
    seed: int = option(0, "seed of the frame sampling")
    backend: str = option("auto", "rasteriser: auto (compiled C++ on CPU when it builds), cpp, torch", choices=("auto", "cpp", "torch"))
    log_every: float = option(30.0, "seconds between progress lines in the log (GoPs done, steps, ETA)", min=0)

    def settings(self, rep_preset: str = "cpu") -> "FitSettings":
        """The concrete schedule: the preset (``auto``: ``rep_preset``) with explicit options applied,
        every schedule in absolute steps."""
        preset = rep_preset if self.preset == "auto" else self.preset
        values = dict(FIT_PRESETS[preset])
        for key in values:
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        total = values["static_steps"] + values["deform_steps"]
        literal = preset == "paper"
        if values["lr_step_every"] is None:
            lr_step = PAPER_STEPS["lr_step"]
        else:
            lr_step = max(1, round(values["lr_step_every"] * total))
        if values["prune_start"] is None:
            prune_start = values["static_steps"] + PAPER_STEPS["fine_prune_after"]
        else:
            prune_start = round(values["prune_start"] * total)
        return FitSettings(
            static_steps=values["static_steps"], deform_steps=values["deform_steps"], frames_per_step=values["frames_per_step"],
            sampling=values["sampling"], optimizer=values["optimizer"], lr_gaussians=values["lr_gaussians"],
            lr_step=lr_step, lr_mlp=values["lr_mlp"], lr_mlp_final=values["lr_mlp_final"],
            mlp_decay=PAPER_STEPS["mlp_decay"] if literal else 0, lr_mask=values["lr_mask"],
            mask_decays=literal, prune=self.prune, prune_start=prune_start, prune_every=values["prune_every"],
            sparsity_weight=values["sparsity_weight"], mlp_bf16=bool(values["mlp_bf16"]), backend=self.backend,
        )


@dataclass(frozen=True)
class FitSettings:
    """The schedule of one GoP fit in absolute global steps (static steps first, then deformation
    steps); built by :meth:`FitConfig.settings`."""

    static_steps: int
    deform_steps: int
    frames_per_step: int = 1
    sampling: str = "random"
    optimizer: str = "adam"
    lr_gaussians: float = 5e-3
    lr_step: int = 500
    """Halve the Gaussians' (and with ``mask_decays`` the mask's) rate every this many steps."""
    lr_mlp: float = 8e-4
    lr_mlp_final: float = 1.6e-5
    mlp_decay: int = 0
    """0: lr_mlp → lr_mlp_final over the deformation stage; else the original's exponential decay
    over this many fine iterations (its first step at the rate of iteration ``static_steps``)."""
    lr_mask: float = 1e-2
    mask_decays: bool = False
    prune: bool = True
    prune_start: int = 0
    prune_every: int = 1
    sparsity_weight: float = 5e-4
    mlp_bf16: bool = False
    backend: str = "auto"

    @property
    def total(self) -> int:
        return self.static_steps + self.deform_steps


@dataclass
class GopJob:
    """One unit of work: fit GoP ``index`` (frames ``start``..) from its initial state, or from
    ``partial`` (the mid-GoP state an interrupted fit handed back) when given."""

    index: int
    start: int
    frames: Tensor  # [F, H, W, 3] float32 in [0, 1]
    state: dict[str, Tensor]  # GopModel.state_dict() to start from
    deform: dict[str, Any]  # DeformSettings fields
    config: dict[str, Any]  # FitSettings fields
    seed: int
    partial: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    """``{"clock": "wall" | "cpu", "seconds": s}``: this GoP's share of ``run.budget`` (None: no budget)."""


@dataclass
class GopResult:
    index: int
    state: dict[str, Tensor]
    stats: dict[str, float] = field(default_factory=dict)
    partial: dict[str, Any] | None = None
    """Set when the fit stopped early: the state to continue from (``GopJob.partial``)."""


def _optimizers(gop: GopModel, s: FitSettings) -> list[torch.optim.Optimizer]:
    """cpu: one Adam for all groups, so the Gaussians keep their moments and their schedule across
    the switch of stages (the MLP gets no gradients in the static stage). paper: Adan for
    Gaussians + mask logits, Adam (eps 1e-15) for the MLP, as the original."""
    gaussians = {"params": [gop.xy, gop.chol, gop.color], "lr": s.lr_gaussians, "name": "gaussians"}
    mask = {"params": [gop.mask_logit], "lr": s.lr_mask if s.prune else 0.0, "name": "mask"}
    mlp = {"params": list(gop.deform.parameters()), "lr": 0.0, "name": "mlp"}
    if s.optimizer == "adan":
        return [Adan([gaussians, mask]), torch.optim.Adam([mlp], eps=1e-15)]
    return [torch.optim.Adam([gaussians, mask, mlp])]


def _mlp_lr(s: FitSettings, k: int) -> float:
    """MLP rate at deformation step ``k`` (0-based)."""
    if s.mlp_decay:  # the original's get_expon_lr_func, set after each iteration (also in the coarse stage)
        t = min(max((k if k > 0 else s.static_steps) / s.mlp_decay, 0.0), 1.0)
    else:
        t = k / max(s.deform_steps - 1, 1)
    return math.exp(math.log(s.lr_mlp) * (1 - t) + math.log(s.lr_mlp_final) * t) if s.lr_mlp > 0 and s.lr_mlp_final > 0 else s.lr_mlp


def _set_lrs(opts: list[torch.optim.Optimizer], s: FitSettings, step: int) -> None:
    """Learning rates at global ``step``: the Gaussians' halve every ``lr_step`` steps (a step
    decay over both stages); the MLP's follows :func:`_mlp_lr` in the deformation stage (0 before)."""
    decay = 0.5 ** (step // max(s.lr_step, 1))
    for opt in opts:
        for group in opt.param_groups:
            if group["name"] == "gaussians":
                group["lr"] = s.lr_gaussians * decay
            elif group["name"] == "mask":
                group["lr"] = (s.lr_mask * (decay if s.mask_decays else 1.0)) if s.prune else 0.0
            elif group["name"] == "mlp":
                k = step - s.static_steps
                group["lr"] = 0.0 if k < 0 else _mlp_lr(s, k)


def _frames_at(s: FitSettings, step: int, F: int, gen: torch.Generator) -> Tensor | None:
    """Local frames of ``step``: None for the static stage's mean frame (random sampling), the
    cycle position for sequential sampling, a random subset otherwise."""
    per_step = max(1, min(s.frames_per_step, F))
    if s.sampling == "sequential":
        return (torch.arange(per_step) + step * per_step) % F
    if step < s.static_steps:
        return None
    return torch.randperm(F, generator=gen)[:per_step]


def _fit_steps(gop: GopModel, opts: list[torch.optim.Optimizer], s: FitSettings, frames: Tensor, first: int,
               gen: torch.Generator, index: int, clock: BudgetClock | None = None) -> tuple[int, int]:
    """Steps ``first`` .. ``s.total - 1`` of L2 (+ sparsity); with a budget ``clock`` the step
    jumps ahead to where the fraction of the allowance used puts the schedules. Returns (the next
    step to run, less than ``s.total`` when a stop was requested; the steps run)."""
    F, H, W, _ = frames.shape
    mean_frame = frames.mean(0, keepdim=True)
    link = executors.worker_link()
    step, ran = first, 0
    while True:
        if clock is not None:
            step = clock.scheduled_step(step, s.total)
        if step >= s.total:
            break
        if link.should_stop():
            return step, ran
        link.progress(index, step, s.total)
        _set_lrs(opts, s, step)
        deform = step >= s.static_steps
        local = _frames_at(s, step, F, gen)
        target = mean_frame if local is None else frames[local]
        local = torch.zeros(1, dtype=torch.long) if local is None else local
        pruning = s.prune and step >= s.prune_start
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=deform and s.mlp_bf16):
            gaussians = gop.frame_gaussians(local, F, deform=deform, mask="straight-through" if pruning else "none")
        render = render_gaussians(gaussians, H, W, backend=s.backend)
        loss = torch.mean((render - target) ** 2)
        if pruning and (step - s.prune_start + 1) % s.prune_every == 0:
            loss = loss + s.sparsity_weight * torch.sigmoid(gop.mask_logit).mean()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        step, ran = step + 1, ran + 1
    link.progress(index, s.total, s.total)
    return s.total, ran


def fit_gop(job: GopJob) -> GopResult:
    """Fit one GoP (static stage, deformation stage, pruning); returns its pruned state, or the
    state to continue from when a stop was requested (``GopResult.partial``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    s = FitSettings(**job.config)
    frames = job.frames.float()
    F, H, W, _ = frames.shape
    gop = GopModel(job.state["xy"].shape[0], DeformSettings(**job.deform))
    gop.load_tensors(job.state)
    gen = torch.Generator().manual_seed(job.seed)
    opts = _optimizers(gop, s)
    first = 0
    spent = {"seconds": 0.0, "cpu_seconds": 0.0, "steps_run": 0.0}
    budget = job.budget
    if job.partial is not None:
        gop.load_tensors(job.partial["state"])
        opts = _optimizers(gop, s)  # on the loaded parameters
        for opt, saved in zip(opts, job.partial["optimizers"]):
            opt.load_state_dict(saved)
        gen.set_state(job.partial["generator"])
        first = int(job.partial["step"])
        spent = {k: float(job.partial.get(k, 0.0)) for k in spent}
        if budget is not None and job.partial.get("budget") is not None:  # keep the allowance it started with
            budget = job.partial["budget"]
    clock = None
    if budget is not None:
        used = spent["cpu_seconds" if budget["clock"] == "cpu" else "seconds"]
        clock = BudgetClock(Budget(float(budget["seconds"]), budget["clock"]), float(budget["seconds"]), used=used).start()
    step, ran = _fit_steps(gop, opts, s, frames, first, gen, job.index, clock)
    seconds = spent["seconds"] + time.perf_counter() - t0
    session_cpu = time.process_time() - c0
    cpu_seconds = spent["cpu_seconds"] + session_cpu
    steps_run = spent["steps_run"] + ran
    if step < s.total:
        partial = {
            "step": step,
            "state": {k: v.detach().clone() for k, v in gop.state_dict().items()},
            "optimizers": [opt.state_dict() for opt in opts],
            "generator": gen.get_state(),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "steps_run": steps_run,
            "budget": budget,
        }
        return GopResult(job.index, partial["state"], {"step": float(step), "session_cpu_seconds": session_cpu}, partial)

    before = gop.num_gaussians
    kept = gop.prune() if s.prune else before
    all_local = torch.arange(F)
    with torch.no_grad():
        render = render_gaussians(gop.frame_gaussians(all_local, F, mask="none"), H, W, backend=s.backend)
        fit_psnr = float(psnr(render, frames))
    stats = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "gaussians_before": float(before),
        "gaussians_kept": float(kept),
        "psnr": fit_psnr,
        "steps_run": float(steps_run),
        "session_cpu_seconds": session_cpu,
    }
    if budget is not None:
        stats["budget_seconds"] = float(budget["seconds"])
    return GopResult(job.index, {k: v.detach().clone() for k, v in gop.state_dict().items()}, stats)


def evaluate_frames(rep: D2GV, video: Video, renderer: FrameRenderer | None = None, batch: int = 8) -> dict[str, Any]:
    """Render every frame (hard masks) with ``renderer`` (the run's; default ``torch-2dgs``) and
    compare with the video: per-frame and mean PSNR / MS-SSIM."""
    from recon_core import imageops

    from .renderer import Torch2DGS

    renderer = renderer or Torch2DGS()
    ms_ssim = getattr(imageops, "ms_ssim", None)
    psnrs: list[float] = []
    msssims: list[float] = []
    with torch.inference_mode():
        for s in range(0, video.num_frames, batch):
            idx = torch.arange(s, min(s + batch, video.num_frames))
            pred = renderer.render_frames(rep, idx).rgb.cpu()
            for k, i in enumerate(idx.tolist()):
                target = video.frame(i)
                psnrs.append(float(psnr(pred[k], target)))
                if ms_ssim is not None:
                    msssims.append(float(ms_ssim(pred[k], target)))
    out: dict[str, Any] = {"psnr": psnrs, "mean_psnr": sum(psnrs) / len(psnrs)}
    if msssims:
        out.update({"ms_ssim": msssims, "mean_ms_ssim": sum(msssims) / len(msssims)})
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class _Progress:
    """Steps of the running GoPs as the workers report them → the progress bar and, every
    ``log_every`` seconds (and when the first step is reported), a log line with the ETA."""

    def __init__(self, advance: Callable[..., None], log: Callable[[str], None], gops: int, done: int, steps: int,
                 log_every: float) -> None:
        self.advance, self.log, self.gops, self.done, self.steps, self.log_every = advance, log, gops, done, steps, log_every
        self.step: dict[int, int] = {}
        self.first: dict[int, int] = {}  # step each GoP started at in this session (resumed GoPs > 0)
        self.t0 = time.perf_counter()
        self.last_log: float | None = None
        self.done_steps = 0  # steps of the GoPs finished in this session

    def __call__(self, index: int, step: int, total: int) -> None:
        self.first.setdefault(index, step)
        before = self.step.get(index, self.first[index])
        self.step[index] = step
        self.advance(max(step - before, 0), gops=f"{self.done}/{self.gops}")
        now = time.perf_counter()
        if self.last_log is None or (self.log_every and now - self.last_log >= self.log_every):
            self.last_log = now
            self.log(self.line())

    def finished(self, index: int) -> None:
        self.done += 1
        self.done_steps += self.steps - self.first.get(index, 0)
        self.step.pop(index, None)
        self.advance(0, gops=f"{self.done}/{self.gops}")

    def line(self) -> str:
        running = ", ".join(f"GoP {i} step {s}/{self.steps}" for i, s in sorted(self.step.items()))
        run_steps = sum(s - self.first[i] for i, s in self.step.items()) + self.done_steps
        left = (self.gops - self.done) * self.steps - sum(self.step.values())
        elapsed = time.perf_counter() - self.t0
        eta = f", ETA {_duration(elapsed / run_steps * left)}" if run_steps > 0 else ""
        return f"d2gv-fit: {self.done}/{self.gops} GoPs done; {running or 'starting'}{eta}"


class D2GVFit(GopRefiner):
    """Fits every GoP of a ``d2gv`` representation (static + deformation stages, pruning) in parallel."""

    name = "d2gv-fit"
    description = "D2GV fitting: static then deformation stage per GoP, learnable pruning, GoPs in parallel"
    Config = FitConfig
    requires = frozenset({"gaussians-2d", "dynamic"})

    def _work_dir(self, ctx: RunContext) -> Path:
        if self.config.work_dir:
            return Path(self.config.work_dir)
        if ctx.out_dir is not None:
            return Path(ctx.out_dir) / "d2gv-gops"
        return Path(tempfile.mkdtemp(prefix="d2gv-gops-"))

    def _settings(self, rep: D2GV | None = None) -> FitSettings:
        return self.config.settings(getattr(getattr(rep, "config", None), "preset", "cpu"))

    def _job(self, rep: D2GV, video: Video, index: int, ctx: RunContext, work: Path, budget: dict[str, Any] | None = None) -> GopJob:
        r = rep.gop_ranges()[index]
        frames = torch.stack([video.frame(i) for i in r]).float()
        state = {k: v.detach().cpu() for k, v in rep.gops[index].state_dict().items()}
        deform = asdict(rep.deform_settings)
        seed = ctx.seed * 100003 + self.config.seed * 7919 + index
        job = GopJob(index, r.start, frames, state, deform, asdict(self._settings(rep)), seed, budget=budget)
        name = f"gop_{index:05d}.partial"
        if checkpoint_exists(work, name):
            saved = load_checkpoint(work, name)
            if saved.get("frames") == [r.start, r.stop] and saved.get("settings") == job.config and saved.get("seed") == seed:
                job.partial = saved["partial"]
        return job

    def _restore(self, rep: D2GV, work: Path, index: int) -> bool:
        """Load GoP ``index`` from the work dir when it was finished for the same frame range."""
        name = f"gop_{index:05d}"
        if not checkpoint_exists(work, name):
            return False
        saved = load_checkpoint(work, name)
        r = rep.gop_ranges()[index]
        if saved.get("frames") != [r.start, r.stop]:
            return False
        rep.gops[index].load_tensors(saved["state"])
        return True

    def run(self, rep: D2GV, data: Video, ctx: RunContext) -> dict[str, Any]:  # type: ignore[override]
        """Fit all unfinished GoPs through the configured executor; return the fit report."""
        if not isinstance(data, Video) or not isinstance(rep, D2GV):
            raise InputError("d2gv-fit fits a d2gv representation to a video")
        resume = ctx.resume_state
        if resume:
            self.load_state_dict(resume)
        log = ctx.log
        work = self._work_dir(ctx)
        ranges = rep.gop_ranges()
        for i in range(len(ranges)):
            if i not in self.done and self._restore(rep, work, i):
                self.done.add(i)
        todo = [i for i in range(len(ranges)) if i not in self.done]
        settings = self._settings(rep)
        log(f"d2gv-fit: {len(ranges)} GoPs, {len(ranges) - len(todo)} already fitted, {settings.total} steps per GoP, saving to {work}")
        asked = ctx.should_stop
        stopped = False  # a worker stopped on its own (SIGTERM to it): stop the others too

        def should_stop() -> bool:
            return stopped or bool(asked())

        log_scalars = ctx.log_scalars
        t0 = time.perf_counter()
        stats: dict[int, dict[str, float]] = {}
        budget = None
        if todo:
            executor = make_executor(
                self.config.executor,
                jobs=len(todo),
                workers=self.config.workers,
                threads_per_worker=self.config.threads_per_worker,
                address=self.config.address,
            )
            budget = self._gop_budget(ctx, executor, len(todo))
            if budget is not None:
                log(f"d2gv-fit: {budget['seconds']:.1f} s of {ctx.budget.budget} per GoP")  # type: ignore[union-attr]
            try:
                with progress_bar("d2gv-fit", total=len(todo) * settings.total) as advance:
                    progress = _Progress(advance, log, len(ranges), len(ranges) - len(todo), settings.total, self.config.log_every)
                    jobs = (self._job(rep, data, i, ctx, work, budget) for i in todo)
                    for result in executor.map_unordered(fit_gop, jobs, on_progress=progress, should_stop=should_stop):
                        r = ranges[result.index]
                        if ctx.budget is not None and ctx.budget.budget.clock == "cpu" and not executor.in_process:
                            ctx.budget.charge(result.stats.get("session_cpu_seconds", 0.0))  # the worker's CPU time
                        if result.partial is not None:  # stopped mid-GoP: keep its progress for --resume
                            stopped = True
                            if result.partial["step"] > 0:
                                save_checkpoint(work, {"frames": [r.start, r.stop], "settings": asdict(settings),
                                                       "seed": ctx.seed * 100003 + self.config.seed * 7919 + result.index,
                                                       "partial": result.partial}, f"gop_{result.index:05d}.partial")
                                log(f"d2gv-fit: GoP {result.index} stopped at step {result.partial['step']}/{settings.total}; saved")
                            continue
                        rep.gops[result.index].load_tensors(result.state)
                        rep.gops[result.index].to(rep.gop_starts.device)
                        save_checkpoint(work, {"frames": [r.start, r.stop], "state": result.state, "stats": result.stats}, f"gop_{result.index:05d}")
                        for suffix in (".json", ".safetensors"):  # the finished GoP replaces its partial state
                            (work / f"gop_{result.index:05d}.partial{suffix}").unlink(missing_ok=True)
                        self.done.add(result.index)
                        stats[result.index] = result.stats
                        progress.finished(result.index)
                        log_scalars(result.index, result.stats)  # one "step" per GoP in scalars.jsonl
                        log(
                            f"d2gv-fit: GoP {result.index} frames {r.start}-{r.stop - 1}: {result.stats['psnr']:.2f} dB, "
                            f"{int(result.stats['gaussians_kept'])} Gaussians, {result.stats['seconds']:.1f} s ({progress.done}/{len(ranges)} GoPs)"
                        )
            except KeyboardInterrupt:  # a second Ctrl-C: workers are killed, finished GoPs are on disk
                executor.close(force=True)
                raise Interrupted(work) from None
            finally:
                executor.close()
            if len(self.done) < len(ranges):  # stopped on request: save where we are and return
                return {**self.stopped_early(ctx), "stopped": stopped}
        report: dict[str, Any] = {
            "gops": len(ranges),
            "train_seconds": time.perf_counter() - t0,
            "gop_stats": {str(k): v for k, v in sorted(stats.items())},
            "cpu_seconds": sum(s["cpu_seconds"] for s in stats.values()),
            "gaussians": rep.num_kept(),
            "bytes": rep.payload_bytes(),
            "bytes_per_frame": rep.payload_bytes() / max(rep.num_frames, 1),
        }
        if todo and budget is not None:
            report["gop_budget_seconds"] = budget["seconds"]
        if self.config.evaluate:
            report.update(evaluate_frames(rep, data, ctx.renderer))  # type: ignore[arg-type]  # d2gv: a FrameRenderer
            log(f"d2gv-fit: mean PSNR {report['mean_psnr']:.2f} dB" + (f", MS-SSIM {report['mean_ms_ssim']:.4f}" if "mean_ms_ssim" in report else ""))
        return report

    @staticmethod
    def _gop_budget(ctx: RunContext, executor: executors.Executor, gops: int) -> dict[str, Any] | None:
        """Each unfinished GoP's allowance of what is left of this refiner's budget share: over the
        waves of parallel GoPs for wall clock, over the GoPs for CPU time (None: no budget)."""
        clock = ctx.budget
        if clock is None or gops <= 0:
            return None
        left = max(clock.allowance - clock.used(), 0.0)
        parts = gops if clock.budget.clock == "cpu" else math.ceil(gops / max(executor.parallel, 1))
        return {"clock": clock.budget.clock, "seconds": left / parts}

    @property
    def total_steps(self) -> int:
        """Nominal step count (steps per GoP of the preset + options); the work happens in ``run``."""
        return self._settings().total
