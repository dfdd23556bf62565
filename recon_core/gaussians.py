"""The Gaussian scene protocol: how representations made of 3D Gaussians expose their parameters.

A representation providing "gaussians-3d" subclasses :class:`GaussianRepresentation`. Its
Gaussians live in ``rep.splats``, an ``nn.ParameterDict`` shaped like gsplat's ``splats``: one
row per Gaussian in every entry, *raw* (unconstrained) values, gsplat's names:

    ========== ============ ===================================================== =============
    key        shape        raw value                                             activation
    ========== ============ ===================================================== =============
    means      [N, 3]       world position                                        identity
    quats      [N, 4]       rotation, wxyz, not normalised                        normalise
    scales     [N, 3]       log standard deviations                               exp
    opacities  [N]          logit opacity                                         sigmoid
    sh0        [N, 1, 3]    SH DC coefficient (rgb = sh0 * SH_C0 + 0.5)           identity
    shN        [N, K-1, 3]  higher SH bands, K = (degree + 1)^2                   identity
    times      [N]          optional: scene time the Gaussian belongs to          identity
    lifespans  [N]          optional: log lifespan (DGGT-style fading)            exp
    ========== ============ ===================================================== =============

A representation may hold further per-Gaussian entries (e.g. a flag); they are stored as
parameters without gradient so that anything that adds or removes rows (a densification
strategy: ours or gsplat's, which edit ``splats`` in place) keeps them aligned.

``refinable`` names the entries an optimiser may train; ``rep.gaussians(time)`` returns the
activated :class:`Gaussians3D` that renderers draw; ``set_splats`` replaces every entry. That is
the whole contract: refiners (``3dgs-train``, ``ttr``, ``confidence``, ``difix3d+``) use nothing
else, so a third-party Gaussian representation works with all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from .components import Representation
from .errors import InputError

__all__ = [
    "Gaussians3D",
    "GaussianRepresentation",
    "SH_C0",
    "SPLAT_KEYS",
    "OPTIONAL_SPLAT_KEYS",
    "rgb_to_sh",
    "sh_to_rgb",
    "num_sh_bases",
    "empty_splats",
    "splats_from_activated",
    "activate",
]

SH_C0 = 0.28209479177387814
"""Zeroth spherical-harmonic basis constant: rgb = sh_dc * SH_C0 + 0.5."""

SPLAT_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")
"""The entries every Gaussian representation holds (gsplat's names), in a fixed order."""

OPTIONAL_SPLAT_KEYS = ("times", "lifespans")
"""Entries of dynamic Gaussian representations (per-Gaussian time and log lifespan)."""


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: Tensor) -> Tensor:
    return sh_dc * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


@dataclass(frozen=True)
class Gaussians3D:
    """N activated 3D Gaussians, what renderers draw.

    Attributes:
        means: [N, 3] world positions.
        quats: [N, 4] rotations, wxyz, not necessarily normalised.
        scales: [N, 3] standard deviations along the rotated axes (world units).
        opacities: [N] in [0, 1].
        sh: [N, K, 3] spherical-harmonic coefficients, K = (sh_degree + 1)^2, or None.
        colors: [N, 3] view-independent RGB, used when ``sh`` is None.
        sh_degree: the degree to evaluate (may be lower than the stored K allows).
        background: optional callable (cameras, renderer) -> [N_cams, H, W, 3] image that is part
            of the scene (e.g. DGGT's sky model, drawn by the same renderer), composited behind the
            Gaussians instead of the run's background colour.
        rows: [N] int64 rows of ``rep.splats`` these Gaussians come from, or None when they are
            every row in order (strategies that read a renderer's per-Gaussian ``info`` need that).
        composite: optional callable (rgb, alpha, background) -> image replacing the renderers'
            default ``rgb + (1 - alpha) * background`` (rgb is the rasteriser's, already weighted by
            alpha). DGGT was trained with ``alpha * rgb + (1 - alpha) * sky`` and sets it.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor | None = None
    colors: Tensor | None = None
    sh_degree: int = 0
    background: Callable | None = None
    rows: Tensor | None = None
    composite: Callable | None = None

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


def empty_splats(sh_degree: int) -> dict[str, Tensor]:
    """Zero Gaussians with room for ``sh_degree``."""
    return {
        "means": torch.zeros(0, 3),
        "quats": torch.zeros(0, 4),
        "scales": torch.zeros(0, 3),
        "opacities": torch.zeros(0),
        "sh0": torch.zeros(0, 1, 3),
        "shN": torch.zeros(0, num_sh_bases(sh_degree) - 1, 3),
    }


_LOGIT_EPS = 1e-6


def splats_from_activated(g: Gaussians3D, sh_degree: int | None = None) -> dict[str, Tensor]:
    """Raw splats of activated Gaussians (e.g. a feed-forward network's output).

    Scales become log-scales, opacities logits (clamped to [1e-6, 1 - 1e-6]), colours SH DC;
    ``sh_degree`` (default: the degree ``g`` stores, 0 for colours) pads missing bands with 0.
    """
    n = len(g)
    sh = g.sh if g.sh is not None else rgb_to_sh(g.colors)[:, None, :]
    degree = g.max_sh_degree if sh_degree is None else sh_degree
    k = num_sh_bases(degree)
    if sh.shape[1] < k:
        sh = torch.cat([sh, sh.new_zeros(n, k - sh.shape[1], 3)], dim=1)
    return {
        "means": g.means,
        "quats": g.quats,
        "scales": torch.log(g.scales.clamp_min(1e-12)),
        "opacities": torch.logit(g.opacities, eps=_LOGIT_EPS),
        "sh0": sh[:, :1],
        "shN": sh[:, 1:k],
    }


def activate(splats: Mapping[str, Tensor], sh_degree: int, rows: Tensor | None = None, **extra: Any) -> Gaussians3D:
    """The activated Gaussians of raw ``splats`` (all rows, or those in ``rows``).

    ``extra`` overrides or adds :class:`Gaussians3D` fields (e.g. ``opacities`` after fading,
    ``background``). Differentiable w.r.t. every entry.
    """
    pick = (lambda t: t) if rows is None else (lambda t: t[rows])
    values: dict[str, Any] = {
        "means": pick(splats["means"]),
        "quats": pick(splats["quats"]),
        "scales": torch.exp(pick(splats["scales"])),
        "opacities": torch.sigmoid(pick(splats["opacities"])),
        "sh": torch.cat([pick(splats["sh0"]), pick(splats["shN"])], dim=1),
        "sh_degree": sh_degree,
        "rows": rows,
    }
    values.update(extra)
    return Gaussians3D(**values)


class GaussianRepresentation(Representation):
    """Base of representations made of 3D Gaussians (see the module doc for the protocol).

    Subclasses implement ``build`` (filling ``splats`` with :meth:`set_splats`) and may
    override :meth:`gaussians` (time-dependent Gaussians, a scene background) and ``refinable``.
    """

    provides = frozenset({"gaussians-3d"})
    default_renderer = {"cpu": "torch-3dgs", "cuda": "gsplat"}
    export_formats = ("ply", "splat", "ply_compressed")
    refinable: ClassVar[frozenset[str]] = frozenset(SPLAT_KEYS)
    """Entries of ``splats`` an optimiser may train (others keep ``requires_grad=False``)."""

    def __init__(self, config: Any = None, sh_degree: int = 3) -> None:
        super().__init__(config)
        if not 0 <= int(sh_degree) <= 3:
            raise InputError(f"{self.name}.sh_degree must be between 0 and 3, got {sh_degree}")
        self.splats = nn.ParameterDict()
        self.set_splats(empty_splats(int(sh_degree)))
        self.active_sh_degree: int = int(sh_degree)
        """Degree ``gaussians()`` evaluates (a refiner raises it progressively); capped by ``max_sh_degree``."""

    # ----------------------------------------------------------------------------- entries

    def set_splats(self, values: Mapping[str, Tensor], device: torch.device | str | None = None) -> None:
        """Replace every entry of ``splats`` by ``values`` (copied; float entries as float32).

        Optimizers holding the old parameters must be rebuilt afterwards.
        """
        missing = [k for k in SPLAT_KEYS if k not in values]
        if missing:
            raise ValueError(f"{self.name}: splats lack {', '.join(missing)}")
        n = values["means"].shape[0]
        bad = {k: tuple(v.shape) for k, v in values.items() if v.shape[:1] != (n,)}
        if bad:
            raise ValueError(f"{self.name}: every splat entry needs {n} rows; got {bad}")
        if device is None:
            device = self.splats["means"].device if "means" in self.splats else "cpu"
        for key in list(self.splats.keys()):
            if key not in values:
                del self.splats[key]
        for key, value in values.items():
            value = value.detach().to(device).clone()  # never alias the source
            if value.is_floating_point():
                value = value.float()
            self.splats[key] = nn.Parameter(value, requires_grad=value.is_floating_point() and key in self.refinable)

    def splat_values(self) -> dict[str, Tensor]:
        """Every entry, detached, on the CPU (what the PLY writer and checkpoints store)."""
        return {k: v.detach().cpu() for k, v in self.splats.items()}

    def __len__(self) -> int:
        return self.splats["means"].shape[0]

    @property
    def max_sh_degree(self) -> int:
        """The SH degree ``shN`` has room for."""
        return math.isqrt(self.splats["shN"].shape[1] + 1) - 1

    def sh_degree_in_use(self) -> int:
        return max(0, min(int(self.active_sh_degree), self.max_sh_degree))

    # ------------------------------------------------------------------------------ queries

    def gaussians(self, time: float | None = None) -> Gaussians3D:
        """Every Gaussian, activated (static representations ignore ``time``)."""
        return activate(self.splats, self.sh_degree_in_use())

    def export(self, out_dir: Path, fmt: str) -> list[Path]:
        """Written atomically into ``out_dir``: ``ply`` → ``point_cloud.ply`` (INRIA layout),
        ``splat`` → ``point_cloud.splat`` (antimatter15), ``ply_compressed`` →
        ``point_cloud.compressed.ply`` (SuperSplat, through gsplat); see :mod:`recon_core.splatfile`."""
        from .ply import write_splat_ply
        from .splatfile import write_ply_compressed, write_splat_file

        if fmt not in self.export_formats:
            raise InputError(f"{self.name} cannot export '{fmt}'; formats: {', '.join(self.export_formats)}")
        out = Path(out_dir)
        if fmt == "splat":
            return [write_splat_file(out / "point_cloud.splat", self.splat_values())]
        if fmt == "ply_compressed":
            return [write_ply_compressed(out / "point_cloud.compressed.ply", self.splat_values())]
        return [write_splat_ply(out / "point_cloud.ply", self.splat_values())]

    def load_state_dict_resizing(self, state: Mapping[str, Tensor]) -> None:
        """Load a checkpoint whose Gaussian count differs (densified), then use every SH band."""
        prefix = "splats."
        splats = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
        if "means" not in splats:
            raise KeyError("checkpoint lacks the Gaussians (splats.*)")
        device = self.splats["means"].device
        self.set_splats(splats, device)
        super().load_state_dict_resizing(rest | {prefix + k: v for k, v in self.splats.items()})
        self.active_sh_degree = self.max_sh_degree

