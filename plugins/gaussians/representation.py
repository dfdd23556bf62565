"""The ``3dgs`` representation: a set of 3D Gaussians with spherical-harmonic colour.

It is the plain implementation of recon's Gaussian scene protocol
(:class:`recon_core.GaussianRepresentation`: raw parameters in ``splats`` with gsplat's names);
this class adds only where the Gaussians start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from recon_core import GaussianRepresentation, InputError, RunContext, Scene, Video, option
from recon_core.gaussians import num_sh_bases
from recon_core.ply import check_splats, read_splat_ply
from recon_core.splatfile import read_splat_file
from recon_core.points import initial_points, splats_from_points

__all__ = ["GaussianSplat", "GaussianSplatConfig"]


@dataclass
class GaussianSplatConfig:
    init: str = option("auto", "where Gaussians start: auto (point cloud, else depth, else points triangulated with the "
                       "known poses, else random), points, depth, triangulate, random, ply",
                       choices=("auto", "points", "depth", "triangulate", "random", "ply"))
    ply_path: str | None = option(None, "3DGS PLY (or antimatter15 .splat) to start from (init=ply)")
    num_points: int = option(50_000, "at most this many initial Gaussians (random init: exactly this many)", min=1)
    sh_degree: int = option(3, "highest spherical-harmonics degree stored (0-3)", min=0, max=3)
    init_opacity: float = option(0.1, "initial opacity of every Gaussian", min=0, max=1)
    init_scale: float = option(1.0, "initial scale = this x mean distance to the 3 nearest neighbours", min=1e-12)
    seed: int = option(0, "seed of the initialisation's random choices (subsampling, random points, rotations)")


def read_ply_splats(path: str | Path, sh_degree: int) -> dict[str, torch.Tensor]:
    """A 3DGS PLY's (or an antimatter15 ``.splat`` file's) splats with their SH bands cut or
    zero-padded to ``sh_degree``."""
    splats = read_splat_file(path) if Path(path).suffix.lower() == ".splat" else read_splat_ply(path)
    k = num_sh_bases(sh_degree) - 1
    shN = splats["shN"][:, :k]
    if shN.shape[1] < k:
        shN = torch.cat([shN, shN.new_zeros(shN.shape[0], k - shN.shape[1], 3)], dim=1)
    return {**splats, "shN": shN}


class GaussianSplat(GaussianRepresentation):
    """3D Gaussian Splatting (Kerbl et al. 2023): N anisotropic Gaussians with SH colour."""

    name = "3dgs"
    description = "3D Gaussian Splatting: Gaussians with SH colour, PLY export (INRIA layout)"
    Config = GaussianSplatConfig
    native_refiner = "3dgs-train"

    def __init__(self, config: GaussianSplatConfig | None = None) -> None:
        config = config if config is not None else GaussianSplatConfig()
        super().__init__(config, sh_degree=int(config.sh_degree))

    @classmethod
    def from_ply(cls, path: str | Path, device: torch.device | str = "cpu") -> "GaussianSplat":
        """A ``3dgs`` representation holding a 3DGS PLY (INRIA layout, SH degree up to 3)."""
        splats = read_splat_ply(path)
        degree = check_splats(splats)
        if degree > 3:
            raise InputError(f"PLY has SH degree {degree}; the 3dgs representation stores at most 3", path)
        rep = cls(GaussianSplatConfig(sh_degree=degree))
        rep.set_splats(splats, device)
        return rep

    def build(self, data: Scene | Video, ctx: RunContext) -> None:
        """Initialise from the scene (see ``init``); scales from the 3-nearest-neighbour distance."""
        cfg = self.config
        if cfg.init == "ply":
            if not cfg.ply_path:
                raise InputError("3dgs.init=ply needs 3dgs.ply_path")
            self.set_splats(read_ply_splats(cfg.ply_path, int(cfg.sh_degree)), ctx.device)
            return
        if not isinstance(data, Scene):
            raise InputError("the 3dgs representation needs posed views (a Scene), not a video")
        generator = torch.Generator().manual_seed(int(cfg.seed))
        pc, _ = initial_points(data, cfg.init, int(cfg.num_points), generator, log=ctx.log)
        splats = splats_from_points(pc, float(cfg.init_opacity), int(cfg.sh_degree), generator, scale_factor=float(cfg.init_scale))
        self.set_splats(splats, ctx.device)
        self.active_sh_degree = int(cfg.sh_degree)
