"""Neural Fourier Filter Banks (Wu et al., CVPR 2023) and a style-modulated variant.

Structure (L grid levels, hidden width H, F features per level):

* a multiresolution hash grid (see :mod:`.hashgrid`) gives per-level features ``g_l(x) ∈ R^F``;
* each level's features become Fourier features ``e_l = sin(2π · g_l B_l)`` with a learnable
  ``B_l ∈ R^{F×H}`` initialised ``N(0, (σ₀ · γ^l)²)`` — higher levels carry higher frequencies;
* a SIREN backbone on the normalised coordinates adds them level by level:
  ``h_0 = sin(ω₀(W_0 x + b_0))``, ``h_l = sin(ω₀(W_l h_{l-1} + b_l)) + e_{l-1}`` for l = 1…L;
* each ``h_l`` (l ≥ 1) goes through an output layer ``sin(ω₁(U_l h_l + c_l))`` and the L outputs are
  averaged: ``[..., out_features]``.

``ffb-stylemod`` has two variants (option ``variant``):

* ``stylegan2`` (default; ours): the hidden SIREN linear layers become StyleGAN2-like modulated
  layers whose per-point style is an affine map of the level's Fourier features,
  ``s_l = 1 + A_l e_{l-1}``: ``y = ((h ⊙ s) Wᵀ) · ‖W_o‖ / sqrt(Σ_i W_oi² s_i² + ε) + b`` (modulate,
  then demodulate back to the row norm of the unmodulated weight). ``A_l`` starts at zero, so the
  variant starts out equal to FFB.
* ``seed``: the HashModNFFBanks-IDR seed's ``StyleAttention``: the level's Fourier features are
  replaced by ``N(A e_{l-1})`` before they are added, ``h_l = sin(ω₀(W_l h_{l-1} + b_l)) + N(A e_{l-1})``,
  with one affine map ``A`` shared by all levels (PyTorch's default init) and ``N`` the per-point
  normalisation over the H features (``InstanceNorm1d`` of a [N, H] input: zero mean, unit biased
  variance, ε = 1e-5, no affine). (The seed's attention weight is a softmax over a single logit,
  identically 1, so it is left out.) Backbone and output heads stay NFFB's, as in ``ffb``; the seed's
  other FFB differences (one shared linear output layer, a backbone that does not carry the level
  features on) are not reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon_core import Encoder, option
from recon_core.activations import apply_activation
from recon_core.cpp_extension import DEFAULT_CFLAGS, declare_extension

from .hashgrid import HashGridEncoder

# -fno-trapping-math lets the sine loops vectorise; FMA contraction only changes roundings (parity
# with the PyTorch forward: tests/test_encoders_ffb.py)
FFB_EXTENSION = declare_extension("recon_ffb_cpu", [Path(__file__).with_name("ffb_cpu.cpp")],
                                  (*DEFAULT_CFLAGS, "-fno-trapping-math", "-ffp-contract=fast"))
"""FFB's compiled kernels (``ffb_cpu.cpp``): the forward without gradients (what the IDR sphere tracer
evaluates) and the sine activation with its derivative (training with double backward, :func:`sine`)."""


__all__ = ["FFBConfig", "FFBStyleModConfig", "FourierFilterBank", "FFBEncoder", "FFBStyleModEncoder", "sine"]


@dataclass(frozen=True)
class _SineKernels:
    """``sin(w z)`` for :func:`recon_core.activations.apply_activation`: d = w cos(w z), y'' = −w² y."""

    ext: object
    w: float

    def value_and_derivative(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.ext.sine_train(z, self.w)

    def second_derivative(self, y: Tensor, d: Tensor) -> Tensor:
        return y * -(self.w * self.w)

    def fused_grad(self, gy: Tensor, gd: Tensor, y: Tensor, d: Tensor) -> Tensor:
        return self.ext.sine_grad(gy, gd, y, d, self.w)


def sine(z: Tensor, w: float) -> Tensor:
    """``sin(w z)``. With autograd on float32 CPU tensors, one compiled pass for the value and its
    derivative, and compiled backwards (IDR's eikonal loss differentiates FFB twice: torch's sin
    records a cos in the backward and a sin in the double backward, each with its multiplies; parity:
    tests/test_encoders_ffb.py); otherwise ``torch.sin(w * z)``."""
    if torch.is_grad_enabled() and z.requires_grad and z.device.type == "cpu" and z.dtype == torch.float32:
        ext = FFB_EXTENSION.load()
        if ext is not None:
            return apply_activation(z, _SineKernels(ext, float(w)))
    return torch.sin(w * z)


@dataclass
class FFBConfig:
    n_levels: int = option(6, "grid levels L (the SIREN backbone has L + 1 layers)", min=1)
    hidden_dim: int = option(64, "SIREN width H", min=1)
    out_features: int = option(64, "output width of the averaged output layers", min=1)
    n_features_per_level: int = option(2, "grid features per level F", min=1)
    log2_hashmap_size: int = option(19, "hash table size per level is at most 2^T rows", min=1, max=30)
    # Grid and Fourier-map defaults follow NFFB's SDF configuration (N = 8 growing ×1.3 per level,
    # σ₀ = 5 growing ×1.2): with finer grids or faster-growing σ, ∇ₓ of the level features becomes so
    # large that IDR's eikonal loss blows up once the fine levels train (docs/benchmarks.md, IDR).
    base_resolution: int = option(8, "coarsest grid resolution", min=1)
    max_resolution: int = option(30, "finest grid resolution", min=1)
    base_sigma: float = option(5.0, "std σ₀ of the level-0 Fourier map B_0", min=0)
    exp_sigma: float = option(1.2, "growth γ of the Fourier map std per level", min=0)
    w0: float = option(30.0, "SIREN frequency ω₀ of the backbone")
    w1: float = option(30.0, "SIREN frequency ω₁ of the output layers")
    bound: float = option(1.0, "inputs are expected in [-bound, bound]^D", min=1e-12)
    include_input: bool = option(False, "prepend the raw coordinates to the output")
    backend: str = option("auto", "hash grid backend: auto (tinycudann on CUDA when installed) or torch",
                          choices=("auto", "torch", "tcnn"))


@dataclass
class FFBStyleModConfig(FFBConfig):
    variant: str = option("stylegan2", "style modulation: stylegan2 (modulated/demodulated SIREN layers, ours) or seed "
                          "(the seed's linear map + per-point normalisation of the level features)", choices=("stylegan2", "seed"))


def _siren_init_(lin: nn.Linear, w0: float, first: bool) -> None:
    """SIREN initialisation: U(±1/n) for the first layer, U(±sqrt(6/n)/ω₀) otherwise."""
    n = lin.in_features
    bound = 1.0 / n if first else math.sqrt(6.0 / n) / w0
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound)


def modulated_linear(h: Tensor, style: Tensor, lin: nn.Linear, eps: float = 1e-8) -> Tensor:
    """Per-point modulated/demodulated linear layer (see module docstring).

    h [N, I], style [N, I] → [N, O]; equals ``lin(h)`` when ``style`` is all ones.
    """
    w = lin.weight  # [O, I]
    row_norm = w.pow(2).sum(-1).add(eps).sqrt()  # [O]
    demod = (style.pow(2) @ w.pow(2).t()).add(eps).rsqrt()  # [N, O]
    return ((h * style) @ w.t()) * demod * row_norm + lin.bias


class FourierFilterBank(nn.Module):
    """The FFB network shared by ``ffb`` and ``ffb-stylemod``: x [N, D] → [N, out_features]."""

    def __init__(self, c: FFBConfig, in_dim: int, style_modulation: str | None) -> None:
        """``style_modulation``: None (FFB), "stylegan2" or "seed" (see module docstring)."""
        super().__init__()
        if c.n_levels < 1:
            raise ValueError("ffb needs at least one grid level")
        self.c = c
        self.style_modulation = style_modulation
        self.grid = HashGridEncoder(
            HashGridEncoder.Config(
                n_levels=c.n_levels,
                n_features_per_level=c.n_features_per_level,
                log2_hashmap_size=c.log2_hashmap_size,
                base_resolution=c.base_resolution,
                max_resolution=c.max_resolution,
                bound=c.bound,
                backend=c.backend,
            ),
            in_dim,
        )
        h, f = c.hidden_dim, c.n_features_per_level
        sig = torch.tensor([c.base_sigma * c.exp_sigma**lvl for lvl in range(c.n_levels)])
        self.fourier_maps = nn.Parameter(torch.randn(c.n_levels, f, h) * sig[:, None, None])  # B_l
        self.backbone = nn.ModuleList([nn.Linear(in_dim, h)] + [nn.Linear(h, h) for _ in range(c.n_levels)])
        for i, lin in enumerate(self.backbone):
            _siren_init_(lin, c.w0, first=i == 0)
        self.heads = nn.ModuleList([nn.Linear(h, c.out_features) for _ in range(c.n_levels)])
        for lin in self.heads:
            _siren_init_(lin, c.w1, first=False)
        if style_modulation == "seed":
            self.style_map = nn.Linear(h, h)
        elif style_modulation == "stylegan2":
            self.styles = nn.ModuleList([nn.Linear(h, h) for _ in range(c.n_levels)])
            for lin in self.styles:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def level_embeddings(self, x: Tensor) -> Tensor:
        """[N, D] → [L, N, H] Fourier features of the grid levels, ``sin(2π g_l B_l)``."""
        g = self.grid(x).view(x.shape[0], self.c.n_levels, self.c.n_features_per_level).transpose(0, 1)  # [L, N, F]
        return sine(torch.bmm(g, self.fourier_maps), 2 * math.pi)

    def forward(self, x: Tensor) -> Tensor:
        c = self.c
        if self.style_modulation is None and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32:
            ext = FFB_EXTENSION.load()
            if ext is not None:  # no gradients wanted (IDR's tracer): one compiled pass after the grid's kernel
                return ext.ffb_forward(x, self.grid(x), self.fourier_maps, [lin.weight for lin in self.backbone],
                                       [lin.bias for lin in self.backbone], [lin.weight for lin in self.heads],
                                       [lin.bias for lin in self.heads], c.w0, c.w1, c.bound)
        # per-level views through unbind: its backward stacks the L gradients once, where indexing
        # emb[lvl] would build a zero [L, N, H] gradient per level and add them up
        emb = self.level_embeddings(x).unbind(0)
        h = sine(self.backbone[0](x / c.bound), c.w0)
        out = 0.0
        for lvl in range(c.n_levels):
            lin = self.backbone[lvl + 1]
            if self.style_modulation == "stylegan2":
                pre = modulated_linear(h, 1.0 + self.styles[lvl](emb[lvl]), lin)
            else:
                pre = lin(h)
            e = emb[lvl]
            if self.style_modulation == "seed":
                e = F.layer_norm(self.style_map(e), (e.shape[-1],), eps=1e-5)  # = InstanceNorm1d of an [N, H] input
            h = sine(pre, c.w0) + e
            out = out + sine(self.heads[lvl](h), c.w1)
        return out / c.n_levels


class _FFBBase:
    """Shared behaviour of the two FFB encoders (a mixin; each encoder subclasses Encoder once)."""

    config: FFBConfig
    in_dim: int
    net: FourierFilterBank
    # Recommended Adam lrs (trainers use them unless told otherwise). The grid features pass through
    # sin(2π g B) and the SIREN amplifies weight changes by ω₀: with instant-NGP's 1e-2 table lr, or the
    # IDR networks' 5e-4 for the SIREN, IDR's eikonal loss blew up within a few hundred steps
    # (docs/benchmarks.md, IDR). 1e-4 is SIREN's and NFFB's lr.
    table_lr = 1e-3
    weights_lr = 1e-4
    # NFFB halves its lr every tenth of training; with IDR's two halvings (50 %, 75 %) FFB's eikonal
    # loss kept fluctuating to the end of a 60-minute run and its surface stopped improving.
    lr_milestones = (0.5, 0.6, 0.7, 0.8, 0.9)
    # NFFB clips the gradient's norm at 1.0; without it IDR's eikonal loss kept blowing up for tens of
    # steps at a time, and the runs where it did most ended with the worst surfaces (docs/benchmarks.md, IDR)
    grad_clip = 1.0
    cpu_options = {"log2_hashmap_size": 15}  # the CPU benchmark's table (docs/benchmarks.md, IDR)

    @property
    def out_dim(self) -> int:
        return self.config.out_features + (self.in_dim if self.config.include_input else 0)

    @property
    def n_grid_levels(self) -> int:
        return self.config.n_levels

    @property
    def active_levels(self) -> int | None:
        """Coarse-to-fine: grid levels in use (the others give zero features, hence zero Fourier features)."""
        return self.net.grid.active_levels

    @active_levels.setter
    def active_levels(self, value: int | None) -> None:
        self.net.grid.active_levels = value

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_dim] in [-bound, bound] → [..., out_dim] (raw x first if ``include_input``)."""
        flat = x.reshape(-1, self.in_dim)
        enc = self.net(flat)
        if self.config.include_input:
            enc = torch.cat([flat, enc], dim=-1)
        return enc.reshape(*x.shape[:-1], self.out_dim)


class FFBEncoder(_FFBBase, Encoder):
    """Neural Fourier Filter Banks: hash-grid Fourier features added level by level to a SIREN."""

    name = "ffb"
    description = "Neural Fourier Filter Banks (hash-grid Fourier features + SIREN backbone, outputs averaged)"
    Config = FFBConfig

    def __init__(self, config: FFBConfig | None = None, in_dim: int = 3) -> None:
        Encoder.__init__(self, config, in_dim)
        self.includes_input = bool(self.config.include_input)
        self.net = FourierFilterBank(self.config, in_dim, style_modulation=None)


class FFBStyleModEncoder(_FFBBase, Encoder):
    """FFB whose hidden SIREN layers are style-modulated by the level's Fourier grid features."""

    name = "ffb-stylemod"
    description = "Fourier Filter Banks with style modulation by grid features (variant stylegan2, or the seed's)"
    Config = FFBStyleModConfig

    def __init__(self, config: FFBStyleModConfig | None = None, in_dim: int = 3) -> None:
        Encoder.__init__(self, config, in_dim)
        self.includes_input = bool(self.config.include_input)
        self.net = FourierFilterBank(self.config, in_dim, style_modulation=self.config.variant)


