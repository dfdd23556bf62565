"""Adan (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
Models", arXiv:2208.06677), the optimiser D2GV and GaussianImage fit their Gaussians with.

One step, for gradient g_k and the previous gradient g_{k-1} (g_{-1} = g_0 on a parameter's first
gradient), with β1, β2, β3 = (0.98, 0.92, 0.99) weighting the *old* value as D2GV's copy of the
reference implementation does::

    m_k = β1 m_{k-1} + (1 - β1) g_k
    v_k = β2 v_{k-1} + (1 - β2) (g_k - g_{k-1})
    n_k = β3 n_{k-1} + (1 - β3) (g_k + β2 (g_k - g_{k-1}))²
    θ  -= lr (m_k / c1 + β2 v_k / c2) / (sqrt(n_k / c3) + eps),    then θ /= 1 + lr · wd

with bias corrections c_i = 1 - β_i^k. As in that implementation the step count k belongs to the
parameter *group* and advances on every ``step()``, including steps in which a parameter has no
gradient (it is then skipped): a parameter whose first gradient arrives late (D2GV's pruning
logits) starts with bias corrections near 1. The package ``adan-pytorch`` implements a different
variant (β as 1 - ours, the first step only records the gradient, per-parameter counts), so it
is not used here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

__all__ = ["Adan"]


class Adan(torch.optim.Optimizer):
    """Adan with decoupled weight decay (see the module docstring for the update)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Adan settings lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            k = group["step"]
            b1, b2, b3 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            c1, c2, c3 = 1 - b1**k, 1 - b2**k, 1 - b3**k
            for p in group["params"]:
                if p.grad is None:
                    continue
                g: Tensor = p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_diff"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["prev_grad"] = g.clone()
                diff = g - state["prev_grad"]
                state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                state["exp_avg_diff"].mul_(b2).add_(diff, alpha=1 - b2)
                nesterov = g + b2 * diff
                state["exp_avg_sq"].mul_(b3).addcmul_(nesterov, nesterov, value=1 - b3)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(c3)).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / c1)
                p.addcdiv_(state["exp_avg_diff"], denom, value=-lr * b2 / c2)
                if wd:
                    p.div_(1 + lr * wd)
                state["prev_grad"].copy_(g)
        return loss
