"""The DTU MVS evaluation protocol (``dtu-chamfer``), as the widely used python port DTUeval-python runs it.

Data (the official DTU "Points" and "SampleSet" downloads, for scan N):

* ``stl{N:03d}_total.ply``: the ground-truth structured-light point cloud, world frame, millimetres;
* ``ObsMask{N}_10.mat``: ``ObsMask`` (a boolean volume of the observed region), ``BB`` (2×3, its
  bounding box corners in mm) and ``Res`` (voxel size in mm);
* ``Plane{N}.mat``: ``P`` (4 numbers, the table plane; ground-truth points with ``P·[x, 1] ≤ 0``
  lie below it and are left out of completeness).

They are found in ``dataset_dir`` (DTUeval-python's layout ``Points/stl/`` and ``ObsMask/``) or, when
that option is unset, in the scan folder itself (directly or in those two sub-folders).

Protocol (for a reconstructed mesh in the scene's frame):

1. the mesh is brought into the millimetre world frame with ``scale_mat_0`` of ``cameras.npz``
   (normalised → world: ``x_mm = S[:3, :3] x + S[:3, 3]``, as IDR's own evaluation does);
2. it is sampled as DTUeval-python does: every triangle gets a regular grid of points
   ``v0 + (i + ½)/n1 · e1 + (j + ½)/n2 · e2`` (``n = floor(|e| / (d · sqrt(|e1||e2| / |e1 × e2|)))``,
   d = ``downsample_density`` = 0.2 mm, cells with ``(i + ½)/n1 + (j + ½)/n2 < 1``), plus the vertices;
3. the points are shuffled (seeded here) and thinned: in that order, a point removes every other
   point within d of it (greedy radius filter);
4. points outside ``BB`` grown by ``patch`` (60 mm; ``[BB0 − patch, BB1 + 2·patch)``, as the port) are
   dropped; of the others, those whose voxel ``round((x − BB0) / Res)`` lies in the volume and is set
   in ``ObsMask`` are the *observed* points;
5. accuracy: mean distance from the observed points to the nearest ground-truth point, over distances
   below ``max_dist`` (20 mm); completeness: mean distance from the ground-truth points above the
   plane to the nearest kept point of step 4 (observed or not), below ``max_dist``; the overall
   score is their mean. All in mm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: at registry load trimesh and scipy add ~60 MB to every run's memory
    import trimesh

from recon_core import EvaluationInput, GeometryEvaluator, InputError, Scene, option
from recon_core.io import write_json

from .chamfer import predicted_mesh

__all__ = ["DTUFiles", "DTUResult", "find_dtu_files", "sample_mesh_dtu", "radius_downsample", "dtu_evaluate",
           "read_scale_mat", "DTUChamferEvaluator"]


@dataclass(frozen=True)
class DTUFiles:
    """The ground-truth files of one DTU scan."""

    scan: int
    stl: Path
    obs_mask: Path
    plane: Path


@dataclass(frozen=True)
class DTUResult:
    """Accuracy and completeness in mm, and how many points each was computed from."""

    accuracy: float
    completeness: float
    n_observed: int
    n_gt_above_plane: int

    @property
    def overall(self) -> float:
        return 0.5 * (self.accuracy + self.completeness)


def _scan_number(*names: str) -> int | None:
    for name in names:
        m = re.search(r"stl(\d+)_total", name) or re.search(r"scan(\d+)", name)
        if m:
            return int(m.group(1))
    return None


def find_dtu_files(scan_dir: Path, dataset_dir: Path | None = None, scan: int | None = None) -> DTUFiles | str:
    """The scan's DTU files, or a sentence saying which is missing (the scan number comes from ``scan``,
    else from an ``stl*_total.ply`` in ``scan_dir``, else from the folder name ``scan<N>``)."""
    scan_dir = Path(scan_dir)
    roots = [Path(dataset_dir)] if dataset_dir is not None else [scan_dir]
    if scan is None:
        stls = sorted(p.name for r in roots for p in [*r.glob("stl*_total.ply"), *r.glob("Points/stl/stl*_total.ply")])
        scan = _scan_number(*stls, scan_dir.resolve().name)
    if scan is None:
        return f"no DTU scan number: {scan_dir} has no stl<N>_total.ply and is not named scan<N> (set dtu-chamfer.scan)"
    want = {"stl": (f"stl{scan:03d}_total.ply", "Points/stl"), "obs_mask": (f"ObsMask{scan}_10.mat", "ObsMask"),
            "plane": (f"Plane{scan}.mat", "ObsMask")}
    found: dict[str, Path] = {}
    for key, (name, sub) in want.items():
        hit = next((r / d / name for r in roots for d in (".", sub) if (r / d / name).is_file()), None)
        if hit is None:
            where = " or ".join(str(r / sub / name) for r in roots)
            return f"DTU ground truth of scan {scan} is incomplete: {name} not found ({where})"
        found[key] = hit
    return DTUFiles(scan, found["stl"], found["obs_mask"], found["plane"])


def read_scale_mat(cameras_npz: Path) -> np.ndarray:
    """``scale_mat_0`` (4×4, normalised → world) of an IDR cameras.npz; identity when absent."""
    try:
        with np.load(cameras_npz, allow_pickle=False) as z:
            s = np.asarray(z["scale_mat_0"], dtype=np.float64) if "scale_mat_0" in z.files else np.eye(4)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"not a readable .npz file ({type(e).__name__}: {e})", cameras_npz) from None
    if s.shape != (4, 4) or not np.isfinite(s).all():
        raise InputError("scale_mat_0 must be a finite 4x4 matrix", cameras_npz)
    return s


def sample_mesh_dtu(vertices: np.ndarray, faces: np.ndarray, density: float) -> np.ndarray:
    """DTUeval-python's mesh sampling (step 2 of the module docstring): [P, 3] points, vertices first."""
    tri = vertices[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    l1, l2 = np.linalg.norm(e1, axis=-1), np.linalg.norm(e2, axis=-1)
    area2 = np.linalg.norm(np.cross(e1, e2), axis=-1)
    ok = area2 > 0
    tri, e1, e2, l1, l2, area2 = tri[ok], e1[ok], e2[ok], l1[ok], l2[ok], area2[ok]
    thr = density * np.sqrt(l1 * l2 / area2)
    n1, n2 = np.floor(l1 / thr).astype(np.int64), np.floor(l2 / thr).astype(np.int64)
    out = [np.asarray(vertices, dtype=np.float64)]
    # triangles with the same (n1, n2) share one grid of barycentric cells: sample them together
    pairs = np.stack([n1, n2], axis=1)
    keys, inverse = np.unique(pairs, axis=0, return_inverse=True)
    for k, (a, b) in enumerate(keys):
        if a == 0 or b == 0:
            continue  # DTUeval divides by max(n, 1e-7): no cell lands inside such a triangle
        ii, jj = np.meshgrid((np.arange(a + 1) + 0.5) / a, (np.arange(b + 1) + 0.5) / b, indexing="ij")
        inside = ii + jj < 1
        c1, c2 = ii[inside], jj[inside]  # [C]
        sel = np.nonzero(inverse.reshape(-1) == k)[0]
        pts = (tri[sel, None, 0] + c1[None, :, None] * e1[sel, None] + c2[None, :, None] * e2[sel, None])
        out.append(pts.reshape(-1, 3))
    return np.concatenate(out, axis=0)


def radius_downsample(points: np.ndarray, radius: float, seed: int = 0) -> np.ndarray:
    """Shuffle (seeded), then keep a point and drop every later-visited point within ``radius`` of it."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64).copy()
    np.random.default_rng(seed).shuffle(pts, axis=0)
    neighbours = cKDTree(pts).query_ball_point(pts, r=radius, workers=1)
    keep = np.ones(len(pts), dtype=bool)
    for i, idx in enumerate(neighbours):
        if keep[i]:
            keep[idx] = False
            keep[i] = True
    return pts[keep]


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"not a readable MATLAB .mat file ({type(e).__name__}: {e})", path) from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise InputError(f"has no {', '.join(missing)} (a DTU {'ObsMask' if 'ObsMask' in keys else 'Plane'} file needs {', '.join(keys)})", path)
    return {k: np.asarray(mat[k]) for k in keys}


def read_points(path: Path) -> np.ndarray:
    """[P, 3] vertices of a PLY point cloud (or mesh)."""
    import trimesh

    try:
        geom = trimesh.load(path, process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types on malformed files
        raise InputError(f"not a readable point cloud ({type(e).__name__}: {e})", path) from None
    pts = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.isfinite(pts).all():
        raise InputError("has no finite 3-D points", path)
    return pts


def dtu_evaluate(points_mm: np.ndarray, files: DTUFiles, *, downsample_density: float = 0.2, patch: float = 60.0,
                 max_dist: float = 20.0, seed: int = 0) -> DTUResult:
    """Steps 3–5 of the protocol on sampled reconstruction points (mm, world frame)."""
    from scipy.spatial import cKDTree

    data_down = radius_downsample(points_mm, downsample_density, seed)
    m = _loadmat(files.obs_mask, ("ObsMask", "BB", "Res"))
    obs, bb, res = m["ObsMask"].astype(bool), m["BB"].astype(np.float32).reshape(2, 3), float(np.asarray(m["Res"]).reshape(-1)[0])
    if obs.ndim != 3 or res <= 0:
        raise InputError(f"ObsMask must be a 3-D volume and Res positive (got shape {obs.shape}, Res {res})", files.obs_mask)
    inbound = np.all((data_down >= bb[:1] - patch) & (data_down < bb[1:] + patch * 2), axis=-1)
    data_in = data_down[inbound]
    grid = np.around((data_in - bb[:1]) / res).astype(np.int64)
    grid_in = np.all((grid >= 0) & (grid < np.array(obs.shape)[None]), axis=-1)
    g = grid[grid_in]
    in_obs = obs[g[:, 0], g[:, 1], g[:, 2]]
    data_obs = data_in[grid_in][in_obs]

    stl = read_points(files.stl)
    plane = _loadmat(files.plane, ("P",))["P"].astype(np.float64).reshape(-1)
    if plane.size != 4:
        raise InputError(f"P must hold 4 numbers (a plane), got {plane.size}", files.plane)
    stl_above = stl[np.concatenate([stl, np.ones_like(stl[:, :1])], -1) @ plane > 0]
    if len(data_obs) == 0 or len(data_in) == 0:
        return DTUResult(float("inf"), float("inf"), len(data_obs), len(stl_above))
    d2s = cKDTree(stl).query(data_obs, workers=1)[0]
    s2d = cKDTree(data_in).query(stl_above, workers=1)[0]

    def mean_below(d: np.ndarray) -> float:
        d = d[d < max_dist]
        return float(d.mean()) if len(d) else float("inf")

    return DTUResult(mean_below(d2s), mean_below(s2d), len(data_obs), len(stl_above))


class DTUChamferEvaluator(GeometryEvaluator):
    """DTU's accuracy/completeness protocol in mm (see module docstring); the value is their mean."""

    name = "dtu-chamfer"
    description = "DTU MVS evaluation (DTUeval-python): STL points, ObsMask, table plane, 0.2 mm thinning, 20 mm cut; mm"
    higher_is_better = False
    unit = "mm"
    # accuracy inside DTU's observation mask, completeness over the scanned STL points above the table
    part_regions = {"dtu-chamfer": "DTU observation mask", "accuracy": "DTU observation mask", "completeness": "DTU observation mask"}

    @dataclass
    class Config:
        dataset_dir: str | None = option(None, "folder with DTU's Points/stl/ and ObsMask/ (none: the scan folder itself)")
        scan: int | None = option(None, "DTU scan number (none: from stl<N>_total.ply or the folder name scan<N>)", min=0)
        downsample_density: float = option(0.2, "sampling step and thinning radius of the reconstruction (mm)", min=1e-6)
        patch: float = option(60.0, "margin around the ObsMask bounding box (mm)", min=0)
        max_dist: float = option(20.0, "distances above this are outliers, left out of both means (mm)", min=0)
        resolution: int = option(512, "marching-cubes resolution when the representation must be meshed", min=2)
        seed: int = option(0, "seed of the shuffle before thinning (DTUeval-python's is unseeded)")

    def unavailable_reason(self, data: Scene | Any = None) -> str | None:
        if data is None:
            return None
        src = getattr(data, "source", None)
        if src is None:
            return "the data has no source folder to find DTU's ground truth in"
        found = find_dtu_files(Path(src), None if self.config.dataset_dir is None else Path(self.config.dataset_dir), self.config.scan)
        if isinstance(found, str):
            return found
        if not (Path(src) / "cameras.npz").is_file():
            return f"{Path(src) / 'cameras.npz'} is missing (its scale_mat_0 maps the mesh to millimetres)"
        return None

    def evaluate(self, inputs: EvaluationInput) -> dict[str, float]:
        """``{"dtu-chamfer": overall, "accuracy": …, "completeness": …}`` in mm; also written to
        ``dtu_eval.json`` in the run folder."""
        reason = self.unavailable_reason(inputs.data)
        if reason:
            raise InputError(f"dtu-chamfer is unavailable: {reason}")
        c = self.config
        src = Path(inputs.data.source)
        files = find_dtu_files(src, None if c.dataset_dir is None else Path(c.dataset_dir), c.scan)
        assert isinstance(files, DTUFiles)
        res = evaluate_mesh(predicted_mesh(inputs, c.resolution, self.name), files, read_scale_mat(src / "cameras.npz"), c)
        out = {self.name: res.overall, "accuracy": res.accuracy, "completeness": res.completeness}
        if inputs.run_dir is not None:
            write_json(Path(inputs.run_dir) / "dtu_eval.json", {"scan": files.scan, **out, "observed_points": res.n_observed,
                                                                 "gt_points_above_plane": res.n_gt_above_plane, "unit": "mm"})
        return out


def evaluate_mesh(mesh: trimesh.Trimesh, files: DTUFiles, scale_mat: np.ndarray, config: Any = None) -> DTUResult:
    """The whole protocol for a mesh in the scene's (normalised) frame."""
    c = config or DTUChamferEvaluator.Config()
    v = np.asarray(mesh.vertices, dtype=np.float64) @ scale_mat[:3, :3].T + scale_mat[:3, 3]
    pts = sample_mesh_dtu(v, np.asarray(mesh.faces), c.downsample_density)
    return dtu_evaluate(pts, files, downsample_density=c.downsample_density, patch=c.patch, max_dist=c.max_dist, seed=c.seed)
