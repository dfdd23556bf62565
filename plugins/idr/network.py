"""IDR's networks (Yariv et al. 2020): an implicit SDF network and a rendering network.

Both operate in the *normalised* frame where the object lies inside the unit sphere.

ImplicitNetwork: ``x [N, 3] → [N, 1 + feature_dim]`` (SDF first, then the geometry feature).
The input is ``γ(x) = encoder(x)`` with the raw x as its first three entries (prepended when the
encoder does not include it). IDR's defaults: 8 hidden layers of 512, a skip connection into layer 4
(``cat([h, γ(x)]) / √2``), weight normalisation, Softplus(β = 100), and geometric initialisation so
that at start ``f(x) ≈ |x| − r`` (r = 0.6: the last bias is −r). The weights reading encoder features
(beyond the raw x) start at zero, so the initial sphere does not depend on the encoder.

RenderingNetwork: ``[x, γ_v(v), n, feature] → RGB`` with ``γ_v`` a 4-frequency positional encoding of
the view direction, 4 hidden ReLU layers of 512, weight normalisation, sigmoid output in [0, 1] or,
as IDR (``idr.rgb_range=[-1,1]``), tanh output in [−1, 1] (then images are compared in [−1, 1] too,
which doubles the RGB L1 against the eikonal and mask terms).

Optional (``idr.sdf_squash``): the HashModNFFBanks-IDR seed squashes the SDF output,
``f = tanh(s / (2 + ρ(s)))`` (:func:`squash_sdf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from recon_core import Encoder
from recon_core.activations import apply_activation

from ._cpp import IDR_EXTENSION

__all__ = ["ClampedSoftplus", "ImplicitNetwork", "RenderingNetwork", "squash_sdf"]


class ClampedSoftplus(nn.Module):
    """Softplus(β) with its input clamped below at −20/β, where it is < 2e-9/β from the true value.

    Why: IDR's β = 100 sends most pre-activations far into the negative tail, where ``log1p`` of a
    tiny ``exp(βx)`` computes denormal intermediates; on x86 CPUs without flush-to-zero those run
    ~4x slower (``F.softplus`` on 20 k × 64 values: 16 ms vs 4 ms). The clamp keeps every value
    normal. The gradient below the clamp is 0 instead of σ(βx) < 2e-9.
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = float(beta)
        self.floor = -20.0 / self.beta

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        """``inplace`` clamps ``x`` itself (no autograd: the tracer's evaluations). On float32 CPU
        tensors with autograd, compiled (:class:`_SoftplusKernels`; same values within 1e-6,
        tests/test_idr_network.py)."""
        if not inplace and x.dtype == torch.float32 and x.device.type == "cpu" and torch.is_grad_enabled():
            ext = IDR_EXTENSION.load()
            if ext is not None:
                return apply_activation(x, _SoftplusKernels(ext, self.beta))
        return F.softplus(x.clamp_min_(self.floor) if inplace else x.clamp_min(self.floor), beta=self.beta)


@dataclass(frozen=True)
class _SoftplusKernels:
    """ClampedSoftplus(β) for :func:`recon_core.activations.apply_activation` (``idr_cpu.cpp``,
    ``softplus_train`` / ``softplus_grad``): ``d = σ(β max(z, −20/β))·[z ≥ −20/β]`` and ``y'' = β d (1 − d)``.
    Why: IDR's eikonal loss and normals differentiate the network twice, and torch's clamp_min +
    softplus graph then runs ~15 elementwise passes over every activation (softplus, its backward, its
    double backward through sigmoids, clamp masks). Parity with torch: tests/test_idr_network.py
    (gradcheck, gradgradcheck in float64)."""

    ext: object
    beta: float

    def value_and_derivative(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.ext.softplus_train(z, self.beta)

    def second_derivative(self, y: Tensor, d: Tensor) -> Tensor:
        return self.beta * d * (1 - d)

    def fused_grad(self, gy: Tensor, gd: Tensor, y: Tensor, d: Tensor) -> Tensor:
        return self.ext.softplus_grad(gy, gd, d, self.beta)


SEED_LAPLACE_BETA = 0.9 + 1e-4
"""β of the seed's LaplaceDensity: its parameter 0.9 (never trained: the density is computed under
no_grad) plus beta_min 1e-4."""


def squash_sdf(s: Tensor, beta: float = SEED_LAPLACE_BETA) -> Tensor:
    """The HashModNFFBanks-IDR seed's SDF squashing ``tanh(s / (2 + ρ(s)))`` with ρ the Laplace density
    ``(1/β) · (½ + ½ · sign(s) · expm1(−|s| / β))``, computed without gradient as in the seed (so
    ∂/∂s = (1 − tanh²) / (2 + ρ)). The zero level set is unchanged; |f| < 1 everywhere."""
    with torch.no_grad():
        rho = (0.5 + 0.5 * torch.sign(s) * torch.expm1(-s.abs() / beta)) / beta
    return torch.tanh(s / (2 + rho))


class ImplicitNetwork(nn.Module):
    """SDF + feature MLP with IDR's geometric initialisation (see module docstring)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        width: int = 512,
        n_layers: int = 8,
        skip_in: Sequence[int] = (4,),
        feature_dim: int = 256,
        init_radius: float = 0.6,
        softplus_beta: float = 100.0,
        use_weight_norm: bool = True,
        geometric_init: bool = True,
        sdf_squash: bool = False,
    ) -> None:
        super().__init__()
        self.sdf_squash = sdf_squash
        if encoder.in_dim != 3:
            raise ValueError(f"the implicit network needs a 3-D encoder, got in_dim={encoder.in_dim}")
        self.encoder = encoder
        self.prepend_input = not getattr(encoder, "includes_input", False)
        d_in = encoder.out_dim + (3 if self.prepend_input else 0)
        self.d_in = d_in
        self.feature_dim = feature_dim
        self.skip_in = tuple(skip_in)
        if self.skip_in and width <= d_in:
            raise ValueError(f"the skip connection needs width > input size ({width} <= {d_in}); widen the network")
        if any(not 0 < k <= n_layers for k in self.skip_in):
            raise ValueError(f"skip layers must be in 1..{n_layers}, got {self.skip_in}")
        dims = [d_in] + [width] * n_layers + [1 + feature_dim]
        self.layers = nn.ModuleList()
        n_lin = len(dims) - 1
        for i in range(n_lin):
            out_dim = dims[i + 1] - d_in if (i + 1) in self.skip_in else dims[i + 1]
            lin = nn.Linear(dims[i], out_dim)
            if geometric_init:
                self._geometric_init(lin, i, n_lin, dims, out_dim, init_radius)
            self.layers.append(weight_norm(lin) if use_weight_norm else lin)
        self.activation = ClampedSoftplus(softplus_beta)

    def _geometric_init(self, lin: nn.Linear, i: int, n_lin: int, dims: list[int], out_dim: int, radius: float) -> None:
        d_in = dims[0]
        with torch.no_grad():
            if i == n_lin - 1:  # last layer: f ≈ |x| − r
                nn.init.normal_(lin.weight, mean=math.sqrt(math.pi) / math.sqrt(dims[i]), std=1e-4)
                nn.init.constant_(lin.bias, -radius)
                return
            nn.init.constant_(lin.bias, 0.0)
            nn.init.normal_(lin.weight, 0.0, math.sqrt(2) / math.sqrt(out_dim))
            if i == 0:
                lin.weight[:, 3:] = 0.0  # encoder features start switched off
            elif i in self.skip_in:
                lin.weight[:, -(d_in - 3):] = 0.0  # the re-injected encoder features too

    def embed(self, x: Tensor) -> Tensor:
        """x [N, 3] → γ(x) [N, d_in] with x as the first three entries."""
        enc = self.encoder(x)
        return torch.cat([x, enc], dim=-1) if self.prepend_input else enc

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 3] (normalised frame) → [N, 1 + feature_dim]: SDF, then features."""
        inp = self.embed(x)
        h = inp
        for i, lin in enumerate(self.layers):
            if i in self.skip_in:
                h = torch.cat([h, inp], dim=-1) / math.sqrt(2)
            h = lin(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        if self.sdf_squash:
            h = torch.cat([squash_sdf(h[:, :1]), h[:, 1:]], dim=-1)
        return h

    def sdf(self, x: Tensor) -> Tensor:
        """x [N, 3] → [N] signed distance (normalised units)."""
        return self.forward(x)[:, 0]

    def sdf_inference(self, x: Tensor) -> Tensor:
        """x [N, 3] → [N] signed distance without gradients (the sphere tracer's evaluations).

        The same values as :meth:`sdf` (tests/test_idr_network.py), cheaper: the last layer computes
        only its SDF row (not the ``feature_dim`` feature rows), activations are clamped in place and
        no autograd state is recorded. On float32 CPU points the layers run compiled (``idr_cpu.cpp``:
        one call, a vectorised Softplus; within 1e-5 of :meth:`sdf`), else in PyTorch.
        """
        with torch.inference_mode():
            inp = self.embed(x)
            ext = IDR_EXTENSION.load() if inp.device.type == "cpu" and inp.dtype == torch.float32 else None
            if ext is not None:  # the same layers in one compiled call (parity: tests/test_idr_network.py)
                layers = list(self.layers)  # (slicing the ModuleList builds a new module: ~80 µs a call)
                ws = [lin.weight for lin in layers]
                bs = [lin.bias for lin in layers]
                ws[-1], bs[-1] = ws[-1][:1], bs[-1][:1]
                h = ext.sdf_mlp(inp, ws, bs, list(self.skip_in), self.activation.beta)[:, None]
            else:
                h = inp
                last = len(self.layers) - 1
                for i, lin in enumerate(self.layers):
                    if i in self.skip_in:
                        h = torch.cat([h, inp], dim=-1) / math.sqrt(2)
                    if i < last:
                        h = self.activation(lin(h), inplace=True)
                    else:
                        h = F.linear(h, lin.weight[:1], lin.bias[:1])
            f = squash_sdf(h[:, 0]) if self.sdf_squash else h[:, 0]
        return f.clone()  # a normal tensor: callers index and update it in place outside inference mode

    def sdf_and_gradient(self, x: Tensor, create_graph: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, 3] → (sdf [N], features [N, feature_dim], ∇ₓsdf [N, 3]).

        With ``create_graph`` the gradient is differentiable (eikonal loss, normals for shading).
        """
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            out = self.forward(x)
            sdf = out[:, 0]
            (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=create_graph)
        return sdf, out[:, 1:], grad


class RenderingNetwork(nn.Module):
    """IDR rendering network: (points, view dirs, normals, features) → RGB in [0, 1]."""

    def __init__(
        self,
        feature_dim: int,
        *,
        width: int = 512,
        n_layers: int = 4,
        view_encoder: Encoder,
        use_weight_norm: bool = True,
        output: str = "sigmoid",
    ) -> None:
        """``output``: "sigmoid" (RGB in [0, 1]) or "tanh" (IDR: RGB in [−1, 1])."""
        super().__init__()
        if output not in ("sigmoid", "tanh"):
            raise ValueError(f"output must be sigmoid or tanh, got {output!r}")
        self.output = output
        if view_encoder.in_dim != 3:
            raise ValueError(f"the view-direction encoder must take 3-D directions, got in_dim={view_encoder.in_dim}")
        self.view_encoder = view_encoder
        dims = [3 + self.view_encoder.out_dim + 3 + feature_dim] + [width] * n_layers + [3]
        self.layers = nn.ModuleList()
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1])
            self.layers.append(weight_norm(lin) if use_weight_norm else lin)

    def forward(self, points: Tensor, view_dirs: Tensor, normals: Tensor, features: Tensor) -> Tensor:
        """points/view_dirs/normals [N, 3], features [N, F] → rgb [N, 3] in [0, 1] (sigmoid) or [−1, 1] (tanh)."""
        h = torch.cat([points, self.view_encoder(view_dirs), normals, features], dim=-1)
        for i, lin in enumerate(self.layers):
            h = lin(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return torch.tanh(h) if self.output == "tanh" else torch.sigmoid(h)
