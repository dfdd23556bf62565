"""``d2gv-fit``: fits every GoP of a ``d2gv`` representation, GoPs in parallel.

One GoP (:func:`fit_gop`, a pure function of a :class:`GopJob`, so it runs the same in this
process, a worker process or a Ray task):

1. static stage: the canonical Gaussians (no deformation) are fitted to all frames of the GoP
   with an L2 loss. The mean over frames of ||render − frame||² equals ||render − mean frame||²
   plus a constant, so this stage fits the GoP's mean frame: one render per step, same gradients.
2. deformation stage: Gaussians + MLP fitted to random mini-batches of frames at t = (i+1)/F.

Both stages use learnable pruning: the contribution of Gaussian n is multiplied by the
straight-through mask [sigmoid(m_n) > 0.2] and ``sparsity_weight · mean(sigmoid(m))`` is added to
the loss; the pruned Gaussians are removed at the end. One Adam for both stages: the Gaussians at
``lr_gaussians`` halved every ``lr_step_every`` steps, counted over both stages (so the
deformation stage starts at the decayed rate and does not undo the static fit); the MLP from
``lr_mlp`` to ``lr_mlp_final`` exponentially over the deformation stage. ``mlp_bf16`` runs the MLP
under bfloat16 autocast while fitting (decoding stays float32).

The refiner overrides ``run``: it hands one job per unfinished GoP to an executor
(``executors.py``), writes each finished GoP to ``<out_dir>/d2gv-gops/gop_XXXXX.*`` (checkpoint
module) so an interrupted fit resumes without redoing finished GoPs, stitches the GoPs back into
the representation and reports per-frame and mean PSNR / MS-SSIM, payload bytes and timings.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from recon_core import FrameRenderer, InputError, Interrupted, RunContext, Video, option
from recon_core.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from recon_core.imageops import psnr

from .deform import DeformSettings
from .executors import EXECUTORS, make_executor
from .gop_refiner import GopRefiner
from .renderer import render_gaussians
from .representation import D2GV, GopModel

__all__ = ["FitConfig", "GopJob", "GopResult", "fit_gop", "D2GVFit", "evaluate_frames"]


@dataclass
class FitConfig:
    static_steps: int = option(600, "steps of the static stage (canonical Gaussians vs all frames)", min=0)
    deform_steps: int = option(1500, "steps of the deformation stage", min=0)
    frames_per_step: int = option(2, "frames per deformation step (random mini-batch of the GoP)", min=1)
    lr_gaussians: float = option(5e-3, "Adam learning rate of positions, Cholesky factors and colours", min=0)
    lr_step_every: int = option(500, "halve the Gaussian learning rate every this many steps of a stage", min=1)
    lr_mlp: float = option(8e-4, "initial learning rate of the deformation MLP", min=0)
    lr_mlp_final: float = option(1.6e-5, "final learning rate of the MLP (exponential decay)", min=0)
    lr_mask: float = option(1e-2, "learning rate of the pruning logits", min=0)
    prune: bool = option(True, "learnable pruning (straight-through mask + sparsity penalty)")
    sparsity_weight: float = option(5e-4, "weight of mean(sigmoid(mask logits)) in the loss", min=0)
    executor: str = option("local", "where GoPs are fitted", choices=tuple(EXECUTORS))
    workers: int = option(0, "parallel GoP fits (0: one per CPU core, at most the number of GoPs)", min=0)
    threads_per_worker: int = option(0, "torch threads per worker (0: cores // workers, at least 1)", min=0)
    address: str = option("", "Ray cluster address for executor=ray (empty: start a local Ray instance)")
    work_dir: str = option("", "where finished GoPs are saved (empty: <run dir>/d2gv-gops, or a temp dir)")
    evaluate: bool = option(True, "render every frame after fitting and report PSNR / MS-SSIM")
    seed: int = option(0, "seed of the frame sampling")
    backend: str = option("auto", "rasteriser: auto (compiled C++ on CPU when it builds), cpp, torch", choices=("auto", "cpp", "torch"))
    mlp_bf16: bool = option(False, "run the deformation MLP in bfloat16 while fitting (CPU autocast: ~3x faster where the CPU has AVX512-BF16/AMX, slower elsewhere)")


@dataclass
class GopJob:
    """One unit of work: fit GoP ``index`` (frames ``start``..) from its initial state."""

    index: int
    start: int
    frames: Tensor  # [F, H, W, 3] float32 in [0, 1]
    state: dict[str, Tensor]  # GopModel.state_dict() to start from
    deform: dict[str, int]  # DeformSettings fields
    config: dict[str, Any]  # FitConfig fields
    seed: int


@dataclass
class GopResult:
    index: int
    state: dict[str, Tensor]
    stats: dict[str, float] = field(default_factory=dict)


def _optimizer(gop: GopModel, cfg: FitConfig) -> torch.optim.Optimizer:
    """One Adam for both stages, so the Gaussians keep their moments and their lr schedule across
    the switch (the MLP gets no gradients in the static stage)."""
    groups = [
        {"params": [gop.xy, gop.chol, gop.color], "lr": cfg.lr_gaussians, "name": "gaussians"},
        {"params": [gop.mask_logit], "lr": cfg.lr_mask if cfg.prune else 0.0, "name": "mask"},
        {"params": list(gop.deform.parameters()), "lr": 0.0, "name": "mlp"},
    ]
    return torch.optim.Adam(groups)


def _set_lrs(opt: torch.optim.Optimizer, cfg: FitConfig, step: int) -> None:
    """Learning rates at global ``step`` (static steps first, then deformation steps): the
    Gaussians' halves every ``lr_step_every`` steps; the MLP's goes lr_mlp → lr_mlp_final
    exponentially over the deformation stage (0 before it)."""
    for group in opt.param_groups:
        if group["name"] == "gaussians":
            group["lr"] = cfg.lr_gaussians * 0.5 ** (step // max(cfg.lr_step_every, 1))
        elif group["name"] == "mlp":
            k = step - cfg.static_steps
            frac = k / max(cfg.deform_steps - 1, 1)
            group["lr"] = 0.0 if k < 0 else cfg.lr_mlp * (cfg.lr_mlp_final / cfg.lr_mlp) ** frac


def _run_stage(
    gop: GopModel,
    opt: torch.optim.Optimizer,
    cfg: FitConfig,
    steps: range,
    length: int,
    size: tuple[int, int],
    batch: Callable[[], tuple[Tensor, Tensor]],
    *,
    deform: bool,
) -> None:
    """Adam steps ``steps`` (global indices) of L2 (+ sparsity) on the (local frames [F], targets
    [F, H, W, 3]) from ``batch``."""
    mask_mode = "straight-through" if cfg.prune else "none"
    for step in steps:
        _set_lrs(opt, cfg, step)
        local, target = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=deform and cfg.mlp_bf16):
            gaussians = gop.frame_gaussians(local, length, deform=deform, mask=mask_mode)
        render = render_gaussians(gaussians, *size, backend=cfg.backend)
        loss = torch.mean((render - target) ** 2)
        if cfg.prune:
            loss = loss + cfg.sparsity_weight * torch.sigmoid(gop.mask_logit).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def fit_gop(job: GopJob) -> GopResult:
    """Fit one GoP (static stage, deformation stage, pruning); returns its pruned state."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = FitConfig(**job.config)
    frames = job.frames.float()
    F, H, W, _ = frames.shape
    gop = GopModel(job.state["xy"].shape[0], DeformSettings(**job.deform))
    gop.load_tensors(job.state)
    gen = torch.Generator().manual_seed(job.seed)
    all_local = torch.arange(F)

    opt = _optimizer(gop, cfg)
    mean_frame = frames.mean(0, keepdim=True)  # static stage: same gradients as all frames (see top)
    _run_stage(gop, opt, cfg, range(cfg.static_steps), F, (H, W), lambda: (all_local[:1], mean_frame), deform=False)
    t_static = time.perf_counter() - t0

    per_step = max(1, min(cfg.frames_per_step, F))

    def random_frames() -> tuple[Tensor, Tensor]:
        local = torch.randperm(F, generator=gen)[:per_step]
        return local, frames[local]

    deform_steps = range(cfg.static_steps, cfg.static_steps + cfg.deform_steps)
    _run_stage(gop, opt, cfg, deform_steps, F, (H, W), random_frames, deform=True)

    before = gop.num_gaussians
    kept = gop.prune() if cfg.prune else before
    with torch.no_grad():
        render = render_gaussians(gop.frame_gaussians(all_local, F, mask="none"), H, W, backend=cfg.backend)
        fit_psnr = float(psnr(render, frames))
    stats = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "static_seconds": t_static,
        "gaussians_before": float(before),
        "gaussians_kept": float(kept),
        "psnr": fit_psnr,
    }
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

    def _job(self, rep: D2GV, video: Video, index: int, ctx: RunContext) -> GopJob:
        r = rep.gop_ranges()[index]
        frames = torch.stack([video.frame(i) for i in r]).float()
        state = {k: v.detach().cpu() for k, v in rep.gops[index].state_dict().items()}
        deform = asdict(rep.deform_settings)
        return GopJob(index, r.start, frames, state, deform, asdict(self.config), ctx.seed * 100003 + self.config.seed * 7919 + index)

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
        resume = getattr(ctx, "resume_state", None)
        if resume:
            self.load_state_dict(resume)
        log = ctx.log
        work = self._work_dir(ctx)
        ranges = rep.gop_ranges()
        for i in range(len(ranges)):
            if i not in self.done and self._restore(rep, work, i):
                self.done.add(i)
        todo = [i for i in range(len(ranges)) if i not in self.done]
        log(f"d2gv-fit: {len(ranges)} GoPs, {len(ranges) - len(todo)} already fitted, saving to {work}")
        should_stop = getattr(ctx, "should_stop", lambda: False)
        log_scalars = getattr(ctx, "log_scalars", lambda step, values: None)
        t0 = time.perf_counter()
        stats: dict[int, dict[str, float]] = {}
        if todo:
            executor = make_executor(
                self.config.executor,
                jobs=len(todo),
                workers=self.config.workers,
                threads_per_worker=self.config.threads_per_worker,
                address=self.config.address,
            )
            try:
                jobs = (self._job(rep, data, i, ctx) for i in todo)
                for result in executor.map_unordered(fit_gop, jobs):
                    rep.gops[result.index].load_tensors(result.state)
                    rep.gops[result.index].to(rep.gop_starts.device)
                    r = ranges[result.index]
                    save_checkpoint(work, {"frames": [r.start, r.stop], "state": result.state, "stats": result.stats}, f"gop_{result.index:05d}")
                    self.done.add(result.index)
                    stats[result.index] = result.stats
                    log_scalars(result.index, result.stats)  # one "step" per GoP in scalars.jsonl
                    log(
                        f"d2gv-fit: GoP {result.index} frames {r.start}-{r.stop - 1}: {result.stats['psnr']:.2f} dB, "
                        f"{int(result.stats['gaussians_kept'])} Gaussians, {result.stats['seconds']:.1f} s"
                    )
                    if should_stop():
                        break
            except KeyboardInterrupt:
                raise Interrupted(work) from None
            finally:
                executor.close()
            if len(self.done) < len(ranges):  # stopped on request: save where we are and return
                if getattr(ctx, "save_state", None) is not None:
                    ctx.save_state(len(self.done))
                return {"interrupted": True, "gops_done": sorted(self.done)}
        report: dict[str, Any] = {
            "gops": len(ranges),
            "train_seconds": time.perf_counter() - t0,
            "gop_stats": {str(k): v for k, v in sorted(stats.items())},
            "cpu_seconds": sum(s["cpu_seconds"] for s in stats.values()),
            "gaussians": rep.num_kept(),
            "bytes": rep.payload_bytes(),
            "bytes_per_frame": rep.payload_bytes() / max(rep.num_frames, 1),
        }
        if self.config.evaluate:
            report.update(evaluate_frames(rep, data, ctx.renderer))  # type: ignore[arg-type]  # d2gv: a FrameRenderer
            log(f"d2gv-fit: mean PSNR {report['mean_psnr']:.2f} dB" + (f", MS-SSIM {report['mean_ms_ssim']:.4f}" if "mean_ms_ssim" in report else ""))
        return report

    @property
    def total_steps(self) -> int:
        """Nominal step count (GoPs × steps per GoP); the work itself happens in ``run``."""
        return self.config.static_steps + self.config.deform_steps

