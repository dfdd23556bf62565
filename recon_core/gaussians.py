"""The 3D Gaussian primitive set that Gaussian representations hand to Gaussian renderers.

Any representation providing the "gaussians-3d" capability returns a :class:`Gaussians3D` from
``gaussians(time)``; every Gaussian renderer (torch-3dgs, gsplat, the compiled CPU path)
consumes it. Values are *activated* (scales, not log-scales; opacities in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

__all__ = ["Gaussians3D", "SH_C0", "rgb_to_sh", "sh_to_rgb", "num_sh_bases"]

SH_C0 = 0.28209479177387814
"""Zeroth spherical-harmonic basis constant: rgb = sh_dc * SH_C0 + 0.5."""


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: Tensor) -> Tensor:
    return sh_dc * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


@dataclass(frozen=True)
class Gaussians3D:
    """N activated 3D Gaussians.

    Attributes:
        means: [N, 3] world positions.
        quats: [N, 4] rotations, wxyz, not necessarily normalised.
        scales: [N, 3] standard deviations along the rotated axes (world units).
        opacities: [N] in [0, 1].
        sh: [N, K, 3] spherical-harmonic coefficients, K = (sh_degree + 1)^2, or None.
        colors: [N, 3] view-independent RGB, used when ``sh`` is None.
        sh_degree: the degree to evaluate (may be lower than the stored K allows).
        background: optional callable (cameras) -> [N_cams, H, W, 3] image composited behind the
            Gaussians as alpha * render + (1 - alpha) * background (e.g. DGGT's sky model).
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor | None = None
    colors: Tensor | None = None
    sh_degree: int = 0
    background: Callable | None = None

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        assert self.means.shape == (n, 3), f"means must be [N, 3], got {tuple(self.means.shape)}"
        assert self.quats.shape == (n, 4), f"quats must be [N, 4], got {tuple(self.quats.shape)}"
        assert self.scales.shape == (n, 3), f"scales must be [N, 3], got {tuple(self.scales.shape)}"
        assert self.opacities.shape == (n,), f"opacities must be [N], got {tuple(self.opacities.shape)}"
        assert (self.sh is None) != (self.colors is None), "give exactly one of sh and colors"
        if self.sh is not None:
            assert self.sh.ndim == 3 and self.sh.shape[0] == n and self.sh.shape[2] == 3
            assert num_sh_bases(self.sh_degree) <= self.sh.shape[1], "sh_degree exceeds stored coefficients"
        else:
            assert self.colors.shape == (n, 3)

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def max_sh_degree(self) -> int:
        return 0 if self.sh is None else int(math.isqrt(self.sh.shape[1])) - 1
