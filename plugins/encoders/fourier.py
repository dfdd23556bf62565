"""Frequency encodings: NeRF positional encoding (``fourier``), random Gaussian Fourier features
(``fourier-features``) and spherical harmonics of directions (``sh``).

``fourier``:

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

__all__ = ["FourierEncoder", "GaussianFourierEncoder", "SphericalHarmonicsEncoder", "frequency_encoding", "spherical_harmonics",
           "tcnn_frequency_permutation"]


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


class GaussianFourierEncoder(Encoder):
    """Random Fourier features (Tancik et al. 2020), as the HashModNFFBanks-IDR seed's ``FourierFeature``.

    ``γ(x) = [x, sin(2π x B), cos(2π x B)]`` with ``B ∈ R^{D×M}`` drawn once from N(0, σ²) and kept
    fixed (a persistent buffer: it is saved with the weights). The seed sizes M from its network's
    first ``dims`` entry, which is the input size 3 — hence the default M = 3, σ = 1; B is drawn from
    ``seed`` (the seed's comes from the global torch RNG).
    """

    name = "fourier-features"
    description = "random Gaussian Fourier features [x, sin(2πxB), cos(2πxB)], B ~ N(0, σ²) fixed (the seed's FourierFeature)"

    @dataclass
    class Config:
        n_features: int = option(3, "number of random frequencies M (the seed: 3)", min=1)
        sigma: float = option(1.0, "standard deviation σ of the frequencies", min=0)
        include_input: bool = option(True, "prepend the raw coordinates")
        seed: int = option(0, "seed of the random frequencies B")

    def __init__(self, config: "GaussianFourierEncoder.Config | None" = None, in_dim: int = 3) -> None:
        super().__init__(config, in_dim)
        c = self.config
        self.includes_input = bool(c.include_input)
        g = torch.Generator().manual_seed(int(c.seed))
        self.register_buffer("B", torch.randn(in_dim, c.n_features, generator=g) * c.sigma)

    @property
    def out_dim(self) -> int:
        return self.in_dim * int(self.config.include_input) + 2 * self.config.n_features

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_dim] → [..., out_dim]."""
        xp = (2 * math.pi * x) @ self.B.to(x.dtype)
        parts = ([x] if self.config.include_input else []) + [torch.sin(xp), torch.cos(xp)]
        return torch.cat(parts, dim=-1)


# Real spherical-harmonics constants (the values tiny-cuda-nn and the seed's SHEncoder use).
_SH_C = (
    (0.28209479177387814,),
    (0.4886025119029199,),
    (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396),
    (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
     1.445305721320277, -0.5900435899266435),
    (2.5033429417967046, -1.7701307697799304, 0.9461746957575601, -0.6690465435572892, 0.10578554691520431,
     -0.6690465435572892, 0.47308734787878004, -1.7701307697799304, 0.6258357354491761),
)


def spherical_harmonics(d: Tensor, degree: int) -> Tensor:
    """Real SH basis of unit directions d [..., 3] up to band ``degree − 1``: [..., degree²]."""
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, _SH_C[0][0])]
    if degree > 1:
        c = _SH_C[1][0]
        out += [-c * y, c * z, -c * x]
    if degree > 2:
        c = _SH_C[2]
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [c[0] * xy, c[1] * yz, c[2] * (2 * zz - xx - yy), c[3] * xz, c[4] * (xx - yy)]
    if degree > 3:
        c = _SH_C[3]
        out += [c[0] * y * (3 * xx - yy), c[1] * xy * z, c[2] * y * (4 * zz - xx - yy), c[3] * z * (2 * zz - 3 * xx - 3 * yy),
                c[4] * x * (4 * zz - xx - yy), c[5] * z * (xx - yy), c[6] * x * (xx - 3 * yy)]
    if degree > 4:
        c = _SH_C[4]
        out += [c[0] * xy * (xx - yy), c[1] * yz * (3 * xx - yy), c[2] * xy * (7 * zz - 1), c[3] * yz * (7 * zz - 3),
                c[4] * (zz * (35 * zz - 30) + 3), c[5] * xz * (7 * zz - 3), c[6] * (xx - yy) * (7 * zz - 1),
                c[7] * xz * (xx - 3 * yy), c[8] * (xx * (xx - 3 * yy) - yy * (3 * xx - yy))]
    return torch.stack(out, dim=-1)


class SphericalHarmonicsEncoder(Encoder):
    """Real spherical harmonics of a direction (the seed's ``SHEncoder``; view directions)."""

    name = "sh"
    description = "real spherical-harmonics basis of unit 3-D directions (degree² outputs; for view directions)"

    @dataclass
    class Config:
        degree: int = option(4, "number of SH bands (outputs: degree²); the seed uses 4", min=1, max=5)

    def __init__(self, config: "SphericalHarmonicsEncoder.Config | None" = None, in_dim: int = 3) -> None:
        super().__init__(config, in_dim)
        if in_dim != 3:
            raise ValueError(f"spherical harmonics encode 3-D directions, got in_dim={in_dim}")
        self.includes_input = False

    @property
    def out_dim(self) -> int:
        return self.config.degree**2

    def forward(self, x: Tensor) -> Tensor:
        """Unit directions [..., 3] → [..., degree²]."""
        return spherical_harmonics(x, self.config.degree)
