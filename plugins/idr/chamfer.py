"""Chamfer distance between a reconstructed surface and a ground-truth mesh (DTU-style).

Both surfaces are sampled uniformly by area at ``density`` points per unit area (capped by
``max_points``); accuracy is the mean distance from reconstruction samples to the GT samples,
completeness the mean distance from GT samples to the reconstruction samples, each ignoring
distances above ``max_dist`` (DTU's outlier cut-off); the Chamfer distance is their mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: at registry load trimesh and scipy add ~60 MB to every run's memory
    import trimesh

from recon_core import EvaluationInput, GeometryEvaluator, InputError, Scene, option

__all__ = ["ChamferResult", "sample_surface", "chamfer", "predicted_mesh", "ChamferEvaluator"]


@dataclass(frozen=True)
class ChamferResult:
    accuracy: float
    completeness: float

    @property
    def chamfer(self) -> float:
        return 0.5 * (self.accuracy + self.completeness)


def sample_surface(mesh: trimesh.Trimesh, density: float, max_points: int, seed: int = 0) -> np.ndarray:
    """[P, 3] points uniform by area, P = clip(area · density, 1000, max_points), plus the vertices when fewer."""
    import trimesh

    n = int(np.clip(mesh.area * density, 1000, max_points))
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, dtype=np.float64)


def _mean_below(d: np.ndarray, max_dist: float | None) -> float:
    if max_dist is not None:
        d = d[d < max_dist]
    return float(d.mean()) if len(d) else float("inf")


def chamfer(pred: trimesh.Trimesh | np.ndarray, gt: trimesh.Trimesh | np.ndarray, *, density: float = 20000.0,
            max_points: int = 200000, max_dist: float | None = None, seed: int = 0) -> ChamferResult:
    """Accuracy/completeness between two meshes (or [P, 3] point sets)."""
    from scipy.spatial import cKDTree

    p = pred if isinstance(pred, np.ndarray) else sample_surface(pred, density, max_points, seed)
    g = gt if isinstance(gt, np.ndarray) else sample_surface(gt, density, max_points, seed + 1)
    acc = cKDTree(g).query(p, workers=1)[0]
    comp = cKDTree(p).query(g, workers=1)[0]
    return ChamferResult(_mean_below(acc, max_dist), _mean_below(comp, max_dist))


def predicted_mesh(inputs: EvaluationInput, resolution: int, evaluator: str) -> trimesh.Trimesh:
    """The run's exported mesh.ply, else the representation's mesh at ``resolution`` (scene frame)."""
    import trimesh

    if inputs.run_dir is not None and (Path(inputs.run_dir) / "mesh.ply").exists():
        return trimesh.load(Path(inputs.run_dir) / "mesh.ply", force="mesh", process=False)
    extract = getattr(inputs.rep, "extract_mesh", None)
    if extract is None:
        raise InputError(f"{evaluator} needs a surface: representation '{inputs.rep.name}' has no mesh and the run has no mesh.ply")
    return extract(resolution)


class ChamferEvaluator(GeometryEvaluator):
    """Mean of accuracy and completeness against ``Scene.gt_mesh_path`` (lower is better, scene units)."""

    name = "chamfer"
    description = "Chamfer distance (mean of DTU accuracy and completeness) to the scene's ground-truth mesh"
    higher_is_better = False

    @dataclass
    class Config:
        density: float = option(20000.0, "surface samples per unit area (both meshes)", min=1e-12)
        max_points: int = option(200000, "cap on samples per mesh", min=1)
        max_dist: float | None = option(None, "ignore distances above this (DTU's outlier cut-off); none: keep all", min=0)
        resolution: int = option(256, "marching-cubes resolution when the representation must be meshed", min=2)
        seed: int = option(0, "sampling seed")

    def unavailable_reason(self, data: Scene | Any = None) -> str | None:
        """Why the metric cannot run; with ``data``, also checks that it has a ground-truth mesh."""
        if data is not None and getattr(data, "gt_mesh_path", None) is None:
            return "the data has no ground-truth mesh (Scene.gt_mesh_path)"
        if data is not None and not Path(data.gt_mesh_path).exists():
            return f"ground-truth mesh {data.gt_mesh_path} does not exist"
        return None

    def _prediction(self, inputs: EvaluationInput) -> trimesh.Trimesh:
        return predicted_mesh(inputs, self.config.resolution, self.name)

    def evaluate(self, inputs: EvaluationInput) -> dict[str, float]:
        """``{"chamfer": mean, "accuracy": …, "completeness": …}`` (metrics.json: ``chamfer``,
        ``chamfer.accuracy``, ``chamfer.completeness``), as benchmarks/idr_bench.py reports them."""
        reason = self.unavailable_reason(inputs.data)
        if reason:
            raise InputError(f"chamfer is unavailable: {reason}")
        import trimesh

        gt = trimesh.load(inputs.data.gt_mesh_path, force="mesh", process=False)
        if len(gt.faces) == 0:  # e.g. DTU's stl*_total.ply: a point cloud in world millimetres
            raise InputError("the ground truth is a point cloud, not a mesh (a DTU scan's STL points: use "
                             "--eval dtu-chamfer, which applies DTU's frame, observation mask and plane)", inputs.data.gt_mesh_path)
        pred = self._prediction(inputs)
        c = self.config
        res = chamfer(pred, gt, density=c.density, max_points=c.max_points, max_dist=c.max_dist, seed=c.seed)
        return {self.name: res.chamfer, "accuracy": res.accuracy, "completeness": res.completeness}
