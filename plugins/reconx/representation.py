"""The ``reconx`` representation: a ``3dgs`` whose ``build`` makes a global point cloud from a
sparse set of views (ReconX stage 1) and whose native refiner is ``confidence`` (generation +
confidence-aware fitting, stages 2-3), so ``recon run --repr reconx`` runs the whole method.

Sparse selection: ``views`` names a split file (``{"train": ["images/0000.png", ...], "test": [...]}``,
the format of ``split_sparse3.json``; a relative path is looked up next to the data) or is a comma
list of view names; the chosen views are stored in ``input_views`` and used by ``build`` and by the
``confidence`` refiner. Evaluation uses the loader's test split; a split file's ``test`` list that
disagrees with it is reported in the log. Without ``views``, the scene's training views are the inputs.

Unseen surfaces: ReconX gets them from its video diffusion model (the generated frames' point
cloud initialises the Gaussians). Without such a model, ``complete=carve`` (default) adds one
Gaussian per voxel on the boundary of the volume that the inputs' silhouettes and depth maps leave
unknown (:mod:`.carving`, :func:`.pointcloud.complete_points`): the largest surface consistent with
the inputs, coloured like the nearest observed points, one voxel in size.

It implements recon's Gaussian scene protocol (:class:`recon_core.GaussianRepresentation`), so it
has the 3dgs parameters, renderers, PLY export and checkpoints; only the initialisation differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recon_core import GaussianRepresentation, InputError, PointCloud, RunContext, Scene, Video, View, option
from recon_core.geometry import knn_distances
from recon_core.points import splats_from_points

from .carving import carve, view_mask
from .pointcloud import POINT_CLOUD_SOURCES, PointCloudSettings, complete_points, global_point_cloud

__all__ = ["ReconXSplat", "ReconXConfig", "select_views"]


@dataclass
class ReconXConfig:
    views: str | None = option(None, "sparse input views: a split file (JSON with a 'train' list, relative to the data "
                                     "folder or absolute) or comma-separated view names (default: the training views)")
    pointcloud: str = option("auto", "global point cloud: auto (depth if every view has it, else triangulate), depth, "
                                     "triangulate (pycolmap, known poses), dggt (network depth + pose heads)",
                             choices=tuple(POINT_CLOUD_SOURCES))
    num_points: int = option(30_000, "at most this many Gaussians from the global point cloud", min=1)
    complete: str = option("carve", "points for surfaces no input sees: carve (the boundary of the volume that the "
                                    "inputs' silhouettes and depth leave unknown, see carving.py; needs an object "
                                    "mask or alpha on every input, else nothing is added), none",
                           choices=("carve", "none"))
    carve_resolution: int = option(128, "complete=carve: voxels along the longest side of the point cloud's box", min=2)
    carve_tolerance: float = option(0.02, "complete=carve: relative depth difference counted as the observed surface", min=0)
    sh_degree: int = option(0, "highest spherical-harmonics degree stored (0-3; 0: view-independent colour, "
                               "safer with few views)", min=0, max=3)
    init_opacity: float = option(0.5, "initial opacity of every Gaussian (the cloud is already on the surface)", min=0, max=1)
    init_scale: float = option(1.0, "initial scale = this x mean distance to the 3 nearest neighbours", min=1e-12)
    seed: int = option(0, "seed of the initialisation's random choices (subsampling, rotations)")


def select_views(scene: Scene, spec: str | None) -> list[View]:
    """The sparse inputs named by ``spec`` (see the module docstring), in the order given."""
    train = scene.train_views or list(scene.views)
    if not spec:
        return train
    root = scene.source if scene.source is None or scene.source.is_dir() else scene.source.parent
    path = Path(spec).expanduser()
    if not path.is_absolute() and root is not None:
        path = root / path
    if spec.endswith(".json"):
        if not path.is_file():
            raise InputError("reconx.views: split file not found", path)
        try:
            doc = json.loads(path.read_text())
            names = [Path(n).stem for n in doc["train"]]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"reconx.views: expected a JSON object with a 'train' list of file names ({e})", path) from None
        test = [Path(n).stem for n in doc.get("test", [])]
        if test and sorted(test) != sorted(v.name for v in scene.eval_views):
            raise InputError(f"reconx.views: the split file's test list ({len(test)} views) differs from the scene's "
                             f"evaluated views ({len(scene.eval_views)}); evaluation uses the loader's test split", path)
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    by_name = {v.name: v for v in scene.views}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"reconx.views names views the scene lacks: {', '.join(missing)}", scene.source)
    if not names:
        raise InputError("reconx.views selects no view", scene.source)
    return [by_name[n] for n in names]


class ReconXSplat(GaussianRepresentation):
    """ReconX (Liu et al. 2024) on 3D Gaussians: global point cloud of sparse views → 3dgs."""

    name = "reconx"
    description = "ReconX sparse-view 3DGS: global point cloud init (depth/pycolmap/dggt) + confidence refiner"
    Config = ReconXConfig
    native_refiner = "confidence"

    @classmethod
    def uses(cls, config: Any) -> list[tuple[str, str]]:
        """pointcloud=dggt builds the run's ``dggt`` representation (``--set dggt.checkpoint=...``)."""
        return super().uses(config) + ([("representation", "dggt")] if config.pointcloud == "dggt" else [])

    def __init__(self, config: ReconXConfig | None = None) -> None:
        config = config if config is not None else ReconXConfig()
        super().__init__(config, sh_degree=int(config.sh_degree))
        self.input_views: list[str] = []
        """Names of the sparse input views (set by ``build``; read by the ``confidence`` refiner)."""
        self.completed_points = 0
        """How many Gaussians ``build`` added for unseen surfaces (``complete``)."""

    def build(self, data: Scene | Video, ctx: RunContext) -> None:
        """Select the sparse views, build their global point cloud (+ the carved completion) and start
        one Gaussian per point (colour from the point, scale from its 3 nearest observed neighbours or
        one voxel for completion points, random rotation)."""
        cfg = self.config
        if not isinstance(data, Scene):
            raise InputError("the reconx representation needs posed views (a Scene), not a video")
        views = select_views(data, cfg.views)
        self.input_views = [v.name for v in views]
        generator = torch.Generator().manual_seed(int(cfg.seed))
        settings = PointCloudSettings(ctx)
        pc = global_point_cloud(views, cfg.pointcloud, int(cfg.num_points), generator, settings)
        dist = knn_distances(pc.points, 3).clamp_min(1e-7)
        if cfg.complete == "carve" and len(pc) and all(view_mask(v) is not None for v in views):  # silhouettes needed
            low, high = pc.points.min(0).values, pc.points.max(0).values
            pad = 0.05 * float((high - low).norm())  # the unseen surface may reach a little beyond the seen one
            volume = carve(views, low - pad, high + pad, int(cfg.carve_resolution), float(cfg.carve_tolerance))
            extra = complete_points(pc, volume, generator)
            self.completed_points = len(extra)
            pc = PointCloud(torch.cat([pc.points, extra.points]), torch.cat([pc.colors, extra.colors]))
            dist = torch.cat([dist, torch.full((len(extra),), volume.voxel)])  # one voxel: the shell is one voxel thick
        splats = splats_from_points(pc, float(cfg.init_opacity), int(cfg.sh_degree), generator, dist, float(cfg.init_scale))
        self.set_splats(splats, ctx.device)
        self.active_sh_degree = int(cfg.sh_degree)
