"""D2GV encoder: quantisation, quantisation-aware fine-tune and the ``.d2gv`` bitstream.

Following GaussianImage's compression (Xinjie-Q/GaussianImage, ``gaussianimage_cholesky.py`` and
``quantize.py``) and D2GV (Evan-sudo/D2GV), with the grids of :mod:`.bitstream`:

* positions: GaussianImage keeps the pre-tanh positions in float16; here ``tanh(xy)`` goes on a
  grid of ``pos_step`` pixels and is delta-coded in raster order (order-free, see bitstream);
* Cholesky factors: GaussianImage quantises them to 6 bits between learned per-channel bounds;
  here a fixed step of ``chol_step`` pixels, the symbols entropy-coded (the bounds need no
  training and re-quantising a quantised model gives it back unchanged);
* colours (``d2gv.q_color_codec``): ``uniform``, a grid of ``color_step`` with entropy coding
  (idempotent, no codebook per GoP; the default), or ``rvq``, GaussianImage's residual vector
  quantisation (``VectorQuantizer(codebook_dim=3, codebook_size=8, num_quantizers=2,
  kmeans_iters=5)`` over ``vector_quantize_pytorch``'s ``ResidualVQ`` with decay 0.8 and
  commitment weight 1): per GoP ``color_stages`` codebooks of ``color_codebook`` codewords,
  k-means initialised (5 iterations) on the colours (stage by stage on the residuals), then during
  the fine-tune each stage quantises the residual of the previous ones (nearest codeword, straight-
  through gradient), the commitment loss ``Σ_s mean((r_s − q_s)²)`` is added to the L2 loss and
  the codebooks follow the exponential moving averages of their assigned residuals (decay 0.8,
  Laplace-smoothed counts) — :class:`ResidualVQ` (own implementation of those rules). At the end
  each colour takes the codeword combination nearest to it (:func:`~.bitstream.rvq_indices`), and
  the codebooks are stored in the GoP (``GopModel.color_codebook``) and the chunk (float32);
* the deformation MLP (not quantised by either released code): every tensor symmetric-uniform on
  ``2^(mlp_bits-1) - 1`` levels of its largest magnitude;
* a short quantisation-aware fine-tune: the forward pass uses the dequantised values, gradients
  pass straight through the rounding (GaussianImage's ``ste`` / ``FakeQuantizationHalf``);
* entropy coding: ``constriction``'s ANS coder under each stream's categorical histogram, as
  GaussianImage's ``compress_matrix_flatten_categorical`` does.

The refiner ``d2gv-compress`` runs the fine-tune on a fitted representation and leaves it on the
quantisation grid, so ``recon export RUN --format d2gv`` writes exactly the model that was
evaluated; ``D2GV.export(.., "d2gv")`` calls :func:`export_bitstream`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from recon_core import InputError, RunContext, Video, option
from recon_core.budget import BudgetClock
from recon_core.io import write_bytes
from recon_core.progress import progress_bar

from .bitstream import (
    QuantGrid,
    QuantisedGop,
    cholesky_min_symbol,
    cholesky_values,
    encode_gop_chunk,
    header_for,
    mlp_values,
    position_symbols,
    position_values,
    rvq_indices,
    rvq_values,
    uniform_values,
    write_bitstream,
)
from .gop_refiner import GopRefiner
from .representation import CHOL_BOUND, MASK_THRESHOLD, D2GV, GopModel

__all__ = ["CompressConfig", "D2GVCompress", "grid_of", "quantise_gop", "finetune_quantised", "encode_representation", "export_bitstream"]


def grid_of(rep: D2GV) -> QuantGrid:
    """The quantisation grid of ``rep`` (its ``q_*`` options)."""
    c = rep.config
    return QuantGrid(pos_step=c.q_pos_step, chol_step=c.q_chol_step, color_step=c.resolved("q_color_step"), mlp_bits=c.resolved("q_mlp_bits"),
                     color_codec=c.q_color_codec, color_codebook=c.q_color_codebook, color_stages=c.q_color_stages)


# ------------------------------------------------------------------------------ quantisers


def cholesky_symbols(chol_raw: Tensor, grid: QuantGrid) -> Tensor:
    """[N, 3] int64 symbols of raw Cholesky parameters (the factor ``GopModel.cholesky`` uses)."""
    bound = chol_raw.new_tensor([CHOL_BOUND, 0.0, CHOL_BOUND])
    factor = chol_raw.detach().float() + bound
    k = torch.round(factor / grid.chol_step).long()
    low = cholesky_min_symbol(grid)
    k[:, 0].clamp_(min=low)
    k[:, 2].clamp_(min=low)
    return k


def mlp_step(w: Tensor, bits: int) -> Tensor:
    """float32 step of a symmetric ``bits``-bit grid over ``max |w|`` (1 for an all-zero tensor)."""
    levels = 2 ** (bits - 1) - 1
    w = w.detach().float()
    m = w.abs().max() if w.numel() else torch.zeros(())
    if m <= 0:
        return torch.ones(())
    step = m / levels
    # A tensor already on a grid (a decoded model) keeps that grid exactly: m / levels can miss its
    # step by an ulp, so try the neighbouring floats too (makes quantisation idempotent).
    down, up = step, step
    candidates = [step]
    for _ in range(2):
        down, up = torch.nextafter(down, torch.zeros(())), torch.nextafter(up, torch.full((), float("inf")))
        candidates += [down, up]
    for s in candidates:
        if torch.equal(torch.round(w / s) * s, w):
            return s
    return step


def mlp_symbols(w: Tensor, step: Tensor, bits: int) -> Tensor:
    levels = 2 ** (bits - 1) - 1
    return torch.round(w.detach().float() / step).clamp(-levels, levels).long()


class ResidualVQ:
    """Residual vector quantisation of [N, D] vectors as GaussianImage trains it (module docstring):
    ``stages`` codebooks of ``size`` codewords, k-means initialisation, greedy stage-by-stage
    assignment of residuals, exponential-moving-average codebook updates."""

    def __init__(self, stages: int, size: int, *, decay: float = 0.8, kmeans_iters: int = 5, eps: float = 1e-5,
                 seed: int = 0) -> None:
        self.stages, self.size, self.decay, self.kmeans_iters, self.eps = stages, size, decay, kmeans_iters, eps
        self.gen = torch.Generator().manual_seed(seed)
        self.codebook = torch.zeros(0, 0, 3)
        self.cluster_size = torch.zeros(0, 0)
        self.embed_avg = torch.zeros(0, 0, 3)

    def _kmeans(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Means and cluster sizes after ``kmeans_iters`` Lloyd iterations from ``size`` random
        samples of ``x`` (an empty cluster keeps its mean)."""
        n = x.shape[0]
        pick = torch.randint(n, (self.size,), generator=self.gen) if n < self.size else torch.randperm(n, generator=self.gen)[: self.size]
        means = x[pick].clone()
        bins = torch.zeros(self.size)
        for _ in range(self.kmeans_iters):
            assign = torch.cdist(x, means).argmin(dim=1)
            bins = torch.bincount(assign, minlength=self.size).float()
            sums = torch.zeros_like(means).index_add_(0, assign, x)
            means = torch.where(bins[:, None] > 0, sums / bins.clamp(min=1)[:, None], means)
        return means, bins

    def initialise(self, x: Tensor, codebook: Tensor | None = None) -> "ResidualVQ":
        """k-means per stage on the residuals of ``x`` [N, D], or start from a stored ``codebook``."""
        x = x.detach().float()
        if codebook is not None and codebook.numel():
            self.codebook = codebook.detach().float().clone()
            self.cluster_size = torch.stack([torch.bincount(i, minlength=self.size).float() for i in self.assign(x).T])
        else:
            books, sizes, residual = [], [], x
            for _ in range(self.stages):
                means, bins = self._kmeans(residual) if residual.shape[0] else (torch.zeros(self.size, x.shape[1]), torch.zeros(self.size))
                books.append(means)
                sizes.append(bins)
                residual = residual - means[torch.cdist(residual, means).argmin(dim=1)] if residual.shape[0] else residual
            self.codebook, self.cluster_size = torch.stack(books), torch.stack(sizes)
        self.embed_avg = self.codebook * self.cluster_size[..., None]
        return self

    def assign(self, x: Tensor) -> Tensor:
        """[N, S] greedy indices: stage s takes the codeword nearest to what stages < s left."""
        residual, out = x.detach().float(), []
        for s in range(self.stages):
            idx = torch.cdist(residual, self.codebook[s]).argmin(dim=1) if residual.shape[0] else torch.zeros(0, dtype=torch.long)
            out.append(idx)
            residual = residual - self.codebook[s][idx]
        return torch.stack(out, dim=1)

    def quantise(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(straight-through quantised x, commitment loss, indices) with the current codebooks."""
        idx = self.assign(x)
        residual, q_sum, commit = x, torch.zeros_like(x), x.new_zeros(())
        for s in range(self.stages):
            q = self.codebook[s][idx[:, s]].to(x)
            commit = commit + torch.mean((residual - q.detach()) ** 2)
            q_sum = q_sum + q
            residual = residual - q.detach()
        return x + (q_sum - x).detach(), commit, idx

    @torch.no_grad()
    def update(self, x: Tensor, idx: Tensor) -> None:
        """One EMA step of every stage's codebook towards the mean of the residuals assigned to
        each codeword (counts Laplace-smoothed so an unused codeword keeps a finite value)."""
        residual = x.detach().float()
        for s in range(self.stages):
            bins = torch.bincount(idx[:, s], minlength=self.size).float()
            sums = torch.zeros(self.size, residual.shape[1]).index_add_(0, idx[:, s], residual)
            self.cluster_size[s].mul_(self.decay).add_(bins, alpha=1 - self.decay)
            self.embed_avg[s].mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size[s].sum()
            smoothed = (self.cluster_size[s] + self.eps) / (n + self.size * self.eps) * n
            residual = residual - self.codebook[s][idx[:, s]]
            self.codebook[s] = self.embed_avg[s] / smoothed[:, None]


def rvq_of(gop: GopModel, colors: Tensor, grid: QuantGrid, seed: int = 0) -> ResidualVQ:
    """The residual VQ of a GoP's colours: its stored codebooks when they match the grid, else k-means."""
    stored = gop.color_codebook.detach().cpu()
    ok = tuple(stored.shape) == (grid.color_stages, grid.color_codebook, 3)
    return ResidualVQ(grid.color_stages, grid.color_codebook, seed=seed).initialise(colors, stored if ok else None)


def kept_copy(gop: GopModel) -> GopModel:
    """A CPU float32 copy of ``gop`` holding only the Gaussians its hard mask keeps."""
    out = copy.deepcopy(gop).cpu().float()
    out.prune()
    return out


def quantise_gop(gop: GopModel, width: int, height: int, grid: QuantGrid) -> QuantisedGop:
    """Symbols of the Gaussians ``gop`` keeps and of its MLP, in bitstream order."""
    keep = torch.sigmoid(gop.mask_logit.detach()) > MASK_THRESHOLD
    kx, ky = position_symbols(gop.xy.detach()[keep].cpu(), width, height, grid)
    chol = cholesky_symbols(gop.chol.detach()[keep].cpu(), grid)
    colors = gop.color.detach()[keep].cpu().float()
    codebook = None
    if grid.color_codec == "rvq":
        codebook = rvq_of(gop, colors, grid).codebook
        color = rvq_indices(colors, codebook)
    else:
        color = torch.round(colors / grid.color_step).long()
    mlp, steps = [], []
    for w in gop.deform.state_dict().values():
        step = mlp_step(w.cpu(), grid.mlp_bits)
        mlp.append(mlp_symbols(w.cpu(), step, grid.mlp_bits))
        steps.append(step)
    return QuantisedGop(kx, ky, chol, color, mlp, torch.stack(steps) if steps else torch.zeros(0), codebook).sort()


# ------------------------------------------------------------------------------ fine-tune


class _FakeQuant(nn.Module):
    """Parametrisation ``x ↦ x + (q(x) − x).detach()``: dequantised forward, identity gradient."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            q = self.fn(x)
        return x + (q - x).detach()


class _RVQFake(nn.Module):
    """Parametrisation of the colours by a :class:`ResidualVQ`: straight-through quantised forward;
    keeps the last commitment loss and indices for the loss and the codebook update."""

    def __init__(self, rvq: ResidualVQ) -> None:
        super().__init__()
        self.rvq = rvq
        self.commit: Tensor = torch.zeros(())
        self.idx: Tensor = torch.zeros(0, dtype=torch.long)

    def forward(self, x: Tensor) -> Tensor:
        q, self.commit, self.idx = self.rvq.quantise(x)
        return q


def _fake_quantise(gop: GopModel, width: int, height: int, grid: QuantGrid) -> None:
    """Register straight-through quantisers on every parameter the bitstream stores (residual-VQ
    colours are quantised in :func:`finetune_quantised`, which also trains their codebooks)."""
    parametrize.register_parametrization(gop, "xy", _FakeQuant(lambda x: position_values(*position_symbols(x, width, height, grid), width, height, grid)))
    parametrize.register_parametrization(gop, "chol", _FakeQuant(lambda x: cholesky_values(cholesky_symbols(x, grid), grid)))
    if grid.color_codec == "uniform":
        parametrize.register_parametrization(gop, "color", _FakeQuant(lambda x: uniform_values(torch.round(x / grid.color_step), grid.color_step)))

    def fn(w: Tensor) -> Tensor:
        step = mlp_step(w, grid.mlp_bits)
        return mlp_values(mlp_symbols(w, step, grid.mlp_bits), step)

    targets = [(m, name) for m in gop.deform.modules() for name, _ in m.named_parameters(recurse=False)]
    for module, name in targets:  # listed first: registering adds modules
        parametrize.register_parametrization(module, name, _FakeQuant(fn))


def finetune_quantised(
    gop: GopModel,
    frames: Tensor,
    grid: QuantGrid,
    steps: int,
    *,
    lr_gaussians: float = 1e-3,
    lr_mlp: float = 1e-4,
    frames_per_step: int = 1,
    seed: int = 0,
    backend: str = "auto",
    on_step: Callable[[], None] | None = None,
    clock: BudgetClock | None = None,
) -> GopModel:
    """Quantisation-aware fine-tune of a (pruned, CPU) GoP model in place; returns it.

    Adam on L2 between frames [F, H, W, 3] and renders of the *dequantised* model (straight-through
    rounding); the learning rates decay linearly to 0. The mask logits are frozen. ``on_step``
    is called after every step (progress). With a budget ``clock`` (started) the schedule follows
    ``max(step, fraction of its allowance used × steps)`` and ends when the allowance is spent.
    """
    from .renderer import render_gaussians

    if steps <= 0:
        return gop
    F, H, W, _ = frames.shape
    rvq = _RVQFake(rvq_of(gop, gop.color.detach().cpu().float(), grid, seed)) if grid.color_codec == "rvq" else None
    _fake_quantise(gop, W, H, grid)
    if rvq is not None:
        parametrize.register_parametrization(gop, "color", rvq)
    groups = [
        {"params": [gop.parametrizations.xy.original, gop.parametrizations.chol.original, gop.parametrizations.color.original], "lr": lr_gaussians},
        {"params": list(gop.deform.parameters()), "lr": lr_mlp},
    ]
    opt = torch.optim.Adam(groups)
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(seed)
    per_step = max(1, min(frames_per_step, F))
    step = 0
    while True:
        if clock is not None:
            step = clock.scheduled_step(step, steps)
        if step >= steps:
            break
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * (1 - step / steps)
        local = torch.randperm(F, generator=gen)[:per_step]
        render = render_gaussians(gop.frame_gaussians(local, F, mask="none"), H, W, backend=backend)
        loss = torch.mean((render - frames[local]) ** 2)
        if rvq is not None:  # GaussianImage: + the commitment loss (weight 1), codebooks by EMA
            loss = loss + rvq.commit
            rvq.rvq.update(gop.parametrizations.color.original.detach(), rvq.idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if on_step is not None:
            on_step()
    for module in [m for m in gop.modules() if parametrize.is_parametrized(m)]:
        for name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    if rvq is not None:  # the colours on their nearest codeword combination; the codebooks kept with them
        book = rvq.rvq.codebook.clone()
        with torch.no_grad():
            gop.color.copy_(rvq_values(rvq_indices(gop.color.detach().cpu(), book), book).to(gop.color))
        gop.color_codebook = book.to(gop.color.device)
    return gop


# ------------------------------------------------------------------------------ whole clips


def encode_representation(
    rep: D2GV,
    grid: QuantGrid | None = None,
    *,
    fps: Fraction | float | None = None,
    apply: bool = False,
) -> tuple[bytes, list[QuantisedGop]]:
    """Quantise every GoP of ``rep`` on ``grid`` (default: the rep's) and write the bitstream.

    With ``apply`` the rep's GoPs are replaced by the decoded models (what a decoder of the file
    renders, kept Gaussians only, in bitstream order). Returns (file bytes, symbols per GoP).
    """
    grid = grid or grid_of(rep)
    qs = [quantise_gop(g, rep.width, rep.height, grid) for g in rep.gops]
    header = header_for(rep, grid, fps)
    data = write_bitstream(header, [encode_gop_chunk(q) for q in qs])
    if apply:
        device = rep.gop_starts.device
        for i, q in enumerate(qs):
            rep.gops[i] = q.to_model(rep.width, rep.height, grid, rep.gops[i].deform.settings).to(device)
    return data, qs


def export_bitstream(rep: D2GV, out: Path) -> Path:
    """Write ``rep`` quantised on its grid to ``out`` (a ``.d2gv`` file, or a folder → ``clip.d2gv``)."""
    out = Path(out)
    path = out if out.suffix == ".d2gv" else out / "clip.d2gv"
    data, _ = encode_representation(rep)
    return write_bytes(path, data)


# ------------------------------------------------------------------------------ refiner


COMPRESS_STEPS: dict[str, int] = {"cpu": 100, "paper": 100, "codec": 300}
"""Fine-tune steps per GoP of each ``d2gv.preset`` (``codec``: the Bunny figure of docs/benchmarks.md)."""


@dataclass
class CompressConfig:
    steps: int | None = option(None, "quantisation-aware fine-tune steps per GoP, 0: quantise only (none: the d2gv preset's; cpu, paper 100, codec 300)", min=0)
    lr_gaussians: float = option(1e-3, "Adam learning rate of positions, Cholesky factors and colours (linear decay to 0)", min=0)
    lr_mlp: float = option(1e-4, "Adam learning rate of the MLP weights (linear decay to 0)", min=0)
    frames_per_step: int = option(1, "frames per fine-tune step", min=1)
    seed: int = option(0, "seed of the frame sampling")
    backend: str = option("auto", "rasteriser: auto, cpp, torch", choices=("auto", "cpp", "torch"))
    write: bool = option(True, "write <run dir>/clip.d2gv")


class D2GVCompress(GopRefiner):
    """Quantisation-aware fine-tune of a fitted ``d2gv`` onto its bitstream grid (``q_*`` options)."""

    name = "d2gv-compress"
    description = "D2GV compression: quantisation-aware fine-tune per GoP, then the .d2gv bitstream (ANS-coded)"
    Config = CompressConfig
    requires = frozenset({"gaussians-2d", "dynamic"})

    def steps(self, rep: D2GV | None = None) -> int:
        """Fine-tune steps per GoP: the option, else those of ``rep``'s preset (cpu without one)."""
        if self.config.steps is not None:
            return self.config.steps
        return COMPRESS_STEPS[getattr(getattr(rep, "config", None), "preset", "cpu")]

    @property
    def total_steps(self) -> int:
        """Nominal steps per GoP (the cpu preset's unless set); the work happens in ``run``."""
        return self.steps()

    def run(self, rep: D2GV, data: Video, ctx: RunContext) -> dict[str, Any]:  # type: ignore[override]
        """Fine-tune and quantise every GoP; the rep ends on the grid (renders = decoded frames)."""
        if not isinstance(data, Video) or not isinstance(rep, D2GV):
            raise InputError("d2gv-compress compresses a d2gv representation of a video")
        cfg, grid, steps = self.config, grid_of(rep), self.steps(rep)
        if ctx.resume_state:
            self.load_state_dict(ctx.resume_state)  # GoPs fine-tuned before an interruption
        t0, c0 = time.perf_counter(), time.process_time()
        ranges = rep.gop_ranges()
        should_stop = ctx.should_stop
        left = [g for g in range(len(ranges)) if g not in self.done]
        steps_run: dict[int, int] = {}
        with progress_bar("d2gv-compress", total=len(ranges) * steps, completed=len(self.done) * steps) as advance:
            for g, r in enumerate(ranges):
                if g in self.done:
                    continue
                if should_stop():  # between GoPs: save the fine-tuned ones, resume with the rest
                    return self.stopped_early(ctx)
                frames = torch.stack([data.frame(i) for i in r]).float().cpu()
                gop = kept_copy(rep.gops[g])
                clock = None
                if ctx.budget is not None:  # this GoP's part of what is left of the share (run.budget)
                    gops_left = len(left) - left.index(g)
                    allowance = max(ctx.budget.allowance - ctx.budget.used(), 0.0) / gops_left
                    clock = BudgetClock(ctx.budget.budget, allowance).start()
                finetune_quantised(gop, frames, grid, steps, lr_gaussians=cfg.lr_gaussians, lr_mlp=cfg.lr_mlp,
                                   frames_per_step=cfg.frames_per_step, seed=cfg.seed * 7919 + g, backend=cfg.backend,
                                   on_step=lambda g=g: (advance(1, gop=g), steps_run.__setitem__(g, steps_run.get(g, 0) + 1)), clock=clock)
                rep.gops[g] = gop.to(rep.gop_starts.device)
                self.done.add(g)
        data_bytes, _ = encode_representation(rep, grid, apply=True)
        report: dict[str, Any] = {
            "bytes": len(data_bytes),
            "bytes_per_frame": len(data_bytes) / max(rep.num_frames, 1),
            "bpp": 8 * len(data_bytes) / max(rep.num_frames * rep.width * rep.height, 1),
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "steps_run": {str(g): n for g, n in sorted(steps_run.items())},
        }
        if cfg.write and ctx.out_dir is not None:
            report["file"] = str(write_bytes(Path(ctx.out_dir) / "clip.d2gv", data_bytes))
        ctx.log(f"d2gv-compress: {report['bytes']} bytes, {report['bytes_per_frame']:.0f} B/frame")
        return report
