"""The Gaussian optimisation engine: Adam per splat entry, learning-rate schedules, densification.

It is a library object, not a refiner: ``3dgs-train``, ``confidence`` (ReconX), ``difix3d+``
and a third party's refiner each pick their own views and loss and hand the loss to the same
engine. It works on any :class:`~recon_core.gaussians.GaussianRepresentation` and edits its
``splats`` in place (gsplat's shape: one Adam optimizer per trainable entry, a strategy object
and a state dict)::

    engine = GaussianOptimizer(rep, config, scene_scale=default_scene_scale(scene.bounds.radius),
                               total_steps=n, views=len(train_views))   # config: an OptimConfig
    for step in range(n):
        engine.schedule(step)                                  # means lr decay, SH degree in use
        out = renderer.render(rep, camera, background=ctx.background)
        engine.before_backward(step, out.info)                 # strategies that read means2d
        loss = my_loss(out.rgb[0], target) + engine.regularisation()
        engine.step(loss, step, out.info, camera)              # backward, Adam, densification

Learning rates follow gsplat's ``examples/simple_trainer.py``: means 1.6e-4 x scene scale,
decaying exponentially to 1 % at the last step; quats 1e-3, scales 5e-3, opacities 5e-2, sh0
2.5e-3, shN 2.5e-3 / 20; Adam eps 1e-15. The SH degree in use rises by one every
``sh_degree_interval`` steps.

Schedules scale with the run. The step counts in the options (``sh_degree_interval``,
``strategy.refine_start/stop/every``, ``reset_every``) are gsplat's, written for its 30 000-step
run; the engine multiplies them by ``steps_scaler`` as gsplat does. The default ``auto`` is
``steps / 30000`` — densification, SH growth and opacity resets happen in a run of any length —
with floors for short runs (:func:`auto_schedule`: SH steps and refine periods of at least one
epoch, densification from the second refine period, resets at least five periods apart);
``steps_scaler=1`` gives gsplat's counts as written (its default), any number exactly that factor
(then only the one-epoch refine period of :func:`scaled_strategy` applies). Densification stops
growing at ``strategy.max_gaussians`` (``auto``: one Gaussian per 128 training pixels,
:func:`auto_max_gaussians`; 0: no cap, gsplat's behaviour).

A time budget (``run.budget``) moves the schedules with the fraction of it used:
:meth:`GaussianOptimizer.schedule` returns the *schedule step* the refiner hands on.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .cameras import Cameras
from .config import auto_or_number, option
from .cpp_extension import declare_extension
from .errors import InputError
from .gaussians import GaussianRepresentation
from .memory import release_memory
from .scene import CompactImage
from .strategies import StrategyConfig, make_strategy, max_gaussians_value

__all__ = ["Adam", "GaussianOptimizer", "OptimConfig", "StrategyConfig", "EpochOrder", "TargetCache", "default_scene_scale", "scaled_steps",
           "scaled_strategy", "resolve_schedule", "auto_schedule", "auto_max_gaussians", "steps_scaler_value", "GSPLAT_STEPS"]


GSPLAT_STEPS = 30_000
"""Length of the run that gsplat's schedule, and the step counts in our options, are written for."""


ADAM_EXTENSION = declare_extension("recon_core_optim", [Path(__file__).with_name("csrc") / f for f in ("adam_cpu.cpp", "targets_cpu.cpp")])
"""The fused CPU Adam step (``csrc/adam_cpu.cpp``) and :class:`TargetCache`'s re-composite
(``csrc/targets_cpu.cpp``), built on first use like the plugins' kernels."""


def _adam_kernel() -> ModuleType | None:
    """The compiled module with ``adam_step``, or None (no compiler, ``RECON_NO_CPP=1``)."""
    return ADAM_EXTENSION.load()


def _fusable(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> bool:
    """Whether the fused kernel takes this parameter: dense contiguous CPU float32/float64
    tensors of one dtype and shape (anything else takes the tensor operations)."""
    return (p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) and grad.layout == torch.strided
            and all(t.device.type == "cpu" and t.dtype == p.dtype and t.shape == p.shape and t.is_contiguous()
                    for t in (p, grad, exp_avg, exp_avg_sq)))


class Adam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad), step for step: the same update (its
    single-tensor path, the one it takes on CPU), the same per-parameter ``state`` (``step``,
    ``exp_avg``, ``exp_avg_sq``), ``param_groups`` and ``state_dict`` layout, so that gsplat's
    strategies, ours and checkpoints written by either class work unchanged.

    Why not ``torch.optim.Adam`` itself: constructing or stepping any ``torch.optim`` optimizer
    imports ``torch._dynamo`` (for its compile hooks), which costs about 150 MB of resident memory
    on CPU, a quarter of a whole 3DGS training run's peak (docs/benchmarks.md, issue 24).

    On CPU (``fused=True``, the compiled extension available, contiguous float32/float64
    tensors) each parameter's step is one pass of the compiled kernel ``csrc/adam_cpu.cpp``
    instead of seven tensor operations and two temporaries: the same arithmetic in the same order,
    so the same floats as ``torch.optim.Adam`` (tests/test_optim.py); about 4x faster on the SH
    coefficients of a 50 000-Gaussian scene (docs/benchmarks.md, issue 24).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, fused: bool = True) -> None:
        params = list(params)
        if not params:
            raise ValueError("Adam got an empty parameter list")
        self.fused = bool(fused)
        self.defaults: dict[str, Any] = {"lr": float(lr), "betas": (float(betas[0]), float(betas[1])), "eps": float(eps)}
        self.param_groups: list[dict[str, Any]] = [{"params": params, **self.defaults}]
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if not state:  # torch's lazy init: the step counter a float32 CPU scalar
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                step = state["step"].item()
                bias_correction1 = 1 - beta1**step
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                if self.fused and _fusable(p, grad, exp_avg, exp_avg_sq) and (kernel := _adam_kernel()) is not None:
                    # Python doubles as torch computes them; the kernel rounds them to the dtype as torch does
                    kernel.adam_step(p, grad, exp_avg, exp_avg_sq, 1 - beta1, beta2, 1 - beta2, bias_correction2_sqrt,
                                     eps, -(lr / bias_correction1), True)
                    continue
                # the same operations in the same order as torch.optim.adam._single_tensor_adam
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict``'s layout: parameters by index, state by reference."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: st for p, st in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``torch.optim.Adam`` (its extra group keys ignored)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, self.param_groups)):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        params = {i: p for g, s in zip(groups, self.param_groups) for i, p in zip(g["params"], s["params"])}
        self.state = defaultdict(dict)
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: (v.clone() if k == "step" else v.to(p.device, p.dtype, copy=True)) if isinstance(v, Tensor) else v
                             for k, v in st.items()}  # copies: stepping must not change the caller's dict
        for group, saved in zip(self.param_groups, groups):
            group["lr"], group["eps"] = float(saved["lr"]), float(saved["eps"])
            group["betas"] = (float(saved["betas"][0]), float(saved["betas"][1]))


PIXELS_PER_GAUSSIAN = 128
"""``max_gaussians=auto``: one Gaussian per this many training pixels (see :func:`auto_max_gaussians`)."""

AUTO_START_PERIODS = 2
"""``steps_scaler=auto``: densification starts after at least this many refine periods."""

AUTO_RESET_PERIODS = 5
"""``steps_scaler=auto``: opacity resets are at least this many refine periods apart."""

AUTO_RECOVERY_EPOCHS = 10
"""``steps_scaler=auto``: the last opacity reset is followed by at least this many epochs of
training; a run too short for that has no reset."""


def auto_max_gaussians(pixels: int) -> int:
    """The Gaussian budget of ``max_gaussians=auto``: one Gaussian per :data:`PIXELS_PER_GAUSSIAN`
    training pixels (``pixels``: summed over the training views), at least 1000, at most 1,000,000
    (gsplat MCMC's default cap; 0 pixels also gives it).

    Why: a Gaussian with SH degree 3 has 59 parameters and a pixel gives 3 observations, so
    one Gaussian per 20 pixels already has as many parameters as the views have numbers; one per
    128 pixels keeps more than 6 observations per parameter. On README's demo (40 views of
    96 x 96: 2 880, fewer than its 3 000 initial points, so nothing grows) this kept the 500-step
    run's PSNR and time, where one per 64 pixels grew 5 755 Gaussians for no gain and 1.15x the
    CPU time (docs/benchmarks.md, "Schedules that scale with steps"); ``object`` (48 views of
    200 x 200) gets 15 000. Memory: each trained Gaussian holds about 1 KB (59 float32
    parameters, their gradients and two Adam moments: 4 x 236 B) plus the renderer's per-view
    buffers, so 1,000,000 Gaussians need about 1.5 GB."""
    if pixels <= 0:
        return 1_000_000
    return int(min(max(pixels // PIXELS_PER_GAUSSIAN, 1000), 1_000_000))


def resolve_schedule(config: "OptimConfig", total_steps: int, views: int = 1,
                     pixels: int = 0) -> tuple[float, int, StrategyConfig]:
    """What runs: ``(scaler, SH interval, strategy settings)`` of ``config`` for a run of
    ``total_steps`` over ``views`` training views of ``pixels`` pixels in all. A number
    ``steps_scaler`` multiplies the counts (gsplat's ``steps_scaler``); ``auto`` is
    :func:`auto_schedule`. ``max_gaussians=auto`` becomes :func:`auto_max_gaussians`."""
    scaler = steps_scaler_value(config.steps_scaler)
    if scaler is None:
        scaler, sh_interval, strategy = auto_schedule(config, total_steps, views)
    else:
        sh_interval, strategy = scaled_steps(config.sh_degree_interval, scaler), scaled_strategy(config.strategy, scaler, views)
    if max_gaussians_value(strategy.max_gaussians) is None:
        strategy = replace(strategy, max_gaussians=str(auto_max_gaussians(pixels)))
    return scaler, sh_interval, strategy


def auto_schedule(config: "OptimConfig", total_steps: int, views: int = 1) -> tuple[float, int, StrategyConfig]:
    """``steps_scaler=auto``: gsplat's 30 000-step schedule compressed into ``total_steps``
    (scaler ``total_steps / 30000``, :func:`scaled_strategy`), with floors where a compressed
    period is too short for the optimisation to recover from (measured on 500-step runs,
    docs/benchmarks.md "Schedules that scale with steps"):

    * the SH degree rises at most once per epoch (a pass over the ``views`` training views);
    * a refine period is at least one epoch (capped at the configured period), as
      :func:`scaled_strategy` does for every scaler below 1;
    * densification starts after at least :data:`AUTO_START_PERIODS` refine periods, once the
      initial Gaussians have settled;
    * opacity resets are at least :data:`AUTO_RESET_PERIODS` refine periods apart, so that
      every reset is followed by densification and pruning passes and by steps that restore the
      opacities (a 500-step run reset every 50 steps never recovers: -1.6 dB on README's demo);
    * the last reset is followed by at least :data:`AUTO_RECOVERY_EPOCHS` epochs, else the run
      has no reset (a Gaussian gets a gradient only from the views that see it, so restoring the
      opacities takes epochs, not steps: a reset 7.5 epochs before the end of README's demo
      still costs 0.7 dB).

    Runs of 30 000 steps and more get gsplat's counts times the scaler, unchanged."""
    scaler = total_steps / GSPLAT_STEPS
    strategy = scaled_strategy(config.strategy, scaler, views)
    sh_interval = scaled_steps(config.sh_degree_interval, scaler)
    if scaler < 1:
        sh_interval = max(sh_interval, min(int(views), int(config.sh_degree_interval)))
        period = strategy.refine_every
        reset = max(strategy.reset_every, AUTO_RESET_PERIODS * period)
        last_reset = (strategy.refine_stop - 1) // reset * reset  # resets happen before refine_stop only
        if total_steps - last_reset < AUTO_RECOVERY_EPOCHS * int(views):
            reset = max(strategy.refine_stop, total_steps) + 1  # too short to recover from one: none
        strategy = replace(strategy, refine_start=max(strategy.refine_start, AUTO_START_PERIODS * period), reset_every=reset)
    return scaler, sh_interval, strategy


def scaled_steps(steps: int, scaler: float) -> int:
    """``int(steps x scaler)`` as gsplat's ``adjust_steps``, but at least 1 (a period of 0 steps is no period)."""
    return max(1, int(int(steps) * float(scaler)))


def scaled_strategy(cfg: StrategyConfig, scaler: float, epoch: int = 1) -> StrategyConfig:
    """``cfg`` with its step counts (refine start/stop/every, opacity reset) scaled; the refine
    period is at least ``epoch`` steps (one pass over the training views), so that every Gaussian's
    gradient statistics see every view between two densifications however short the run."""
    every = scaled_steps(cfg.refine_every, scaler)
    if scaler < 1:
        every = max(every, min(int(epoch), int(cfg.refine_every)))
    return replace(cfg, refine_start=int(cfg.refine_start * scaler), refine_stop=int(cfg.refine_stop * scaler),
                   refine_every=every, reset_every=scaled_steps(cfg.reset_every, scaler))


@dataclass
class OptimConfig:
    """Learning rates and schedules of the engine; ``strategy`` is its densification."""

    lr_means: float = option(1.6e-4, "learning rate of the means, times the scene scale", min=0)
    lr_means_final: float = option(0.01, "the means' learning rate decays exponentially to this fraction at the last step", min=1e-12, max=1)
    lr_quats: float = option(1e-3, "learning rate of the quaternions", min=0)
    lr_scales: float = option(5e-3, "learning rate of the log-scales", min=0)
    lr_opacities: float = option(5e-2, "learning rate of the logit opacities", min=0)
    lr_sh0: float = option(2.5e-3, "learning rate of the SH DC coefficients", min=0)
    lr_shN: float = option(2.5e-3 / 20, "learning rate of the higher SH bands", min=0)
    lr_lifespans: float = option(0.0, "learning rate of the log lifespans of dynamic representations (0: frozen)", min=0)
    sh_degree: int | None = option(None, "highest SH degree to train (default: all the representation stores)", min=0, max=3)
    sh_degree_interval: int = option(1000, "raise the SH degree in use by one every this many steps (times steps_scaler)", min=1)
    steps_scaler: str = option("auto", "multiplies every step schedule (SH interval, refine start/stop/every, opacity "
                                       "reset) as gsplat's steps_scaler; auto: steps / 30000 (gsplat's 30 000-step "
                                       "schedule compressed into the run) with the floors of recon_core.optim.auto_schedule; "
                                       "a number: exactly that factor (1: gsplat's counts as written)")
    densify: bool = option(True, "add/remove Gaussians with the strategy")
    strategy: StrategyConfig = option(help="densification strategy and its settings", factory=StrategyConfig)

    def __post_init__(self) -> None:
        steps_scaler_value(self.steps_scaler)  # InputError (exit 2) for a bad value, before any work


def steps_scaler_value(value: Any) -> float | None:
    """``steps_scaler`` parsed: None for ``auto``, else a positive number (InputError otherwise)."""
    return auto_or_number(value, "steps_scaler", positive=True)  # type: ignore[return-value]


class GaussianOptimizer:
    """Adam + schedules + a densification strategy over a Gaussian representation's ``splats``.

    Args:
        rep: the representation; its refinable float entries with a learning rate > 0 are trained.
        config: :class:`OptimConfig`.
        scene_scale: scales the means' lr and the strategies' size thresholds.
        total_steps: length of the run (the means' lr decays over it; schedules scale with it).
        generator: CPU generator of the strategy's random choices (reproducible splits).
        views: training views per epoch (the shortest refine period, see :func:`scaled_strategy`).
        pixels: training pixels, all views together (``max_gaussians=auto``, :func:`auto_max_gaussians`;
            0: unknown, gsplat MCMC's cap of 1,000,000).
    """

    def __init__(self, rep: GaussianRepresentation, config: OptimConfig, *, scene_scale: float, total_steps: int,
                 generator: torch.Generator | None = None, views: int = 1, pixels: int = 0) -> None:
        if not isinstance(rep, GaussianRepresentation):
            raise InputError(f"'{rep.name}' is not a Gaussian representation (it does not hold splats)")
        self.rep, self.config = rep, config
        self.scene_scale = float(scene_scale)
        self.total_steps = max(int(total_steps), 1)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.scaler, self.sh_degree_interval, self.strategy_config = resolve_schedule(config, self.total_steps, views, pixels)
        """The factor applied, the SH interval and the strategy's settings with its step counts
        scaled (what actually runs)."""
        self.last_schedule_step = -1
        self.strategy = make_strategy(self.strategy_config) if config.densify else None
        stored = rep.max_sh_degree
        self.max_sh_degree = stored if config.sh_degree is None else max(0, min(int(config.sh_degree), stored))
        self.optimizers = self.build_optimizers()
        self.state = self.strategy.initialize_state(self.scene_scale) if self.strategy else {}

    # ------------------------------------------------------------------------- optimizers

    def learning_rates(self) -> dict[str, float]:
        """Undecayed learning rate of every entry the engine trains."""
        cfg = self.config
        lrs = {
            "means": cfg.lr_means * self.scene_scale, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
            "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "lifespans": cfg.lr_lifespans,
        }
        splats = self.rep.splats
        return {k: lr for k, lr in lrs.items() if lr > 0 and k in splats and k in self.rep.refinable and splats[k].is_floating_point()}

    def build_optimizers(self) -> dict[str, Adam]:
        """Fresh Adam optimizers on the current entries; only trained entries keep a gradient
        (gsplat's strategies require exactly one optimizer per entry with ``requires_grad``)."""
        lrs = self.learning_rates()
        for key, p in self.rep.splats.items():
            p.requires_grad_(key in lrs)
        return {k: Adam([self.rep.splats[k]], lr=lr, eps=1e-15) for k, lr in lrs.items()}

    def in_sync(self) -> bool:
        return all(opt.param_groups[0]["params"][0] is self.rep.splats[k] for k, opt in self.optimizers.items())

    def sync(self) -> bool:
        """Rebuild the optimizers and the strategy state when the splats were replaced from
        outside (e.g. a checkpoint loaded); True when they were rebuilt."""
        if self.in_sync():
            return False
        self.optimizers = self.build_optimizers()
        self.state = self.strategy.initialize_state(self.scene_scale) if self.strategy else {}
        return True

    # -------------------------------------------------------------------------- schedules

    def set_means_lr(self, fraction: float) -> float:
        """The means' lr at ``fraction`` (0: first step, 1: last) of its exponential decay."""
        cfg = self.config
        lr = cfg.lr_means * self.scene_scale * cfg.lr_means_final ** float(fraction)
        if "means" in self.optimizers:
            self.optimizers["means"].param_groups[0]["lr"] = lr
        return lr

    def schedule(self, step: int, total_steps: int | None = None, fraction: float = 0.0) -> int:
        """Per-step schedules: the means' lr decay and the SH degree in use; returns the
        *schedule step* to hand to :meth:`before_backward` and :meth:`step`.

        It is ``step``, or further on when ``fraction`` (of a time budget used, ``ctx.budget_fraction()``)
        is ahead: ``fraction x total_steps``, so that a run stopped by its budget has gone through
        its whole schedule. It never jumps over a densification or opacity-reset step of the
        strategy (it stops at the first one it would pass), so every one of them happens."""
        total = max(total_steps or self.total_steps, 1)
        s = max(int(step), int(float(fraction) * total), self.last_schedule_step + 1)
        s = self._next_event(s)
        self.last_schedule_step = s
        self.set_means_lr(min(s / total, 1.0))
        self.rep.active_sh_degree = min(s // self.sh_degree_interval, self.max_sh_degree)
        return s

    def _next_event(self, s: int) -> int:
        """``s``, or the first refine/reset step after the last schedule step when ``s`` lies beyond it."""
        last, cfg = self.last_schedule_step, self.strategy_config
        if self.strategy is None or s <= last + 1 or last + 1 >= cfg.refine_stop:
            return s
        events = [last + 1 + (-(last + 1)) % period for period in (cfg.refine_every, cfg.reset_every)]
        return min([s] + events)

    def finish(self) -> None:
        """Leave the representation rendering every trained SH band."""
        self.rep.active_sh_degree = self.max_sh_degree

    # ------------------------------------------------------------------------------ steps

    def regularisation(self) -> Tensor | float:
        """The strategy's own loss terms (MCMC: mean opacity and mean scale), else 0."""
        s = self.config.strategy
        if self.strategy is None or s.name != "mcmc":
            return 0.0
        splats = self.rep.splats
        return s.opacity_reg * torch.sigmoid(splats["opacities"]).mean() + s.scale_reg * torch.exp(splats["scales"]).mean()

    def before_backward(self, step: int, info: dict[str, Any]) -> None:
        """Let the strategy prepare (gsplat's keep the gradient of ``info["means2d"]``)."""
        if self.strategy is not None:
            self.strategy.step_pre_backward(self.rep.splats, self.optimizers, self.state, step, info)

    def step(self, loss: Tensor, step: int, info: dict[str, Any], cameras: Cameras) -> dict[str, int]:
        """Backpropagate ``loss`` (of a render of ``cameras``), take one Adam step, then one
        densification step; returns the strategy's counts (empty when nothing changed)."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        # Each gradient is dropped once used, so that neither densification nor the next render
        # holds them (0.24 KB a Gaussian); the strategy reads the means' only (ours: their
        # world-space gradient; gsplat's: info["means2d"]), dropped after it.
        for name, opt in self.optimizers.items():
            opt.step()
            if name != "means" or self.strategy is None:
                opt.zero_grad(set_to_none=True)
        if self.strategy is None:
            return {}
        means_lr = self.optimizers["means"].param_groups[0]["lr"] if "means" in self.optimizers else 0.0
        n = len(self.rep)
        report = self.strategy.step_post_backward(
            self.rep.splats, self.optimizers, self.state, step, {**info, "cameras": cameras},
            generator=self.generator, lr=means_lr,
        )
        if "means" in self.optimizers:
            self.optimizers["means"].zero_grad(set_to_none=True)
        if len(self.rep) != n:
            release_memory(collect=False)  # the replaced parameters' and moments' blocks (see recon_core.memory)
        return {k: v for k, v in (report or {}).items() if v}

    # ----------------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """Optimizer moments, strategy state and the generator (deep copies)."""
        return copy.deepcopy({
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "strategy": self.state,
            "generator": self.generator.get_state(),
            "schedule_step": self.last_schedule_step,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the optimizers on the representation's current (restored) splats, then load."""
        self.optimizers = self.build_optimizers()
        n = len(self.rep)
        for key, opt in self.optimizers.items():
            saved = state["optimizers"][key]
            for entry in saved.get("state", {}).values():
                for name, value in entry.items():
                    if name != "step" and isinstance(value, Tensor) and value.shape[:1] != (n,):
                        raise InputError(f"optimizer checkpoint holds {value.shape[0]} Gaussians for '{key}', the representation {n}")
            opt.load_state_dict(saved)
        device = self.rep.splats["means"].device
        self.state = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in state["strategy"].items()}
        self.generator.set_state(state["generator"].cpu().to(torch.uint8))
        self.last_schedule_step = int(state.get("schedule_step", -1))


def default_scene_scale(bounds_radius: float) -> float:
    """1.1 x the radius of the scene's bounds (gsplat: 1.1 x the largest camera distance)."""
    return 1.1 * float(bounds_radius)



class EpochOrder:
    """Which training view comes next: indices 0..n-1 in a fresh random order every epoch, drawn
    from the caller's generator (so a refiner's draws stay reproducible and checkpointable)."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.order = torch.zeros(0, dtype=torch.int64)
        self.position = 0

    def next(self, generator: torch.Generator) -> int:
        if self.position >= len(self.order):
            self.order = torch.randperm(self.n, generator=generator)
            self.position = 0
        self.position += 1
        return int(self.order[self.position - 1])

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.order, self.position = int(state["n"]), state["order"].to(torch.int64).cpu(), int(state["position"])


class TargetCache:
    """The images views should render to on the run's background (:meth:`View.image_on`), on
    ``device``, kept in memory by view name up to ``max_bytes`` (2 GiB), re-made beyond that.

    On the CPU a view whose loader gives its 8-bit pixels is kept as those
    (:meth:`View.compact_image_on`: 4 bytes a pixel instead of 12, 15 MB less for ``object``'s
    48 views) and re-composited at each use (``csrc/targets_cpu.cpp``: ~0.25 ms at 200 x 200 on a
    loaded core; ~1.5 ms with numpy where it does not build), after checking once that the
    re-composited target is bit for bit :meth:`View.image_on`'s; other views keep the float target.
    """

    def __init__(self, background: Tensor, device: torch.device, max_bytes: int = 2 << 30) -> None:
        self.background, self.device, self.max_bytes = background.cpu(), device, int(max_bytes)
        self._cache: dict[str, Tensor | CompactImage] = {}
        self._bytes = 0

    def __call__(self, view: Any) -> Tensor:
        hit = self._cache.get(view.name)
        if isinstance(hit, CompactImage):
            return self._remake(hit)
        if hit is not None:
            return hit
        target = view.image_on(self.background).to(self.device)
        keep: Tensor | CompactImage = target
        if self.device.type == "cpu" and (compact := view.compact_image_on(self.background)) is not None:
            again = self._remake(compact)
            if again.shape == target.shape and again.dtype == target.dtype == torch.float32 \
                    and torch.equal(again.view(torch.int32), target.contiguous().view(torch.int32)):
                keep = compact
        size = keep.nbytes if isinstance(keep, CompactImage) else target.numel() * target.element_size()
        if self._bytes + size <= self.max_bytes:
            self._cache[view.name] = keep
            self._bytes += size
        return target

    @staticmethod
    def _remake(compact: CompactImage) -> Tensor:
        """The compiled one-pass :meth:`CompactImage.image` (``csrc/targets_cpu.cpp``) where it builds."""
        kernel = _adam_kernel()
        if kernel is None:
            return compact.image()
        current = compact.current if compact.current is not None else compact.background
        return kernel.composite8_target(compact.pixels, compact.loaded_on, current.contiguous(), compact.background)
