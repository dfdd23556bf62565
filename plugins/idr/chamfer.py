"""Chamfer distance between a reconstructed surface and a ground-truth mesh (DTU-style).

Both surfaces are sampled uniformly by area at ``density`` points per unit area (capped by
``max_points``); accuracy is the mean distance from reconstruction samples to the GT samples,
completeness the mean distance from GT samples to the reconstruction samples, each ignoring
distances above ``max_dist`` (DTU's outlier cut-off); the Chamfer distance is their mean.

The evaluator also reports the same measures on the **observed surface** (``chamfer.observed``): the
part of the GT surface that some training view sees (in its frustum, facing it, not occluded: a depth
test against a z-buffer of the GT mesh), the role DTU's observation masks play for real scans.
Completeness counts the observed GT samples; accuracy the reconstruction samples whose nearest GT
sample is observed. A surface no view sees (e.g. an object's underside under cameras that all look
down on it) is left to each method's extrapolation; the full metric scores that too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: at registry load trimesh and scipy add ~60 MB to every run's memory
    import trimesh

from recon_core import Cameras, EvaluationInput, GeometryEvaluator, InputError, Scene, option
from recon_core.geometry import project_points

__all__ = ["ChamferResult", "sample_surface", "chamfer", "observed_by", "predicted_mesh", "ChamferEvaluator"]


@dataclass(frozen=True)
class ChamferResult:
    accuracy: float
    completeness: float

    @property
    def chamfer(self) -> float:
        return 0.5 * (self.accuracy + self.completeness)


def sample_surface(mesh: trimesh.Trimesh, density: float, max_points: int, seed: int = 0) -> np.ndarray:
    """[P, 3] points uniform by area, P = clip(area · density, 1000, max_points)."""
    return _sample(mesh, density, max_points, seed)[0]


def _sample(mesh: trimesh.Trimesh, density: float, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(points [P, 3], their faces' unit normals [P, 3]), as :func:`sample_surface`."""
    import trimesh

    n = int(np.clip(mesh.area * density, 1000, max_points))
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, dtype=np.float64), np.asarray(mesh.face_normals[face], dtype=np.float64)


def _mean_below(d: np.ndarray, max_dist: float | None) -> float:
    if max_dist is not None:
        d = d[d < max_dist]
    return float(d.mean()) if len(d) else float("inf")


def chamfer(pred: trimesh.Trimesh | np.ndarray, gt: trimesh.Trimesh | np.ndarray, *, density: float = 20000.0,
            max_points: int = 200000, max_dist: float | None = None, seed: int = 0) -> ChamferResult:
    """Accuracy/completeness between two meshes (or [P, 3] point sets)."""
    p = pred if isinstance(pred, np.ndarray) else sample_surface(pred, density, max_points, seed)
    g = gt if isinstance(gt, np.ndarray) else sample_surface(gt, density, max_points, seed + 1)
    acc, _, comp = _distances(p, g)
    return ChamferResult(_mean_below(acc, max_dist), _mean_below(comp, max_dist))


def _distances(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance from each p to the nearest g, that g's index, distance from each g to the nearest p)."""
    from scipy.spatial import cKDTree

    acc, nearest = cKDTree(g).query(p, workers=1)
    comp = cKDTree(p).query(g, workers=1)[0]
    return acc, nearest, comp


ZBUFFER_SAMPLES_PER_PIXEL = 8.0
"""GT samples per pixel footprint (at the nearest possible depth) in the z-buffer: no pixel of a visible
surface is left without a sample (a hole would let the surface behind it pass the depth test)."""
ZBUFFER_MAX_SAMPLES = 3_000_000
MAX_OBLIQUITY = 30.0
"""Largest tan(angle between normal and view ray) the depth tolerance allows for (≈ 88°)."""


def observed_by(cameras: Cameras, mesh: trimesh.Trimesh, points: np.ndarray, normals: np.ndarray,
                seed: int = 0) -> np.ndarray:
    """[P] bool: which surface ``points`` of ``mesh`` (with their outward ``normals``) some camera sees.

    A point is seen by a pinhole camera (distortion ignored) when it projects inside the image in
    front of the camera, its normal faces the camera, and it is not behind the mesh: its depth is
    within (2 + tan θ) pixel footprints (θ: between normal and view ray) of the pixel's z-buffer, the
    nearest depth of a dense sampling of ``mesh`` projected into that pixel
    (:data:`ZBUFFER_SAMPLES_PER_PIXEL`).
    """
    import torch

    K = cameras.K.detach().double().cpu()
    w2c = cameras.viewmats.detach().double().cpu()
    centres = cameras.centers.detach().double().cpu()
    lo, hi = torch.tensor(np.asarray(mesh.bounds, dtype=np.float64))
    radius = 0.5 * float((hi - lo).norm())
    nearest = max(float((centres - 0.5 * (lo + hi)).norm(dim=1).min()) - radius, 1e-3 * radius)
    footprint = nearest / float(K[:, 0, 0].max())
    dense = torch.from_numpy(_sample(mesh, ZBUFFER_SAMPLES_PER_PIXEL / footprint**2, ZBUFFER_MAX_SAMPLES, seed)[0])
    pts, nrm = torch.from_numpy(points), torch.from_numpy(normals)
    seen = torch.zeros(len(pts), dtype=torch.bool)
    for k in range(len(K)):
        height, width = cameras.size(k)

        def project(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """(depth, pixel index, inside the image in front of the camera) of points x."""
            uv, z = project_points(x, K[k], w2c[k])
            inside = (z > 0) & (uv >= 0).all(1) & (uv[:, 0] < width) & (uv[:, 1] < height)
            ij = uv.floor().nan_to_num(0).long()
            pix = ij[:, 1].clamp(0, height - 1) * width + ij[:, 0].clamp(0, width - 1)
            return z, pix, inside

        z_dense, pix_dense, in_dense = project(dense)
        zbuf = torch.full((width * height,), float("inf"), dtype=torch.float64)
        zbuf.scatter_reduce_(0, pix_dense[in_dense], z_dense[in_dense], "amin")
        z, pix, inside = project(pts)
        to_cam = centres[k] - pts
        cos = (to_cam * nrm).sum(1) / to_cam.norm(dim=1)
        # the pixel's nearest sample may lie tan(θ) footprints nearer on an oblique surface
        tan = ((1 - cos.square()).clamp_min(0).sqrt() / cos.clamp_min(1e-6)).clamp_max(MAX_OBLIQUITY)
        seen |= inside & (cos > 0) & (z <= zbuf[pix] + (2.0 + tan) * z / K[k, 0, 0])
    return seen.numpy()


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
    part_regions = {"chamfer": "whole surface", "accuracy": "whole surface", "completeness": "whole surface",
                    "observed": "observed surface", "observed_accuracy": "observed surface",
                    "observed_completeness": "observed surface"}

    @dataclass
    class Config:
        density: float = option(20000.0, "surface samples per unit area (both meshes)", min=1e-12)
        max_points: int = option(200000, "cap on samples per mesh", min=1)
        max_dist: float | None = option(None, "ignore distances above this (DTU's outlier cut-off); none: keep all", min=0)
        resolution: int = option(256, "marching-cubes resolution when the representation must be meshed", min=2)
        seed: int = option(0, "sampling seed")
        observed: bool = option(True, "also report chamfer.observed (+ .observed_accuracy, .observed_completeness): the "
                                      "measures on the part of the GT surface a training view sees, as DTU's observation masks")

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
        ``chamfer.accuracy``, ``chamfer.completeness``), as benchmarks/idr_bench.py reports them; with
        ``observed``, also ``observed``, ``observed_accuracy``, ``observed_completeness`` (none when no
        training view sees the GT surface)."""
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
        p = sample_surface(pred, c.density, c.max_points, c.seed)
        g, normals = _sample(gt, c.density, c.max_points, c.seed + 1)  # the GT samples chamfer() draws
        acc, nearest, comp = _distances(p, g)
        res = ChamferResult(_mean_below(acc, c.max_dist), _mean_below(comp, c.max_dist))
        out = {self.name: res.chamfer, "accuracy": res.accuracy, "completeness": res.completeness}
        train = inputs.data.train_views if isinstance(inputs.data, Scene) else []
        if c.observed and train:
            seen = observed_by(inputs.data.cameras(train), gt, g, normals, seed=c.seed + 2)
            if seen.any():
                obs = ChamferResult(_mean_below(acc[seen[nearest]], c.max_dist), _mean_below(comp[seen], c.max_dist))
                out.update(observed=obs.chamfer, observed_accuracy=obs.accuracy, observed_completeness=obs.completeness)
        return out
