"""The ``3dgs`` representation: a set of 3D Gaussians with spherical-harmonic colour.

Parameters (``nn.Parameter`` attributes, gsplat names, *raw* values — this is the "3dgs
layout" that the ``3dgs-train`` refiner and the PLY writer rely on):

    means      [N, 3]       world positions
    quats      [N, 4]       rotations, wxyz, not normalised
    scales     [N, 3]       log standard deviations
    opacities  [N]          logit opacities
    sh0        [N, 1, 3]    SH DC coefficients (rgb = sh0 * SH_C0 + 0.5)
    shN        [N, K-1, 3]  higher SH bands, K = (sh_degree + 1)^2 ([N, 0, 3] at degree 0)

Other plugins (DGGT, ReconX) create one from tensors with :meth:`GaussianSplat.from_gaussians`
(activated values, e.g. a network's output) or :meth:`GaussianSplat.from_raw` (raw values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon_core.cameras import Cameras
from recon_core.components import Encoder, Representation
from recon_core.config import option
from recon_core.errors import InputError
from recon_core.gaussians import Gaussians3D, num_sh_bases, rgb_to_sh
from recon_core.scene import Scene, Video

from .init import initial_points, knn_scales
from .ply import SplatPly, read_splat_ply, write_splat_ply

__all__ = ["GaussianSplat", "GaussianSplatConfig", "PARAMETER_NAMES"]

PARAMETER_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")
"""The raw parameters of the 3dgs layout, in a fixed order."""


@dataclass
class GaussianSplatConfig:
    init: str = option("auto", "where Gaussians start: auto (point cloud, else depth, else random), points, depth, random, ply",
                       choices=("auto", "points", "depth", "random", "ply"))
    ply_path: str | None = option(None, "3DGS PLY to start from (init=ply)")
    num_points: int = option(50_000, "at most this many initial Gaussians (random init: exactly this many)")
    sh_degree: int = option(3, "highest spherical-harmonics degree stored (0-3)")
    init_opacity: float = option(0.1, "initial opacity of every Gaussian")
    init_scale: float = option(1.0, "initial scale = this x mean distance to the 3 nearest neighbours")
    seed: int = option(0, "seed of the initialisation's random choices (subsampling, random points, rotations)")
    background: list[float] | None = option(None, "RGB colour behind the Gaussians in every render (None: the renderer's "
                                                  "background argument; 3dgs-train sets the colour it trains on)")


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


class _ConstantBackground:
    """``Gaussians3D.background`` for a constant colour: cameras → [N, H, W, 3] (same-sized cameras)."""

    def __init__(self, color: Tensor) -> None:
        self.color = color

    def __call__(self, cameras: Cameras) -> Tensor:
        h, w = cameras.size(0)
        return self.color.reshape(1, 1, 1, 3).expand(len(cameras), h, w, 3)


class GaussianSplat(Representation):
    """3D Gaussian Splatting (Kerbl et al. 2023): N anisotropic Gaussians with SH colour."""

    name = "3dgs"
    description = "3D Gaussian Splatting: Gaussians with SH colour, PLY export (INRIA layout)"
    Config = GaussianSplatConfig
    provides = frozenset({"gaussians-3d"})
    default_renderer = {"cpu": "torch-3dgs", "cuda": "gsplat"}
    native_refiner = "3dgs-train"
    export_formats = ("ply",)

    means: nn.Parameter
    quats: nn.Parameter
    scales: nn.Parameter
    opacities: nn.Parameter
    sh0: nn.Parameter
    shN: nn.Parameter

    def __init__(self, config: GaussianSplatConfig | None = None) -> None:
        super().__init__(config)
        degree = int(self.config.sh_degree)
        if not 0 <= degree <= 3:
            raise InputError(f"3dgs.sh_degree must be between 0 and 3, got {degree}")
        empty = SplatPly(
            means=torch.zeros(0, 3),
            quats=torch.zeros(0, 4),
            log_scales=torch.zeros(0, 3),
            logit_opacities=torch.zeros(0),
            sh0=torch.zeros(0, 1, 3),
            shN=torch.zeros(0, num_sh_bases(degree) - 1, 3),
        )
        self.set_raw(empty)
        self.register_buffer("background_color", torch.full((3,), float("nan")))
        """[3] RGB composited behind the Gaussians by every renderer (NaN: none, use the renderer's)."""
        if self.config.background is not None:
            self.set_background(self.config.background)
        self.active_sh_degree: int = degree
        """Degree ``gaussians()`` evaluates (a refiner raises it progressively); capped by ``max_sh_degree``."""

    # ------------------------------------------------------------------------------ creation

    def set_raw(self, raw: SplatPly, device: torch.device | str | None = None) -> None:
        """Replace every parameter with the raw values in ``raw`` (optimizers must be rebuilt)."""
        device = device if device is not None else (self.means.device if hasattr(self, "means") else "cpu")
        for name, value in zip(PARAMETER_NAMES, (raw.means, raw.quats, raw.log_scales, raw.logit_opacities, raw.sh0, raw.shN)):
            setattr(self, name, nn.Parameter(value.detach().to(device, torch.float32).clone()))  # never alias the source
        if hasattr(self, "background_color"):
            self.background_color = self.background_color.to(device)

    def set_background(self, rgb: Tensor | list[float] | None) -> None:
        """Render on this constant RGB colour from now on (None: leave it to the renderer); saved with the state."""
        value = torch.full((3,), float("nan")) if rgb is None else torch.as_tensor(rgb, dtype=torch.float32).reshape(-1)
        if value.shape != (3,):
            raise InputError(f"3dgs background must be 3 values (RGB), got {value.numel()}")
        self.background_color = value.to(self.background_color.device)

    def raw(self) -> SplatPly:
        """The raw parameters, detached, on the CPU (what the PLY writer stores)."""
        return SplatPly(
            means=self.means.detach().cpu(),
            quats=self.quats.detach().cpu(),
            log_scales=self.scales.detach().cpu(),
            logit_opacities=self.opacities.detach().cpu(),
            sh0=self.sh0.detach().cpu(),
            shN=self.shN.detach().cpu(),
        )

    @classmethod
    def from_raw(cls, raw: SplatPly, device: torch.device | str = "cpu", config: GaussianSplatConfig | None = None) -> "GaussianSplat":
        """A ``3dgs`` representation holding ``raw`` (its SH degree comes from ``raw.shN``)."""
        cfg = config or GaussianSplatConfig(sh_degree=raw.sh_degree)
        rep = cls(GaussianSplatConfig(**{**cfg.__dict__, "sh_degree": raw.sh_degree}))
        rep.set_raw(raw, device)
        return rep

    @classmethod
    def from_gaussians(cls, g: Gaussians3D, sh_degree: int | None = None, config: GaussianSplatConfig | None = None) -> "GaussianSplat":
        """A ``3dgs`` representation from activated Gaussians (e.g. a feed-forward network's output).

        Scales become log-scales, opacities logits (clamped to [1e-6, 1 - 1e-6]), colours SH DC.
        ``sh_degree`` (default: the stored degree of ``g``, 0 for colours) pads missing bands with 0.
        """
        n = len(g)
        sh = g.sh if g.sh is not None else rgb_to_sh(g.colors)[:, None, :]
        degree = g.max_sh_degree if sh_degree is None else sh_degree
        k = num_sh_bases(degree)
        if sh.shape[1] < k:
            sh = torch.cat([sh, sh.new_zeros(n, k - sh.shape[1], 3)], dim=1)
        raw = SplatPly(
            means=g.means,
            quats=g.quats,
            log_scales=torch.log(g.scales.clamp_min(1e-12)),
            logit_opacities=_logit(g.opacities),
            sh0=sh[:, :1],
            shN=sh[:, 1:k],
        )
        return cls.from_raw(raw, device=g.means.device, config=config)

    @classmethod
    def from_ply(cls, path: str | Path, device: torch.device | str = "cpu") -> "GaussianSplat":
        """Load a 3DGS PLY (INRIA layout, any SH degree up to 3)."""
        raw = read_splat_ply(path)
        if raw.sh_degree > 3:
            raise InputError(f"PLY has SH degree {raw.sh_degree}; the 3dgs representation stores at most 3", path)
        return cls.from_raw(raw, device)

    def build(self, data: Scene | Video, *, encoder: Encoder | None = None, device: torch.device) -> None:
        """Initialise from the scene (see ``init``); scales from the 3-nearest-neighbour distance."""
        cfg = self.config
        if cfg.init == "ply":
            if not cfg.ply_path:
                raise InputError("3dgs.init=ply needs 3dgs.ply_path")
            raw = read_splat_ply(cfg.ply_path)
            if raw.sh_degree > 3:
                raise InputError(f"PLY has SH degree {raw.sh_degree}; the 3dgs representation stores at most 3", cfg.ply_path)
            k = num_sh_bases(cfg.sh_degree) - 1
            shN = raw.shN[:, :k]
            if shN.shape[1] < k:
                shN = torch.cat([shN, shN.new_zeros(len(raw), k - shN.shape[1], 3)], dim=1)
            self.set_raw(SplatPly(raw.means, raw.quats, raw.log_scales, raw.logit_opacities, raw.sh0, shN), device)
            return
        if not isinstance(data, Scene):
            raise InputError("the 3dgs representation needs posed views (a Scene), not a video")
        generator = torch.Generator().manual_seed(int(cfg.seed))
        pc, _ = initial_points(data, cfg.init, int(cfg.num_points), generator)
        n = len(pc)
        dist = knn_scales(pc.points, k=3) * float(cfg.init_scale)
        quats = F.normalize(torch.rand(n, 4, generator=generator), dim=-1)  # gsplat's habit
        raw = SplatPly(
            means=pc.points,
            quats=quats,
            log_scales=torch.log(dist)[:, None].repeat(1, 3),
            logit_opacities=torch.full((n,), math.log(cfg.init_opacity / (1 - cfg.init_opacity))),
            sh0=rgb_to_sh(pc.colors)[:, None, :],
            shN=torch.zeros(n, num_sh_bases(cfg.sh_degree) - 1, 3),
        )
        self.set_raw(raw, device)
        self.active_sh_degree = int(cfg.sh_degree)

    # ------------------------------------------------------------------------------- queries

    @property
    def max_sh_degree(self) -> int:
        return math.isqrt(self.shN.shape[1] + 1) - 1

    def __len__(self) -> int:
        return self.means.shape[0]

    def gaussians(self, time: float | None = None) -> Gaussians3D:
        """Activated Gaussians (differentiable w.r.t. the parameters); ``time`` is ignored (static).

        When ``background_color`` is set, ``background`` is a callable giving that colour as an
        image [N_cams, H, W, 3], so every renderer composites the same colour behind them.
        """
        color = self.background_color
        background = _ConstantBackground(color) if bool(torch.isfinite(color).all()) else None
        return Gaussians3D(
            means=self.means,
            quats=self.quats,
            scales=torch.exp(self.scales),
            opacities=torch.sigmoid(self.opacities),
            sh=torch.cat([self.sh0, self.shN], dim=1),
            sh_degree=max(0, min(int(self.active_sh_degree), self.max_sh_degree)),
            background=background,
        )

    def export(self, out_dir: Path, fmt: str) -> list[Path]:
        """``ply``: ``out_dir/point_cloud.ply`` in the INRIA layout, written atomically."""
        if fmt != "ply":
            raise InputError(f"3dgs cannot export '{fmt}'; formats: {', '.join(self.export_formats)}")
        return [write_splat_ply(Path(out_dir) / "point_cloud.ply", self.raw())]

    def load_state_dict_resizing(self, state: Any) -> None:
        super().load_state_dict_resizing(state)
        self.active_sh_degree = self.max_sh_degree
