"""Densification of 3D Gaussians, in the manner of gsplat's ``DefaultStrategy`` (3DGS paper).

Settings live in the :class:`DefaultStrategy` dataclass; the running state is a dict returned by
:meth:`DefaultStrategy.initialize_state` and passed back into every call (so it is easy to
checkpoint); the real work is in free functions (:func:`duplicate`, :func:`split`,
:func:`remove`, :func:`reset_opacity`) that edit a ``params`` dict of raw 3dgs parameters
(see ``representation.PARAMETER_NAMES``) together with one Adam optimizer per parameter.

Where the calls go::

    state = strategy.initialize_state(scene_scale)
    for step in range(steps):
        loss = ...; loss.backward()
        grads = screen_gradients(means, means.grad, camera)      # ScreenGrads
        strategy.step_post_backward(params, optimizers, state, step, grads, generator)
        for opt in optimizers.values(): opt.step(); opt.zero_grad()

New rows get zero Adam moments (``exp_avg``, ``exp_avg_sq``); the step counter is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DefaultStrategy",
    "ScreenGrads",
    "screen_gradients",
    "duplicate",
    "split",
    "remove",
    "reset_opacity",
    "quat_to_rotmat",
]

Params = dict[str, nn.Parameter]
Optimizers = dict[str, torch.optim.Optimizer]


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


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] of quaternions [N, 4] (wxyz, normalised here)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


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
    R, t = c2w[:3, :3].to(means), c2w[:3, 3].to(means)
    cam = (means - t) @ R  # [N, 3] camera coordinates
    z = cam[:, 2]
    g_cam = means_grad @ R
    f = torch.stack([K[0, 0], K[1, 1]]).to(means)
    grad2d = g_cam[:, :2] * z[:, None] / f
    zs = z.clamp_min(1e-6)
    uv = cam[:, :2] / zs[:, None] * f + torch.stack([K[0, 2], K[1, 2]]).to(means)
    radius = 3.0 * torch.exp(log_scales).amax(dim=-1) * f.max() / zs
    inside = (uv[:, 0] + radius > 0) & (uv[:, 0] - radius < width) & (uv[:, 1] + radius > 0) & (uv[:, 1] - radius < height)
    return ScreenGrads(grad2d=grad2d, visible=(z > 0.01) & inside, width=int(width), height=int(height))


def _update(
    params: Params,
    optimizers: Optimizers,
    param_fn: Callable[[str, Tensor], Tensor],
    moment_fn: Callable[[str, Tensor], Tensor],
    names: tuple[str, ...] | None = None,
) -> None:
    """Replace each parameter (all, or ``names``) by ``param_fn(name, p)`` and its Adam moments by ``moment_fn``."""
    for name in list(params) if names is None else names:
        old = params[name]
        new = nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        opt = optimizers.get(name)
        if opt is not None:
            st = opt.state.pop(old, {})
            for key, value in list(st.items()):
                if key != "step" and isinstance(value, Tensor) and value.shape == old.shape:
                    st[key] = moment_fn(name, value)
            opt.param_groups[0]["params"] = [new]
            if st:
                opt.state[new] = st
        params[name] = new


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
        return torch.cat([p[rest], new])

    _update(params, optimizers, param_fn, lambda name, v: torch.cat([v[rest], v.new_zeros((2 * len(sel), *v.shape[1:]))]))
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

    def initialize_state(self, scene_scale: float = 1.0, n: int = 0, device: torch.device | str = "cpu") -> dict[str, Any]:
        """Running state: accumulated gradient norms ``grad2d`` [N], visibility ``count`` [N]."""
        return {
            "grad2d": torch.zeros(n, device=device),
            "count": torch.zeros(n, device=device),
            "scene_scale": float(scene_scale),
        }

    def accumulate(self, state: dict[str, Any], grads: ScreenGrads) -> None:
        """Add one camera's normalised screen-gradient norms of the visible Gaussians."""
        g = grads.grad2d * torch.tensor([grads.width / 2.0, grads.height / 2.0], device=grads.grad2d.device)
        vis = grads.visible.to(state["grad2d"].dtype)
        state["grad2d"] += g.norm(dim=-1) * vis
        state["count"] += vis

    @torch.no_grad()
    def step_post_backward(
        self,
        params: Params,
        optimizers: Optimizers,
        state: dict[str, Any],
        step: int,
        grads: ScreenGrads,
        generator: torch.Generator | None = None,
    ) -> dict[str, int]:
        """Accumulate, then refine when it is time; returns counts of what changed this step."""
        report = {"duplicated": 0, "split": 0, "pruned": 0, "reset": 0}
        if step >= self.refine_stop:
            return report
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
