"""recon-ply-splats: a Gaussian representation read from any 3DGS PLY file (INRIA layout).

The whole plugin is the class below and one hook. Because ``PlySplats`` implements recon's
Gaussian scene protocol (:class:`recon_core.GaussianRepresentation`: raw parameters in
``self.splats`` under gsplat's names, filled with ``set_splats``), every refiner written against
that protocol trains it unmodified — ``3dgs-train``, ``ttr``, ``confidence``, ``difix3d+`` — and
it renders with ``torch-3dgs``/``gsplat`` and exports ``point_cloud.ply``, all inherited.

It imports nothing but recon_core's public API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from recon_core import GaussianRepresentation, InputError, Representation, RunContext, Scene, Video, hookimpl, option
from recon_core.gaussians import num_sh_bases
from recon_core.ply import check_splats, read_splat_ply

__all__ = ["PlySplats", "PlySplatsConfig", "register_representations"]
__version__ = "0.1.0"


@dataclass
class PlySplatsConfig:
    path: str | None = option(None, "the 3DGS PLY to load (INRIA layout: x y z f_dc_* f_rest_* opacity scale_* rot_*)")
    sh_degree: int | None = option(None, "SH degree to keep, 0-3: higher bands are dropped, missing ones start at 0 "
                                         "(default: the file's, at most 3)")


class PlySplats(GaussianRepresentation):
    """The Gaussians of a PLY file, as they are; refiners then improve them against the data."""

    name = "ply-splats"  # --repr ply-splats
    description = "3D Gaussians read from a 3DGS PLY file (INRIA layout; example third-party plugin)"
    Config = PlySplatsConfig
    # Inherited from GaussianRepresentation: provides {"gaussians-3d"}, the torch-3dgs/gsplat
    # renderers, export_formats ("ply", "splat", "ply_compressed"). native_refiner stays None: with no --refiner, a run
    # renders and evaluates the file as it is.

    def __init__(self, config: PlySplatsConfig | None = None) -> None:
        config = config if config is not None else PlySplatsConfig()
        degree = 3 if config.sh_degree is None else int(config.sh_degree)
        super().__init__(config, sh_degree=degree)  # checks 0 <= degree <= 3

    def build(self, data: Scene | Video, ctx: RunContext) -> None:
        """Read the PLY onto ``ctx.device``. The data is not needed: the file is the scene."""
        if not self.config.path:
            raise InputError("ply-splats needs a PLY file: --set ply-splats.path=FILE.ply")
        path = Path(self.config.path).expanduser()
        splats = read_splat_ply(path)  # raw values, gsplat names; InputError naming the file when unreadable
        if len(splats["means"]) == 0:
            raise InputError("the PLY holds no Gaussians (or none with finite values)", path)
        stored = check_splats(splats)
        degree = min(stored, 3) if self.config.sh_degree is None else int(self.config.sh_degree)
        k = num_sh_bases(degree) - 1  # cut or zero-pad the higher SH bands to the chosen degree
        shN = splats["shN"][:, :k]
        splats["shN"] = torch.cat([shN, shN.new_zeros(len(shN), k - shN.shape[1], 3)], dim=1)
        self.set_splats(splats, ctx.device)
        self.active_sh_degree = degree  # a finished scene: render every band from the start
        ctx.log(f"ply-splats: {len(self)} Gaussians of SH degree {degree} from {path}")


@hookimpl
def register_representations() -> list[type[Representation]]:
    return [PlySplats]
