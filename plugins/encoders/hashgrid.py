"""Multiresolution hash encoding of instant-NGP (Müller et al. 2022): compiled CPU kernel, torch, tinycudann.

Definitions follow tiny-cuda-nn's ``HashGrid`` so that the same parameter vector gives the same
outputs with either backend:

* inputs in ``[-bound, bound]^D`` are mapped to ``u ∈ [0, 1]^D``;
* level l has ``scale_l = N_min · b^l − 1`` with ``b = exp(ln(N_max / N_min) / (L − 1))`` and
  ``res_l = ceil(scale_l) + 1`` vertices per side; a point sits at ``p = u · scale_l + 0.5``;
* level l owns ``T_l = next_multiple(min(res_l^D, 2^T), 8)`` table rows; a vertex ``v`` is indexed
  densely (``Σ v_d · res_l^d``) when ``res_l^D ≤ T_l``, otherwise by the spatial hash
  ``(v_0·1) xor (v_1·2654435761) xor (v_2·805459861)`` (uint32 arithmetic), in both cases ``mod T_l``;
* features are blended **trilinearly** from the 2^D cell corners (weights ``Π_d (1 − |p_d − v_d|)``
  with ``v = floor(p) + corner``), so the encoding is continuous with non-zero spatial gradients;
* outputs are level-major: ``[..., L · F]``; parameters are one flat vector (level, row, feature).

Backends: tinycudann on CUDA when installed; on the CPU the compiled kernel ``hashgrid_cpu.cpp``
(forward, backward and second derivatives in C++, ~14x faster than torch; the second derivatives
are what IDR's eikonal loss and normals need, a third raises), else the pure-PyTorch twin
:func:`_hash_grid_encode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from recon_core import Encoder, option

from . import _cpp
from ._tcnn import tcnn_available, tcnn_module

__all__ = ["HashGridEncoder", "HashGridLayout", "hash_grid_encode", "PRIMES"]

PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class HashGridLayout:
    """Per-level geometry of a hash grid (all lists have one entry per level)."""

    scales: list[float]
    resolutions: list[int]
    sizes: list[int]
    offsets: list[int]
    dense: list[bool]

    @property
    def total_rows(self) -> int:
        return self.offsets[-1] + self.sizes[-1]

    @staticmethod
    def create(in_dim: int, n_levels: int, log2_hashmap_size: int, base_resolution: int, per_level_scale: float) -> "HashGridLayout":
        scales, res, sizes, offsets, dense = [], [], [], [], []
        offset = 0
        for level in range(n_levels):
            scale = math.exp2(level * math.log2(per_level_scale)) * base_resolution - 1.0
            r = int(math.ceil(scale)) + 1
            size = min(r**in_dim, 2**log2_hashmap_size)
            size = (size + 7) // 8 * 8
            scales.append(scale)
            res.append(r)
            sizes.append(size)
            offsets.append(offset)
            dense.append(r**in_dim <= size)
            offset += size
        return HashGridLayout(scales, res, sizes, offsets, dense)


def _corner_offsets(in_dim: int, device: torch.device) -> Tensor:
    """[2^D, D] int64 binary corner offsets."""
    idx = torch.arange(2**in_dim, device=device)
    return ((idx[:, None] >> torch.arange(in_dim, device=device)) & 1).long()


def _hash_grid_encode(u: Tensor, table: Tensor, layout: HashGridLayout, n_active: int | None = None) -> Tensor:
    """Pure-PyTorch twin of tcnn's HashGrid forward (reference of the compiled kernel).

    Args:
        u: [N, D] positions in [0, 1] (values outside are clamped by the caller or wrap by hashing).
        table: [R, F] feature rows, R = ``layout.total_rows``.
        layout: per-level geometry.
        n_active: evaluate only the first ``n_active`` levels; the others are zeros (None: all).
    Returns:
        [N, L·F] level-major interpolated features (differentiable w.r.t. ``u`` and ``table``, to any order).
    """
    n, d = u.shape
    n_levels = len(layout.scales)
    a = n_levels if n_active is None else max(0, min(int(n_active), n_levels))
    if a == 0:
        return u.new_zeros(n, n_levels * table.shape[1])
    dev = u.device
    scales = torch.tensor(layout.scales[:a], dtype=u.dtype, device=dev)  # [A]
    pos = u[:, None, :] * scales[:, None] + 0.5  # [N, A, D]
    base = torch.floor(pos.detach())
    frac = pos - base  # [N, A, D], gradient flows through pos
    corners = _corner_offsets(d, dev)  # [C, D]
    vert = base.long()[:, :, None, :] + corners  # [N, A, C, D]
    # trilinear weights Π_d (frac_d if corner_d else 1 - frac_d)
    cf = corners.to(u.dtype)
    w = (frac[:, :, None, :] * cf + (1 - frac[:, :, None, :]) * (1 - cf)).prod(-1)  # [N, A, C]

    res = torch.tensor(layout.resolutions[:a], dtype=torch.long, device=dev)[:, None, None]  # [A, 1, 1]
    strides = res ** torch.arange(d, device=dev)  # [A, 1, D]: 1, res, res², …
    dense_idx = (vert * strides).sum(-1)  # [N, A, C]
    primes = torch.tensor(PRIMES[:d], dtype=torch.long, device=dev)
    hv = (vert * primes) & _U32
    hashed = hv[..., 0]
    for k in range(1, d):
        hashed = hashed ^ hv[..., k]
    is_dense = torch.tensor(layout.dense[:a], device=dev)[:, None]  # [A, 1]
    sizes = torch.tensor(layout.sizes[:a], dtype=torch.long, device=dev)[:, None]
    offsets = torch.tensor(layout.offsets[:a], dtype=torch.long, device=dev)[:, None]
    idx = torch.where(is_dense, dense_idx, hashed) % sizes + offsets  # [N, A, C]
    # index_select, not table[idx]: its backward is an index_add (the double backward of IDR's eikonal
    # loss runs it every step), ~2x faster on the CPU than the accumulating index_put of advanced indexing
    feats = table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])  # [N, A, C, F]
    out = (feats * w[..., None]).sum(2).reshape(n, -1)  # [N, A·F]
    if a < n_levels:
        out = torch.cat([out, out.new_zeros(n, (n_levels - a) * table.shape[1])], dim=-1)
    return out


def _layout_args(layout: HashGridLayout) -> tuple:
    return (list(layout.scales), list(layout.resolutions), list(layout.sizes), list(layout.offsets), list(layout.dense))


def _engine_will_use(t: Tensor) -> bool:
    """Inside a backward: whether the running autograd pass will use a gradient for ``t``
    (``ctx.needs_input_grad`` only says that ``t`` requires grad). True when it cannot tell."""
    try:
        return bool(torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(t).node))
    except (AttributeError, RuntimeError):
        return True


class _CompiledGradU(torch.autograd.Function):
    """∂(encoding)/∂u contracted with ``grad_out`` (the first-order backward), differentiable once
    more in C++ (``double_backward``): what IDR's eikonal loss and normals differentiate."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, u: Tensor, table: Tensor, layout: HashGridLayout, n_active: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad_out, u, table)
        ctx.layout, ctx.n_active = layout, n_active
        return _cpp.extension().backward(grad_out, u, table, *_layout_args(layout), n_active, True, False)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_u: Tensor):  # type: ignore[override]
        grad_out, u, table = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_go, d_u, d_t = _cpp.extension().double_backward(gg_u, grad_out, u, table, *_layout_args(ctx.layout), ctx.n_active,
                                                          need[0], need[1], need[2])
        return (d_go if need[0] else None), (d_u if need[1] else None), (d_t if need[2] else None), None, None


class _CompiledGradTable(torch.autograd.Function):
    """∂(encoding)/∂table contracted with ``grad_out`` (a scatter of w·grad_out), differentiable once
    more: w.r.t. grad_out it is the encoding of the incoming table gradient, w.r.t. u the first-order
    u-gradient with that as the table (both existing kernels)."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, u: Tensor, table: Tensor, layout: HashGridLayout, n_active: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad_out, u)
        ctx.layout, ctx.n_active = layout, n_active
        return _cpp.extension().backward(grad_out, u, table, *_layout_args(layout), n_active, False, True)[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_t: Tensor):  # type: ignore[override]
        grad_out, u = ctx.saved_tensors
        ext, args = _cpp.extension(), _layout_args(ctx.layout)
        gg_t = gg_t.contiguous()
        d_go = ext.forward(u, gg_t, *args, ctx.n_active) if ctx.needs_input_grad[0] else None
        d_u = ext.backward(grad_out, u, gg_t, *args, ctx.n_active, True, False)[0] if ctx.needs_input_grad[1] else None
        return d_go, d_u, None, None, None


class _CompiledHashGrid(torch.autograd.Function):
    """The compiled kernel as an autograd op.

    First-order backward runs in C++. When a backward is itself differentiated (``create_graph``:
    IDR's eikonal loss and normals differentiate ∇ₓSDF, which contains d(encoding)/du), it is built
    from :class:`_CompiledGradU` and :class:`_CompiledGradTable`, whose own backward is C++ too: second
    derivatives are exact (tested against the PyTorch twin); a third derivative raises.
    """

    @staticmethod
    def forward(ctx, u: Tensor, table: Tensor, layout: HashGridLayout, n_active: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u, table)
        ctx.layout, ctx.n_active = layout, n_active
        return _cpp.extension().forward(u, table, *_layout_args(layout), n_active)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        u, table = ctx.saved_tensors
        need_u, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # double backward requested: twice-differentiable compiled ops
            # ∇ₓ of IDR's eikonal loss and normals (autograd.grad w.r.t. the points) does not use the
            # table-sized table gradient: skip it when the engine will not run the table's node
            need_table = need_table and _engine_will_use(table)
            g_u = _CompiledGradU.apply(grad_out, u, table, ctx.layout, ctx.n_active) if need_u else None
            g_t = _CompiledGradTable.apply(grad_out, u, table, ctx.layout, ctx.n_active) if need_table else None
            return g_u, g_t, None, None
        g_u, g_t = _cpp.extension().backward(grad_out, u, table, *_layout_args(ctx.layout), ctx.n_active,
                                             need_u, need_table)
        return (g_u if need_u else None), (g_t if need_table else None), None, None


def hash_grid_encode(u: Tensor, table: Tensor, layout: HashGridLayout, n_active: int | None = None) -> Tensor:
    """Hash-grid encoding of ``u`` [N, D] in [0, 1] with ``table`` [R, F] → [N, L·F] (see module docstring).

    Uses the compiled CPU kernel (:mod:`._cpp`) for float32 CPU tensors when it is available,
    else the PyTorch twin :func:`_hash_grid_encode`; both give the same values and derivatives.
    """
    n_levels = len(layout.scales)
    a = n_levels if n_active is None else max(0, min(int(n_active), n_levels))
    usable = (not u.is_cuda and u.dtype == torch.float32 and table.dtype == torch.float32 and u.shape[1] <= 7
              and _cpp.extension() is not None)
    if not usable:
        return _hash_grid_encode(u, table, layout, a)
    return _CompiledHashGrid.apply(u.contiguous(), table, layout, a)


class HashGridEncoder(Encoder):
    """instant-NGP multiresolution hash grid (trilinear), torch or tinycudann (auto on CUDA)."""

    name = "hashgrid"
    description = "instant-NGP multiresolution hash grid, trilinear (torch; tinycudann on CUDA when installed)"
    table_lr = 1e-2  # instant-NGP's
    grad_clip = 1.0  # as FFB's (NFFB's): under IDR's losses the unclipped grid's eikonal loss kept blowing up
    # the sizes of the CPU benchmark (docs/benchmarks.md, IDR): 786 k table entries instead of 16 M
    cpu_options = {"n_levels": 12, "log2_hashmap_size": 15, "max_resolution": 512}

    @dataclass
    class Config:
        n_levels: int = option(16, "number of levels L", min=1)
        n_features_per_level: int = option(2, "features per level F", min=1)
        log2_hashmap_size: int = option(19, "table size per level is at most 2^T rows", min=1, max=30)
        base_resolution: int = option(16, "coarsest resolution N_min", min=1)
        max_resolution: int = option(2048, "finest resolution N_max (sets the per-level growth b)", min=1)
        bound: float = option(1.0, "inputs are expected in [-bound, bound]^D", min=1e-12)
        init_scale: float = option(1e-4, "table entries start uniform in ±init_scale", min=0)
        include_input: bool = option(False, "prepend the raw coordinates to the output")
        backend: str = option("auto", "auto: tinycudann on CUDA when installed, else torch", choices=("auto", "torch", "tcnn"))

    def __init__(self, config: "HashGridEncoder.Config | None" = None, in_dim: int = 3) -> None:
        super().__init__(config, in_dim)
        c = self.config
        if not 1 <= in_dim <= len(PRIMES):
            raise ValueError(f"hashgrid supports 1..{len(PRIMES)} input dimensions, got {in_dim}")
        self.includes_input = bool(c.include_input)
        self.per_level_scale = (
            math.exp(math.log(c.max_resolution / c.base_resolution) / (c.n_levels - 1)) if c.n_levels > 1 else 1.0
        )
        self.layout = HashGridLayout.create(in_dim, c.n_levels, c.log2_hashmap_size, c.base_resolution, self.per_level_scale)
        self._tcnn: nn.Module | None = None
        if c.backend == "tcnn" or (c.backend == "auto" and tcnn_available()):
            self._tcnn = tcnn_module(
                in_dim,
                {
                    "otype": "HashGrid",
                    "n_levels": c.n_levels,
                    "n_features_per_level": c.n_features_per_level,
                    "log2_hashmap_size": c.log2_hashmap_size,
                    "base_resolution": c.base_resolution,
                    "per_level_scale": self.per_level_scale,
                    "interpolation": "Linear",
                },
            )
            self.params = self._tcnn.params  # same flat (level, row, feature) layout as the torch twin
        else:
            self.params = nn.Parameter(torch.empty(self.layout.total_rows * c.n_features_per_level))
        with torch.no_grad():
            self.params.uniform_(-c.init_scale, c.init_scale)
        self.active_levels: int | None = None
        """Coarse-to-fine: only the first ``active_levels`` levels are evaluated, the rest output 0 (None: all)."""

    @property
    def n_grid_levels(self) -> int:
        return self.config.n_levels

    @property
    def grid_dim(self) -> int:
        """Number of grid features, L·F."""
        return self.config.n_levels * self.config.n_features_per_level

    def table_parameters(self) -> list[nn.Parameter]:
        """The hash table (all levels, one flat parameter): trainers give it ``table_lr``."""
        return [self.params]

    @property
    def out_dim(self) -> int:
        return self.grid_dim + (self.in_dim if self.includes_input else 0)

    def normalise(self, x: Tensor) -> Tensor:
        """[-bound, bound] → [0, 1], clamped."""
        b = self.config.bound
        return ((x + b) / (2 * b)).clamp(0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_dim] in [-bound, bound] → [..., out_dim] (raw x first if ``include_input``)."""
        flat = x.reshape(-1, self.in_dim)
        u = self.normalise(flat)
        if self._tcnn is not None and x.is_cuda:
            enc = self._tcnn(u).float()
            if self.active_levels is not None and self.active_levels < self.n_grid_levels:
                f = self.config.n_features_per_level
                enc = torch.cat([enc[:, : self.active_levels * f], enc.new_zeros(len(enc), enc.shape[1] - self.active_levels * f)], -1)
        else:
            enc = hash_grid_encode(u, self.params.view(-1, self.config.n_features_per_level), self.layout, self.active_levels)
        if self.includes_input:
            enc = torch.cat([flat, enc], dim=-1)
        return enc.reshape(*x.shape[:-1], self.out_dim)
