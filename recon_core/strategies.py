"""Densification strategies: which Gaussians to add, split, move or remove while training.

Every strategy has gsplat's ``Strategy`` shape: settings in the object, the running state in a
dict from ``initialize_state(scene_scale)``, and two calls around ``loss.backward()`` that edit a
``params`` mapping (a representation's ``splats``, see :mod:`recon_core.gaussians`) together
with one Adam optimizer per trainable entry::

    strategy.step_pre_backward(params, optimizers, state, step, info)
    loss.backward(); [opt.step() for opt in optimizers.values()]
    strategy.step_post_backward(params, optimizers, state, step, info, lr=means_lr)

Three are available (``StrategyConfig.name``):

* ``default`` — ours, 3DGS's clone/split/prune. It needs nothing from the renderer: the
  screen-space gradient of the means is derived from their world-space gradient and the camera
  (:func:`screen_gradients`), so every differentiable Gaussian renderer works.
* ``gsplat-default`` — gsplat's ``DefaultStrategy`` itself, fed with the renderer's ``info``
  (``means2d`` with its gradient, ``radii``, image size), which torch-3dgs and gsplat supply.
* ``mcmc`` — gsplat's ``MCMCStrategy`` (3DGS as Markov chain Monte Carlo: relocation of dead
  Gaussians, growth by 5 % up to a cap, position noise). Two of its operations are CUDA
  kernels in gsplat; on CPU tensors :func:`install_gsplat_cpu_ops` supplies PyTorch versions.

New rows get zero Adam moments (``exp_avg``, ``exp_avg_sq``); the step counter is kept. Entries
of ``params`` without an optimizer (no gradient, e.g. a per-Gaussian flag) are indexed with the
others, so they stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .cameras import Cameras
from .config import auto_or_number, option
from .errors import CombinationError
from .geometry import project_points, quat_to_rotmat, rigid_inverse

__all__ = [
    "DefaultStrategy",
    "StrategyConfig",
    "ScreenGrads",
    "make_strategy",
    "screen_gradients",
    "duplicate",
    "split",
    "remove",
    "reset_opacity",
    "install_gsplat_cpu_ops",
]

Params = dict[str, nn.Parameter]
Optimizers = dict[str, Any]
"""One Adam optimizer per trained entry: ``recon_core.optim.Adam`` or ``torch.optim.Adam`` (the same
``param_groups`` and per-parameter ``state``)."""


@dataclass(frozen=True)
class ScreenGrads:
    """Screen-space gradient of the loss w.r.t. the projected means, for one camera.

    grad2d: [N, 2] dL/d(u, v) with (u, v) in pixels.
    visible: [N] bool, Gaussians in front of the camera whose 3-sigma footprint meets the image.
    width, height: image size in pixels.
    """

    grad2d: Tensor
    visible: Tensor
    width: int
    height: int


@torch.no_grad()
def screen_gradients(means: Tensor, means_grad: Tensor, log_scales: Tensor, K: Tensor, c2w: Tensor, width: int, height: int) -> ScreenGrads:
    """Screen-space mean gradients from the world-space mean gradient of one camera's loss.

    A pinhole camera maps camera-space (x, y, z) to u = fx x / z + cx, so moving a projected
    mean by du pixels at fixed depth moves it by du z / fx along the camera's x axis. Hence
    dL/du = (dL/dx_cam) z / fx (and the same for v), where dL/dx_cam = R^T dL/dmeans with R the
    camera-to-world rotation. This equals gsplat's ``means2d.grad`` up to the (small) term that
    flows through the projected covariance's dependence on the mean, and needs nothing from the
    renderer beyond ordinary autograd, so it works with every Gaussian renderer.

    Args:
        means: [N, 3] world means; means_grad: [N, 3] dL/dmeans; log_scales: [N, 3].
        K: [3, 3] intrinsics; c2w: [4, 4] OpenCV camera-to-world.
    """
    R = c2w[:3, :3].to(means)
    uv, z = project_points(means, K.to(means), rigid_inverse(c2w.to(means)), eps=1e-6)
    f = torch.stack([K[0, 0], K[1, 1]]).to(means)
    grad2d = (means_grad @ R)[:, :2] * z[:, None] / f  # dL/dx_cam = Rᵀ dL/dmeans, per pixel: × z / f
    radius = 3.0 * torch.exp(log_scales).amax(dim=-1) * f.max() / z.clamp_min(1e-6)
    inside = (uv[:, 0] + radius > 0) & (uv[:, 0] - radius < width) & (uv[:, 1] + radius > 0) & (uv[:, 1] - radius < height)
    return ScreenGrads(grad2d=grad2d, visible=(z > 0.01) & inside, width=int(width), height=int(height))


def _update(
    params: Params,
    optimizers: Optimizers,
    param_fn: Callable[[str, Tensor], Tensor],
    moment_fn: Callable[[str, Tensor], Tensor],
    names: tuple[str, ...] | None = None,
) -> None:
    """Replace each parameter (all, or ``names``) by ``param_fn(name, p)`` and its Adam moments by ``moment_fn``.

    Each old tensor is let go as soon as its replacement exists (one parameter or moment at a
    time, not all of an entry's at once): densification is where training's memory peaks."""
    for name in list(params) if names is None else names:
        old = params[name]
        opt = optimizers.get(name)
        st = opt.state.pop(old, {}) if opt is not None else {}
        new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        params[name] = new
        if opt is not None:
            opt.param_groups[0]["params"] = [new]
        shape = old.shape
        del old
        for key in list(st):
            if key != "step" and isinstance(st[key], Tensor) and st[key].shape == shape:
                st[key] = moment_fn(name, st[key])
        if opt is not None and st:
            opt.state[new] = st


def _rows(p: Tensor, index: Tensor, tail: Tensor | int) -> Tensor:
    """``torch.cat([p[index], tail])`` (``tail`` an int: that many zero rows) written into one new
    tensor, without the intermediate ``p[index]`` (the same values: both are copies)."""
    n = len(index)
    out = p.new_empty((n + (tail if isinstance(tail, int) else len(tail)), *p.shape[1:]))
    torch.index_select(p, 0, index, out=out[:n])
    if isinstance(tail, int):
        out[n:].zero_()
    else:
        out[n:] = tail
    return out


def _grow_state(state: dict[str, Any], fn: Callable[[Tensor], Tensor]) -> None:
    for key, value in state.items():
        if isinstance(value, Tensor):
            state[key] = fn(value)


@torch.no_grad()
def duplicate(params: Params, optimizers: Optimizers, state: dict[str, Any], mask: Tensor) -> None:
    """Append a copy of every Gaussian in ``mask`` [N] (bool); copies get zero Adam moments."""
    sel = torch.where(mask)[0]
    _update(
        params,
        optimizers,
        lambda name, p: torch.cat([p, p[sel]]),
        lambda name, v: torch.cat([v, torch.zeros_like(v[sel])]),
    )
    _grow_state(state, lambda v: torch.cat([v, v[sel]]))


@torch.no_grad()
def split(params: Params, optimizers: Optimizers, state: dict[str, Any], mask: Tensor, generator: torch.Generator | None = None) -> None:
    """Replace every Gaussian in ``mask`` by two, sampled from it, with scales divided by 1.6.

    The new Gaussians go to the end, each at ``mean + R (s * eps)`` with ``eps ~ N(0, I)`` drawn
    from ``generator`` (CPU) so that runs are reproducible.
    """
    sel = torch.where(mask)[0]
    rest = torch.where(~mask)[0]
    scales = torch.exp(params["scales"][sel])
    rot = quat_to_rotmat(params["quats"][sel])
    eps = torch.randn(2, len(sel), 3, generator=generator).to(scales)
    offsets = torch.einsum("nij,nj,bnj->bni", rot, scales, eps)  # [2, S, 3]

    def param_fn(name: str, p: Tensor) -> Tensor:
        if name == "means":
            new = (p[sel][None] + offsets).reshape(-1, 3)
        elif name == "scales":
            new = torch.log(scales / 1.6).repeat(2, 1)
        else:
            new = p[sel].repeat(2, *([1] * (p.dim() - 1)))
        return _rows(p, rest, new)

    _update(params, optimizers, param_fn, lambda name, v: _rows(v, rest, 2 * len(sel)))
    _grow_state(state, lambda v: torch.cat([v[rest], v[sel].repeat(2, *([1] * (v.dim() - 1)))]))


@torch.no_grad()
def remove(params: Params, optimizers: Optimizers, state: dict[str, Any], mask: Tensor) -> None:
    """Delete every Gaussian in ``mask`` [N] (bool) from the parameters, moments and state."""
    keep = torch.where(~mask)[0]
    _update(params, optimizers, lambda name, p: p[keep], lambda name, v: v[keep])
    _grow_state(state, lambda v: v[keep])


@torch.no_grad()
def reset_opacity(params: Params, optimizers: Optimizers, value: float) -> None:
    """Clamp every opacity to at most ``value`` and zero the opacity moments (3DGS opacity reset)."""
    limit = float(torch.logit(torch.tensor(value)))
    _update(params, optimizers, lambda name, p: p.clamp_max(limit), lambda name, v: torch.zeros_like(v), names=("opacities",))


@dataclass
class DefaultStrategy:
    """Clone, split and prune Gaussians by screen-space gradient, size and opacity (3DGS).

    Every ``refine_every`` steps inside ``(refine_start, refine_stop)``: Gaussians whose mean
    screen-space gradient norm (normalised to [-1, 1] screen units, as gsplat does) exceeds
    ``grow_grad2d`` are duplicated when small (max scale <= ``grow_scale3d`` x scene scale)
    or split when large; Gaussians with opacity < ``prune_opa`` are removed, and after the first
    opacity reset also those larger than ``prune_scale3d`` x scene scale. Every ``reset_every``
    steps opacities are clamped to 2 x ``prune_opa``. ``max_gaussians`` > 0 caps growth (the
    candidates with the highest gradients are kept), useful on CPU.
    """

    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    refine_start: int = 500
    refine_stop: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    max_gaussians: int = 0

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        """Running state: accumulated gradient norms ``grad2d`` [N], visibility ``count`` [N]
        (sized at the first step, as gsplat does)."""
        return {"grad2d": torch.zeros(0), "count": torch.zeros(0), "scene_scale": float(scene_scale)}

    def accumulate(self, state: dict[str, Any], grads: ScreenGrads) -> None:
        """Add one camera's normalised screen-gradient norms of the visible Gaussians."""
        g = grads.grad2d * torch.tensor([grads.width / 2.0, grads.height / 2.0], device=grads.grad2d.device)
        vis = grads.visible.to(state["grad2d"].dtype)
        state["grad2d"] += g.norm(dim=-1) * vis
        state["count"] += vis

    def step_pre_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int, info: dict[str, Any]) -> None:
        """Nothing to prepare: the gradients come from the means themselves."""

    @torch.no_grad()
    def step_post_backward(
        self,
        params: Params,
        optimizers: Optimizers,
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> dict[str, int]:
        """Accumulate the gradients of the camera in ``info["cameras"]`` (one camera), then refine
        when it is time; returns counts of what changed this step."""
        report = {"duplicated": 0, "split": 0, "pruned": 0, "reset": 0}
        means = params["means"]
        if step >= self.refine_stop or means.grad is None:
            return report
        camera: Cameras = info["cameras"]
        h, w = camera.size(0)
        grads = screen_gradients(means.detach(), means.grad, params["scales"].detach(), camera.K[0], camera.c2w[0], w, h)
        if state["grad2d"].shape[0] != means.shape[0]:  # first step, or a resumed state on other Gaussians
            state["grad2d"] = torch.zeros(means.shape[0], device=means.device)
            state["count"] = torch.zeros(means.shape[0], device=means.device)
        self.accumulate(state, grads)
        if step > self.refine_start and step % self.refine_every == 0:
            report["duplicated"], report["split"] = self.grow(params, optimizers, state, generator)
            report["pruned"] = self.prune(params, optimizers, state, step)
            state["grad2d"].zero_()
            state["count"].zero_()
        if step > 0 and step % self.reset_every == 0:
            reset_opacity(params, optimizers, 2.0 * self.prune_opa)
            report["reset"] = 1
        return report

    @torch.no_grad()
    def grow(self, params: Params, optimizers: Optimizers, state: dict[str, Any], generator: torch.Generator | None = None) -> tuple[int, int]:
        """Duplicate small and split large Gaussians with high mean screen gradients."""
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.grow_grad2d
        n = len(grads)
        if self.max_gaussians > 0:
            budget = max(self.max_gaussians - n, 0)
            if int(high.sum()) > budget:
                order = torch.argsort(torch.where(high, grads, torch.full_like(grads, -1.0)), descending=True, stable=True)
                high = torch.zeros_like(high)
                high[order[:budget]] = True
        small = torch.exp(params["scales"]).amax(dim=-1) <= self.grow_scale3d * state["scene_scale"]
        is_dup = high & small
        is_split = high & ~small
        n_dup, n_split = int(is_dup.sum()), int(is_split.sum())
        if n_dup:
            duplicate(params, optimizers, state, is_dup)
        if n_split:  # the copies just appended are not split
            split(params, optimizers, state, torch.cat([is_split, is_split.new_zeros(n_dup)]), generator)
        return n_dup, n_split

    @torch.no_grad()
    def prune(self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int) -> int:
        """Remove transparent Gaussians, and (after the first opacity reset) too large ones."""
        bad = torch.sigmoid(params["opacities"]) < self.prune_opa
        if step > self.reset_every:
            bad |= torch.exp(params["scales"]).amax(dim=-1) > self.prune_scale3d * state["scene_scale"]
        n_bad = int(bad.sum())
        if n_bad:
            remove(params, optimizers, state, bad)
        return n_bad


# ------------------------------------------------------------------------- selection by config


@dataclass
class StrategyConfig:
    """Densification settings (``--set 3dgs-train.strategy=mcmc``, ``--set 3dgs-train.strategy.refine_every=200``).

    The refinement window and period apply to every strategy; the growth and pruning thresholds
    to ``default`` and ``gsplat-default``. Step counts are gsplat's defaults for its 30 000-step
    run; the optimisation engine multiplies them by its ``steps_scaler``. ``max_gaussians`` caps growth (``mcmc``: its
    ``cap_max``; ``auto``: one Gaussian per 128 training pixels, resolved by the engine; 0 = no cap, gsplat's
    default, and for ``mcmc`` gsplat's 1,000,000); ``noise_lr`` and the two regularisers are MCMC's.
    """

    __selector__ = "name"

    name: str = option("default", "default (ours, 3DGS clone/split/prune), gsplat-default (gsplat's DefaultStrategy), "
                                  "mcmc (gsplat's MCMCStrategy)", choices=("default", "gsplat-default", "mcmc"))
    refine_start: int = option(500, "first step at which Gaussians are added/removed", min=0)
    refine_stop: int = option(15_000, "no densification from this step on (mcmc: gsplat uses 25000)", min=0)
    refine_every: int = option(100, "densify every this many steps", min=1)
    reset_every: int = option(3000, "clamp opacities to 2 x prune_opa every this many steps (not mcmc)", min=1)
    grow_grad2d: float = option(0.0002, "clone/split Gaussians whose mean screen-space gradient exceeds this", min=0)
    grow_scale3d: float = option(0.01, "clone (below) or split (above) at this max scale x scene scale", min=0)
    prune_opa: float = option(0.005, "remove (mcmc: relocate) Gaussians less opaque than this", min=0, max=1)
    prune_scale3d: float = option(0.1, "after the first reset, remove Gaussians larger than this x scene scale", min=0)
    max_gaussians: str = option("auto", "cap on the number of Gaussians: auto (training pixels / 128, see "
                                        "recon_core.optim.auto_max_gaussians), a number, or 0 for none (mcmc: 1,000,000)")
    noise_lr: float = option(5e5, "mcmc: position noise scale, times the means' learning rate", min=0)
    opacity_reg: float = option(0.01, "mcmc: weight of the mean opacity added to the loss", min=0)
    scale_reg: float = option(0.01, "mcmc: weight of the mean scale added to the loss", min=0)

    def __post_init__(self) -> None:
        max_gaussians_value(self.max_gaussians)  # InputError (exit 2) for a bad value, before any work


def max_gaussians_value(value: Any) -> int | None:
    """``max_gaussians`` parsed: None for ``auto``, else a count >= 0 (0: no cap); InputError otherwise."""
    return auto_or_number(value, "max_gaussians", integer=True)  # type: ignore[return-value]


def make_strategy(cfg: StrategyConfig) -> Any:
    """The strategy object ``cfg.name`` selects (gsplat's are imported only when chosen);
    ``max_gaussians`` must be resolved to a number (``auto``: :func:`recon_core.optim.resolve_schedule`)."""
    cap = max_gaussians_value(cfg.max_gaussians)
    if cap is None:
        raise ValueError("max_gaussians=auto must be resolved before the strategy is made (recon_core.optim.resolve_schedule)")
    if cfg.name == "default":
        return DefaultStrategy(
            prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d, refine_start=cfg.refine_start, refine_stop=cfg.refine_stop,
            refine_every=cfg.refine_every, reset_every=cfg.reset_every, max_gaussians=cap,
        )
    try:
        import gsplat.strategy as gs
    except ImportError as e:
        raise CombinationError(f"strategy '{cfg.name}' is gsplat's; gsplat cannot be imported ({e})") from None
    install_gsplat_cpu_ops()
    if cfg.name == "gsplat-default":
        return _GsplatAdapter(gs.DefaultStrategy(
            prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
            refine_every=cfg.refine_every, reset_every=cfg.reset_every,
        ), needs_info=True)
    if cfg.name == "mcmc":
        return _GsplatAdapter(gs.MCMCStrategy(
            cap_max=cap or 1_000_000, noise_lr=cfg.noise_lr, refine_start_iter=cfg.refine_start,
            refine_stop_iter=cfg.refine_stop, refine_every=cfg.refine_every, min_opacity=cfg.prune_opa,
        ), needs_info=False)
    raise CombinationError(f"unknown strategy '{cfg.name}' (default, gsplat-default, mcmc)")


class _GsplatAdapter:
    """One of gsplat's strategies behind our calls (the same shape; reports are not counted)."""

    def __init__(self, inner: Any, needs_info: bool) -> None:
        self.inner, self.needs_info = inner, needs_info

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        try:
            return self.inner.initialize_state(scene_scale)
        except TypeError:  # MCMCStrategy takes no scene scale
            return self.inner.initialize_state()

    def _check_info(self, info: dict[str, Any]) -> None:
        if self.needs_info and "means2d" not in info:
            raise CombinationError(
                f"{type(self.inner).__name__} needs the renderer's per-Gaussian info (means2d, radii); "
                "this renderer or representation does not supply it (use torch-3dgs or gsplat on a static "
                "Gaussian representation, or strategy=default)"
            )

    def step_pre_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int, info: dict[str, Any]) -> None:
        self._check_info(info)
        if self.needs_info:
            self.inner.step_pre_backward(params, optimizers, state, step, info)

    def step_post_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int,
                           info: dict[str, Any], lr: float = 0.0, **_: Any) -> dict[str, int]:
        """Run gsplat's step; returns the change in the Gaussian count."""
        n = params["means"].shape[0]
        if self.needs_info:
            self.inner.step_post_backward(params, optimizers, state, step, info, packed=bool(info.get("packed", False)))
        else:
            self.inner.step_post_backward(params, optimizers, state, step, info, lr=lr)
        return {"added": params["means"].shape[0] - n}


# ------------------------------------------------------------- gsplat's CUDA-only ops, on CPU


def _relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """MCMC relocation (Kheradmand et al. 2024, eq. 9): N copies of a Gaussian of opacity o and
    scale s get opacity 1 - (1 - o)^(1/N) and scale s * o / sum_{i=1..N} sum_{k<i} C(i-1, k)
    (-1)^k o_new^(k+1) / sqrt(k+1)."""
    n_max = binoms.shape[0]
    ratios = ratios.clamp(1, n_max).to(torch.int64)
    o = opacities.double()
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / ratios.double())
    i = torch.arange(1, n_max + 1, device=o.device)[:, None]  # [n_max, 1]
    k = torch.arange(n_max, device=o.device)[None, :]  # [1, n_max]
    coeff = binoms.double().to(o.device) * torch.where(k <= i - 1, 1.0, 0.0) * (-1.0) ** k / torch.sqrt(k + 1.0)  # [i, k]
    powers = new_o[:, None] ** (k + 1)  # [N, n_max]
    per_i = powers @ coeff.t()  # [N, n_max]: inner sums for i = 1..n_max
    used = (i.t() <= ratios[:, None]).double()  # [N, n_max]
    denom = (per_i * used).sum(-1)
    new_scales = scales * (o / denom).to(scales.dtype)[:, None]
    return new_o.to(opacities.dtype), new_scales


def _covariance_torch(quats: Tensor, scales: Tensor, compute_covar: bool = True, compute_preci: bool = True,
                      triu: bool = False) -> tuple[Tensor | None, Tensor | None]:
    """Σ = R S S Rᵀ (and its inverse) of wxyz quaternions and scales, full 3x3 matrices."""
    if triu:
        raise NotImplementedError("triangular covariances are not needed by the strategies")
    R = quat_to_rotmat(quats)
    cov = (R * scales[..., None, :] ** 2) @ R.transpose(-1, -2) if compute_covar else None
    pre = (R / scales[..., None, :] ** 2) @ R.transpose(-1, -2) if compute_preci else None
    return cov, pre


_INSTALLED = False


def install_gsplat_cpu_ops() -> None:
    """Make gsplat's strategy ops run on CPU tensors: ``compute_relocation`` and
    ``quat_scale_to_covar_preci`` (CUDA kernels in gsplat) fall back to the PyTorch versions
    above for tensors not on CUDA; CUDA tensors still go to gsplat's kernels."""
    global _INSTALLED
    if _INSTALLED:
        return
    import gsplat.strategy.ops as ops

    cuda_relocation, cuda_covariance = ops.compute_relocation, ops.quat_scale_to_covar_preci

    def compute_relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
        if opacities.is_cuda:
            return cuda_relocation(opacities, scales, ratios, binoms)
        return _relocation_torch(opacities, scales, ratios, binoms)

    def quat_scale_to_covar_preci(quats: Tensor, scales: Tensor, compute_covar: bool = True,
                                  compute_preci: bool = True, triu: bool = False) -> tuple[Tensor | None, Tensor | None]:
        if quats.is_cuda:
            return cuda_covariance(quats, scales, compute_covar, compute_preci, triu)
        return _covariance_torch(quats, scales, compute_covar, compute_preci, triu)

    ops.compute_relocation, ops.quat_scale_to_covar_preci = compute_relocation, quat_scale_to_covar_preci
    _INSTALLED = True
