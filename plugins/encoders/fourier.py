"""NeRF positional (frequency) encoding.

``γ(x) = [x, sin(2⁰x), cos(2⁰x), …, sin(2^{L-1}x), cos(2^{L-1}x)]`` in IDR's layout: the raw input
first (when ``include_input``), then for each frequency k the sines of every input dimension followed
by the cosines. With ``pi_scale`` the arguments are multiplied by π (tiny-cuda-nn's ``Frequency``
definition); then tinycudann is used on CUDA when installed and its output is permuted into this layout,
so both backends give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from recon_core import Encoder, option

from ._tcnn import tcnn_available, tcnn_module

__all__ = ["FourierEncoder", "frequency_encoding", "tcnn_frequency_permutation"]


def frequency_encoding(x: Tensor, n_frequencies: int, include_input: bool = True, pi_scale: bool = False) -> Tensor:
    """[..., D] → [..., D·(include_input + 2·n_frequencies)], IDR/NeRF layout (see module docstring)."""
    parts = [x] if include_input else []
    if n_frequencies > 0:
        freqs = 2.0 ** torch.arange(n_frequencies, dtype=x.dtype, device=x.device)
        if pi_scale:
            freqs = freqs * math.pi
        xf = x[..., None, :] * freqs[:, None]  # [..., L, D]
        parts.append(torch.cat([torch.sin(xf), torch.cos(xf)], dim=-1).flatten(-2))  # [..., L·2D]
    return torch.cat(parts, dim=-1) if parts else x[..., :0]


def tcnn_frequency_permutation(in_dim: int, n_frequencies: int) -> Tensor:
    """Index p with ``ours[..., i] = tcnn[..., p[i]]`` (tcnn layout: dim-major, then frequency, then sin/cos)."""
    k = torch.arange(n_frequencies)[:, None, None]
    s = torch.arange(2)[None, :, None]
    d = torch.arange(in_dim)[None, None, :]
    return (d * (2 * n_frequencies) + k * 2 + s).flatten()  # ours is ordered (k, s, d)


class FourierEncoder(Encoder):
    """Positional encoding of NeRF/IDR (6 frequencies for positions, 4 for view directions)."""

    name = "fourier"
    description = "NeRF positional encoding [x, sin(2^k x), cos(2^k x)] (IDR: 6 frequencies for points, 4 for views)"

    @dataclass
    class Config:
        n_frequencies: int = option(6, "number of octaves L (frequencies 2^0 … 2^(L-1))", min=0)
        include_input: bool = option(True, "prepend the raw coordinates")
        pi_scale: bool = option(False, "multiply arguments by π (tiny-cuda-nn's Frequency definition)")
        backend: str = option("auto", "auto: tinycudann on CUDA when installed and pi_scale is set; torch: always torch",
                              choices=("auto", "torch", "tcnn"))

    def __init__(self, config: "FourierEncoder.Config | None" = None, in_dim: int = 3) -> None:
        super().__init__(config, in_dim)
        c = self.config
        self.includes_input = bool(c.include_input)
        """Whether the first ``in_dim`` outputs are the raw input (networks then skip re-appending it)."""
        self._tcnn = None
        if c.n_frequencies > 0 and c.pi_scale and (c.backend == "tcnn" or (c.backend == "auto" and tcnn_available())):
            self._tcnn = tcnn_module(in_dim, {"otype": "Frequency", "n_frequencies": c.n_frequencies})
            self.register_buffer("_perm", tcnn_frequency_permutation(in_dim, c.n_frequencies), persistent=False)

    @property
    def out_dim(self) -> int:
        c = self.config
        return self.in_dim * (int(c.include_input) + 2 * c.n_frequencies)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_dim] → [..., out_dim]."""
        c = self.config
        if self._tcnn is not None and x.is_cuda:
            flat = x.reshape(-1, self.in_dim)
            enc = self._tcnn(flat).float()[:, self._perm]
            if c.include_input:
                enc = torch.cat([flat, enc], dim=-1)
            return enc.reshape(*x.shape[:-1], self.out_dim)
        return frequency_encoding(x, c.n_frequencies, c.include_input, c.pi_scale)
