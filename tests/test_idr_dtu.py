"""The DTU evaluation protocol (recon_plugins.idr.dtu) on a mini-DTU built here: known answers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import trimesh
from scipy.io import savemat
from scipy.spatial import cKDTree

from recon_core import InputError
from recon_core import EvaluationInput
from recon_plugins.idr.dtu import (DTUChamferEvaluator, evaluate_mesh, find_dtu_files,
                                   radius_downsample, read_scale_mat, sample_mesh_dtu)

SCALE = 10.0  # mm per normalised unit
CENTRE = np.array([100.0, -50.0, 600.0])  # mm


def fibonacci_sphere(n: int, radius: float) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return radius * np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], -1)


def mini_dtu(root: Path, scan: int = 7, plane_sign: float = 1.0) -> Path:
    """scan folder: cameras.npz (scale_mat_0: normalised → mm), stl<scan>_total.ply (GT sphere of radius
    1 normalised = 10 mm, 0.1 mm spacing), ObsMask (observed: the upper half, z ≥ centre) and Plane
    (z = centre; GT below is left out of completeness)."""
    d = root / f"scan{scan}"
    d.mkdir(parents=True)
    S = np.diag([SCALE, SCALE, SCALE, 1.0])
    S[:3, 3] = CENTRE
    np.savez(d / "cameras.npz", scale_mat_0=S, world_mat_0=np.eye(4))
    trimesh.PointCloud(fibonacci_sphere(126000, SCALE) + CENTRE).export(d / f"stl{scan:03d}_total.ply")
    res = 1.0
    bb = np.stack([CENTRE - 40, CENTRE + 40])
    n = int(80 / res) + 1
    obs = np.zeros((n, n, n), dtype=np.uint8)
    obs[:, :, n // 2:] = 1
    savemat(d / f"ObsMask{scan}_10.mat", {"ObsMask": obs, "BB": bb, "Res": np.array([[res]])})
    savemat(d / f"Plane{scan}.mat", {"P": plane_sign * np.array([[0.0], [0.0], [1.0], [-CENTRE[2]]])})
    return d


def evaluate(scan_dir: Path, mesh: trimesh.Trimesh, run_dir: Path, **options: float) -> dict[str, float]:
    run_dir.mkdir(exist_ok=True)
    mesh.export(run_dir / "mesh.ply")
    ev = DTUChamferEvaluator(DTUChamferEvaluator.Config(**options))
    assert ev.unavailable_reason(SimpleNamespace(source=scan_dir)) is None
    return ev.evaluate(EvaluationInput(SimpleNamespace(name="x"), SimpleNamespace(source=scan_dir), run_dir))


def sphere(radius: float, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    m.apply_translation(centre)
    return m


def test_known_offset_in_millimetres(tmp_path: Path) -> None:
    """A reconstruction 0.5 mm outside the GT sphere: accuracy = completeness = 0.5 mm."""
    scan = mini_dtu(tmp_path)
    out = evaluate(scan, sphere(1.05), tmp_path / "run")
    assert out["accuracy"] == pytest.approx(0.5, abs=0.03)
    assert out["completeness"] == pytest.approx(0.5, abs=0.03)
    assert out["dtu-chamfer"] == pytest.approx(0.5 * (out["accuracy"] + out["completeness"]))
    assert (tmp_path / "run" / "dtu_eval.json").is_file()


def test_obs_mask_outlier_cut_and_plane(tmp_path: Path) -> None:
    """Unobserved geometry does not count in accuracy; observed geometry > 20 mm away is cut (counted with a
    larger cut); GT below the table plane does not count in completeness."""
    scan = mini_dtu(tmp_path)
    base = evaluate(scan, sphere(1.05), tmp_path / "a")
    # a blob in the unobserved lower half, 15 mm below the centre (5 mm from the GT): ignored by accuracy
    hidden = trimesh.util.concatenate([sphere(1.05), sphere(0.2, (0.0, 0.0, -1.5))])
    out = evaluate(scan, hidden, tmp_path / "b")
    assert out["accuracy"] == pytest.approx(base["accuracy"], abs=0.01)
    # a blob in the observed upper half 25 mm above the GT top: cut at 20 mm, counted with a 100 mm cut
    far = trimesh.util.concatenate([sphere(1.05), sphere(0.1, (0.0, 0.0, 3.5))])
    assert evaluate(scan, far, tmp_path / "c")["accuracy"] == pytest.approx(base["accuracy"], abs=0.01)
    assert evaluate(scan, far, tmp_path / "d", max_dist=100.0)["accuracy"] > base["accuracy"] + 0.5
    # only the upper hemisphere reconstructed: completeness over the GT above the plane is still 0.5 mm
    full = sphere(1.05)
    upper = full.submesh([full.triangles_center[:, 2] > 0.02], append=True)
    assert evaluate(scan, upper, tmp_path / "e")["completeness"] == pytest.approx(0.5, abs=0.05)
    flipped = mini_dtu(tmp_path / "flip", plane_sign=-1.0)  # now the missing lower half counts
    assert evaluate(flipped, upper, tmp_path / "f")["completeness"] > 2.0


def test_mesh_must_be_brought_into_the_mm_frame(tmp_path: Path) -> None:
    scan = mini_dtu(tmp_path)
    S = read_scale_mat(scan / "cameras.npz")
    files = find_dtu_files(scan)
    res = evaluate_mesh(sphere(1.05), files, S)
    assert res.accuracy == pytest.approx(0.5, abs=0.03)
    wrong = evaluate_mesh(sphere(1.05), files, np.eye(4))  # left in the normalised frame: nothing observed
    assert wrong.n_observed == 0 and wrong.accuracy == float("inf")


def test_sampling_and_thinning_known_counts() -> None:
    # right triangle with unit legs at 0.1: n1 = n2 = 10, cells with i + j <= 8 (45) + 3 vertices
    v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    pts = sample_mesh_dtu(v, np.array([[0, 1, 2]]), 0.1)
    assert len(pts) == 48 and np.all(pts[3:, :2] > 0) and np.all(pts[3:, :2].sum(-1) < 1)
    rng = np.random.default_rng(0)
    cloud = rng.uniform(0, 1, (4000, 3))
    kept = radius_downsample(cloud, 0.05, seed=3)
    # kept points are >= r apart, and every dropped point is within r of a kept one
    assert cKDTree(kept).query(kept, k=2)[0][:, 1].min() >= 0.05
    assert cKDTree(kept).query(cloud)[0].max() <= 0.05


def test_missing_or_bad_ground_truth_is_an_input_error(tmp_path: Path) -> None:
    scan = mini_dtu(tmp_path)
    (scan / "Plane7.mat").unlink()
    reason = find_dtu_files(scan)
    assert isinstance(reason, str) and "Plane7.mat" in reason
    ev = DTUChamferEvaluator()
    with pytest.raises(InputError, match="Plane7.mat"):
        ev.evaluate(EvaluationInput(SimpleNamespace(name="x"), SimpleNamespace(source=scan), None))
    savemat(scan / "Plane7.mat", {"Q": np.zeros(4)})
    with pytest.raises(InputError, match="has no P"):
        evaluate_mesh(sphere(1.05), find_dtu_files(scan), np.eye(4))
